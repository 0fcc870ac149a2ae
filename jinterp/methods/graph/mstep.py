"""The M-step (``updateModel`` in ``learn_explanatoryGraph.m``, spec §A5).

* centers: ``μ̄ += η · ΣGr / max(ΣA, 1e-8) · (min s / t^{1/4})²`` (min over all nodes of the prior std s);
* scales: ``σ = clip(√(ΣQ / ΣT) · Δ, σ_min, σ_max)`` with Δ the candidate spacing. The released code uses the
  spacing of the *initial* σ for the whole layer (``faithful=True``); the fixed mode uses each node's spacing of
  this iteration. A node with ΣT = 0 gets σ_min in the faithful mode (MATLAB ``max`` skips the NaN) and keeps its
  σ in the fixed mode;
* records: ``prob_record = T / mean(T)`` over all (node, image).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jinterp.methods.graph.estep import EStats
from jinterp.methods.graph.geometry import LayerGeom, half_range


@functools.partial(jax.jit, static_argnames=("geom", "eta"))
def mstep(coord, sigma, stats: EStats, s_prior, t, *, geom: LayerGeom, eta: float = 1.0):
    """Returns ``(coord, sigma, prob_record)``; ``t`` is the 1-based iteration index."""
    min_delta = jnp.min(s_prior) / jnp.asarray(t, jnp.float32) ** 0.25
    coord = coord + stats.Gr / jnp.maximum(stats.A, 1e-8)[..., None] * (eta * min_delta ** 2)
    ratio = stats.Q / stats.T_sum
    if geom.faithful:
        unit0 = 2.0 * half_range(geom, jnp.float32(geom.init_sigma)).astype(jnp.float32) / geom.s
        new = jnp.sqrt(ratio) * unit0
        new = jnp.where(jnp.isnan(new), geom.sigma_min, new)
    else:
        new = jnp.where(stats.T_sum > 0, jnp.sqrt(jnp.where(stats.T_sum > 0, ratio, 0.0)) * stats.spacing, sigma)
    sigma = jnp.clip(new, geom.sigma_min, geom.sigma_max)
    prob_record = stats.T / jnp.mean(stats.T)
    return coord, sigma, prob_record
