"""Top-down learning of the explanatory graph (``learn_explanatoryGraph.m``, spec §A5.1).

    for L in top ... bottom:
        init nodes of L
        for t in 1..iterations:
            prior = none (δ = 0, s = 0.15·H, λ = 1)   if L is the top layer or t == 1
                    parents(upper final records, L's records of t − 1) otherwise
            stats = E-step(maps_L, μ̄, σ, prior)
            μ̄, σ, prob_record = M-step(stats, min s, t)
        keep L's records of the last iteration (positions, scores, σ) as the next layer's parents

Each layer's maps are only needed while that layer is learned, so callers may pass a callable that produces them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.methods.graph.config import GraphConfig
from jinterp.methods.graph.estep import chunk_size, estep, top_prior
from jinterp.methods.graph.geometry import LayerGeom, to_pixels
from jinterp.methods.graph.init import init_nodes
from jinterp.methods.graph.mstep import mstep
from jinterp.methods.graph.parents import build_prior


@dataclasses.dataclass
class GraphLayer:
    """One learned graph layer (host arrays; node V = (filter c, node k) has flat index ``c·K + k``).

    Attributes:
      name, geom: layer name and geometry.
      coord: (C, K, 2) node centers μ̄ (0-based (h, w) cells); sigma: (C, K) node scales.
      parents: (C, K, M) flat indices of each node's parents in the layer above (None for the top layer).
      prob_record: (N, C, K) normalized scores T / mean(T); pos_record: (N, C, K, 2) inferred positions (cells);
      phi: (N, C, K) inferred (MAP) scores.
      history: per iteration {"iter", "mean_shift", "mean_sigma", "seconds"}.
    """

    name: str
    geom: LayerGeom
    coord: np.ndarray
    sigma: np.ndarray
    parents: np.ndarray | None
    prob_record: np.ndarray
    pos_record: np.ndarray
    phi: np.ndarray
    history: list

    def positions_px(self) -> np.ndarray:
        """(N, C·K, 2) inferred node positions in image pixels as (x, y) (jinterp's continuous pixel frame)."""
        px = np.asarray(to_pixels(self.pos_record, self.geom))
        n = px.shape[0]
        return px.reshape(n, -1, 2)[..., ::-1]

    def scores(self) -> np.ndarray:
        """(N, C·K) node scores (prob_record)."""
        return self.prob_record.reshape(self.prob_record.shape[0], -1)

    def edges(self) -> np.ndarray:
        """(E, 2) (child flat index, parent flat index in the layer above); empty for the top layer."""
        if self.parents is None:
            return np.zeros((0, 2), np.int64)
        child = np.repeat(np.arange(self.geom.num_nodes), self.parents.shape[-1])
        return np.stack([child, self.parents.reshape(-1)], -1)


def learn_layer(maps, geom: LayerGeom, cfg: GraphConfig, key: jax.Array, *, upper: GraphLayer | None = None,
                top_n: int = 15, top_m: int = 600, name: str = "", progress: Callable[[str], None] | None = None,
                ) -> GraphLayer:
    """EM for one layer (``upper`` = the already learned layer above, None at the top)."""
    maps = jnp.asarray(maps, jnp.float32)
    n = maps.shape[0]
    if maps.shape[1:] != (geom.h, geom.w, geom.c):
        raise ValueError(f"maps {maps.shape} do not match the layer geometry {(geom.h, geom.w, geom.c)}")
    coord, sigma = init_nodes(key, geom)
    chunk = chunk_size(geom, n, cfg.memory_mb)
    pos = phi = None
    parents = None
    prob_record = None
    history = []
    for t in range(1, cfg.iterations + 1):
        t0 = time.perf_counter()
        if upper is None or t == 1:
            prior = top_prior(geom, n)
        else:
            up_pos = upper.pos_record.reshape(n, -1, 2)
            up_prob = upper.prob_record.reshape(n, -1)
            parents, prior = build_prior(up_pos, up_prob, upper.sigma.reshape(-1), pos, phi, child=geom,
                                         upper=upper.geom, top_n=top_n, top_m=top_m, min_var_rate=cfg.min_var_rate,
                                         edge_cut_rate=cfg.edge_cut_rate, memory_mb=cfg.memory_mb)
        stats = estep(maps, coord, sigma, prior, geom=geom, chunk=chunk)
        new_coord, sigma, prob_record = mstep(coord, sigma, stats, prior.s, t, geom=geom, eta=cfg.eta)
        shift = float(jnp.mean(jnp.linalg.norm(new_coord - coord, axis=-1)))
        coord, pos, phi = new_coord, stats.pos, stats.phi
        history.append({"iter": t, "mean_shift": shift, "mean_sigma": float(jnp.mean(sigma)),
                        "seconds": time.perf_counter() - t0})
        if progress is not None:
            progress(f"{name} iter {t}/{cfg.iterations}: mean |Δμ| {shift:.4f}, mean σ {history[-1]['mean_sigma']:.3f}")
    return GraphLayer(name=name, geom=geom, coord=np.asarray(coord), sigma=np.asarray(sigma),
                      parents=None if parents is None else np.asarray(parents), prob_record=np.asarray(prob_record),
                      pos_record=np.asarray(pos), phi=np.asarray(phi), history=history)


def learn_graph(layer_maps: Sequence, geoms: Sequence[LayerGeom], cfg: GraphConfig, *,
                progress: Callable[[str], None] | None = None) -> list[GraphLayer]:
    """Learn every layer top-down. ``layer_maps[i]`` (bottom = 0) is an (N, H, W, C) normalized map array or a
    zero-argument callable returning it. Returns the layers bottom to top."""
    key = jax.random.PRNGKey(cfg.seed)
    out: list[GraphLayer | None] = [None] * len(geoms)
    upper = None
    for i in reversed(range(len(geoms))):
        maps = layer_maps[i]() if callable(layer_maps[i]) else layer_maps[i]
        layer = learn_layer(maps, geoms[i], cfg, jax.random.fold_in(key, i), upper=upper, top_n=cfg.top_n[i],
                            top_m=cfg.top_m[i], name=cfg.layers[i] if i < len(cfg.layers) else str(i),
                            progress=progress)
        out[i] = upper = layer
    return out  # type: ignore[return-value]
