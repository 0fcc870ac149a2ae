"""Node initialization (``initializeModel.m``): K distinct random cells per filter, σ = init_delta·H."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jinterp.methods.graph.geometry import LayerGeom


def init_nodes(key: jax.Array, geom: LayerGeom) -> tuple[jax.Array, jax.Array]:
    """(coord (C, K, 2) 0-based (h, w) cells, sigma (C, K)): per filter the first K cells of a random permutation of
    the H·W cells (column-major index, as MATLAB's ``randperm`` + ``mod``/``ceil``), one key per filter."""
    keys = jax.random.split(key, geom.c)
    perm = jax.vmap(lambda k: jax.random.permutation(k, geom.h * geom.w)[:geom.k])(keys)
    coord = jnp.stack([perm % geom.h, perm // geom.h], -1).astype(jnp.float32)
    return coord, jnp.full((geom.c, geom.k), geom.init_sigma, jnp.float32)
