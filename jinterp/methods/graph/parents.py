"""Edges: parent selection and the parent-conditioned prior (``getCurDistribution.m``, spec §A6).

Inputs at iteration t ≥ 2 of a layer below the top: the upper layer's final positions ``P_U,I``, scores and
scales σ_U, and this layer's positions ``p̂_V,I`` and inferred scores ``φ_V,I`` of iteration t − 1.

1. Center positions over images: ``d = P − mean_I P`` (both layers).
2. Candidate pool (:func:`parent_pool`, host NumPy — a sort of the upper nodes): by Σ_I prob_record descending,
   minus the ``min_var_rate`` fraction with the smallest positional variance, minus nodes whose mean position lies
   within ``edge_cut_rate·H`` of the border, first ``top_m``.
3. Scores (:func:`select_parents`, jitted, chunked over children): displacements in image pixels, child V vs pool
   member U: ``Σ_I φ_V,I exp(−D²_UV,I / (2 mean_{U,I} D²))``; the top ``top_n`` are V's parents.
4. Prior (:func:`parent_prior`): ``w_U = (1/M)/σ_U²``, ``δ = Σ w_U d_U / Σ w_U``, ``s = √(1/Σ w_U)``,
   ``λ = s · Π_U exp(−‖δ − d_U‖² / (2Mσ_U²)) / σ_U`` (log space).

Quirks (``faithful=True``): the border test uses the **child's** H on parent coordinates; pixel displacements are
computed with ``x2p`` on centered values (``center + (d − 1)·stride``), adding a constant offset between layers of
different strides; ``d_U`` and ``σ_U`` (parent cells) are used as child cells without the stride ratio. The fixed
mode uses the parent's H, ``d·stride`` and rescales ``d_U``, ``σ_U`` by ``stride_U / stride_V``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import DataError
from jinterp.methods.graph.estep import Prior
from jinterp.methods.graph.geometry import LayerGeom


def parent_pool(up_pos: np.ndarray, up_prob: np.ndarray, child: LayerGeom, upper: LayerGeom, *, top_m: int,
                min_var_rate: float, edge_cut_rate: float) -> np.ndarray:
    """Indices (into the upper layer's flat node list) of the candidate parents, in pool order.

    Args:
      up_pos: (N, U, 2) upper positions (0-based cells); up_prob: (N, U) upper prob_record.
    """
    up_pos = np.asarray(up_pos, np.float64)
    n, u, _ = up_pos.shape
    d = up_pos - up_pos.mean(0)
    var = d.var(0, ddof=1).sum(-1) if n > 1 else np.zeros(u)
    low_var = np.argsort(var, kind="stable")[:int(math.ceil(u * min_var_rate))]
    mean1 = up_pos.mean(0) + 1.0  # MATLAB 1-based coordinates
    if child.faithful:
        hb = np.array([child.h, child.h], np.float64)
    else:
        hb = np.array([upper.h, upper.w], np.float64)
    border = np.flatnonzero(np.any(hb / 2 - np.abs(hb / 2 - mean1) < hb * edge_cut_rate, axis=-1))
    order = np.argsort(-np.asarray(up_prob, np.float64).sum(0), kind="stable")
    drop = np.zeros(u, bool)
    drop[low_var] = True
    drop[border] = True
    pool = order[~drop[order]][:top_m]
    if pool.size == 0:
        raise DataError("explanatory graph: the candidate-parent pool is empty (every upper node was dropped as "
                        "low-variance or near the border); use more images or lower min_var_rate/edge_cut_rate")
    return pool


def _pixels(d, geom: LayerGeom):
    if geom.faithful:
        return geom.center + (d - 1.0) * geom.stride
    return d * geom.stride


@functools.partial(jax.jit, static_argnames=("child", "upper", "top_n", "chunk"))
def select_parents(pos, phi, up_pos_pool, *, child: LayerGeom, upper: LayerGeom, top_n: int, chunk: int):
    """Top-``top_n`` pool members per child node: (C·K, top_n) int32 indices into the pool.

    Args:
      pos: (N, C·K, 2) child positions; phi: (N, C·K) child inferred scores; up_pos_pool: (N, P, 2) pool positions.
    """
    hw = _pixels(pos - pos.mean(0), child)  # (N, V, 2)
    hw_up = _pixels(up_pos_pool - up_pos_pool.mean(0), upper)  # (N, P, 2)
    v = pos.shape[1]
    nch = -(-v // chunk)
    pad = nch * chunk - v
    hw_c = jnp.pad(hw, ((0, 0), (0, pad), (0, 0))).transpose(1, 0, 2).reshape(nch, chunk, *hw.shape[::2])
    phi_c = jnp.pad(phi, ((0, 0), (0, pad))).T.reshape(nch, chunk, -1)

    def one(xs):
        h, f = xs  # (chunk, N, 2), (chunk, N)
        d2 = jnp.sum((h[:, None, :, :] - hw_up.transpose(1, 0, 2)[None]) ** 2, -1)  # (chunk, P, N)
        mean = jnp.mean(d2, axis=(1, 2), keepdims=True)
        sc = jnp.sum(jnp.exp(-d2 / (2 * jnp.where(mean > 0, mean, 1.0))) * f[:, None, :], -1)  # (chunk, P)
        return jax.lax.top_k(sc, top_n)[1]

    idx = jax.lax.map(one, (hw_c, phi_c))
    return idx.reshape(nch * chunk, top_n)[:v].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("child", "upper"))
def parent_prior(up_pos, up_sigma, parents, *, child: LayerGeom, upper: LayerGeom) -> Prior:
    """The prior of every child node given its parents' displacements (two passes over the M parent slots, so
    memory stays at (N, C·K, 2) however many parents).

    Args:
      up_pos: (N, U, 2) upper positions (upper cells); up_sigma: (U,) upper σ (upper cells);
      parents: (C·K, M) int indices of each child's parents into the U upper nodes.
    """
    n = up_pos.shape[0]
    v, m = parents.shape
    d_all = up_pos - up_pos.mean(0)
    sig_all = up_sigma
    if not child.faithful:
        ratio = upper.stride / child.stride
        d_all = d_all * ratio
        sig_all = sig_all * ratio
    sig = sig_all[parents]  # (V, M)
    w = (1.0 / m) / sig ** 2
    sw = w.sum(-1)
    slots = (parents.T, w.T, sig.T)  # scan over the M slots

    def acc_delta(num, xs):
        idx, wj, _ = xs
        return num + wj[None, :, None] * d_all[:, idx], None

    num, _ = jax.lax.scan(acc_delta, jnp.zeros((n, v, 2), jnp.float32), slots)
    delta = num / sw[None, :, None]
    s = jnp.sqrt(1.0 / sw)

    def acc_lam(tot, xs):
        idx, _, sj = xs
        sq = jnp.sum((delta - d_all[:, idx]) ** 2, -1)  # (N, V)
        return tot - sq / (2 * m * sj[None] ** 2) - jnp.log(sj)[None], None

    log_lam, _ = jax.lax.scan(acc_lam, jnp.broadcast_to(jnp.log(s)[None], (n, v)).astype(jnp.float32), slots)
    return Prior(delta=delta.reshape(n, child.c, child.k, 2), s=s.reshape(child.c, child.k),
                 log_lam=log_lam.reshape(n, child.c, child.k))


def children_chunk(n: int, pool: int, memory_mb: int) -> int:
    """Children per chunk so that the (chunk, pool, N) distance array fits ``memory_mb``."""
    return int(max(1, (memory_mb << 20) // max(1, 4 * 3 * pool * n)))


def build_prior(up_pos, up_prob, up_sigma, pos, phi, *, child: LayerGeom, upper: LayerGeom, top_n: int, top_m: int,
                min_var_rate: float, edge_cut_rate: float, memory_mb: int = 512):
    """Parents and prior for one iteration: returns ``(parents (C, K, M) upper flat indices, Prior)``.

    Args:
      up_pos: (N, U, 2) upper final positions; up_prob: (N, U) upper prob_record; up_sigma: (U,) upper σ.
      pos: (N, C, K, 2) this layer's positions of the previous iteration; phi: (N, C, K) its inferred scores.
    """
    up_pos = np.asarray(up_pos, np.float32)
    pool = parent_pool(up_pos, up_prob, child, upper, top_m=top_m, min_var_rate=min_var_rate,
                       edge_cut_rate=edge_cut_rate)
    n = pos.shape[0]
    m = min(top_n, pool.size)
    flat_pos = jnp.asarray(pos).reshape(n, child.num_nodes, 2)
    flat_phi = jnp.asarray(phi).reshape(n, child.num_nodes)
    chunk = min(child.num_nodes, children_chunk(n, pool.size, memory_mb))
    sel = select_parents(flat_pos, flat_phi, jnp.asarray(up_pos[:, pool]), child=child, upper=upper, top_n=m,
                         chunk=chunk)
    parents = jnp.asarray(pool)[sel]  # (V, M) global upper indices
    prior = parent_prior(jnp.asarray(up_pos), jnp.asarray(up_sigma, jnp.float32), parents, child=child, upper=upper)
    return np.asarray(parents).reshape(child.c, child.k, m), prior
