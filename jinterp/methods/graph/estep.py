"""The E-step of the explanatory graph (spec §A4): one jitted function over images × filters × nodes.

For every image I and node V = (filter c, node k) of a layer, with ``r = max(x, 0)`` the normalized map of c:

1. window half-size ``R_V = round(min(0.3·H/2, 3σ_V))`` and S×S candidate offsets ``o`` (bin centers of
   ``[−R_V, R_V]``); expected center ``m = μ̄_V + δ_{V,I}``;
2. prior ``g(o) = λ_{V,I} N(o_h; 0, s) N(o_w; 0, s)`` (computed in log space, shifted by one global constant so
   that the largest λ maps to 1; every use of g is invariant to a global scale except the 1e-7 floor below,
   which is shifted with it);
3. evidence ``e(o) = Σ_q κ(q − c − o) r(q)`` over the window ``q ∈ c + [−R, R]²`` around ``c = round(m)``, with
   ``κ(d) = exp(−‖d‖²/2σ_m²)/(√(2π)σ_m)`` inside ``3σ_m`` and the constant ``exp(−4.5)/(√(2π)σ_m)`` beyond;
   the fixed mode evaluates the kernel at the true candidate point ``m + o`` (``frac = m − c`` added), the
   faithful mode at ``c + o`` while reporting ``m + o`` (released-code rounding quirk);
4. competition among the nodes of one filter: ``Z(P) = Σ_{V'} g_{V'}(nearest candidate of V' to P)`` (0 outside
   V''s candidate box), background ``τ_I = tau · mean over all nodes of Σ_o g``, ``ρ = g / max(Z + τ, 1e-7)``;
5. statistics ``A = Σ ρe``, ``Gr = Σ ρe·o/s²``, ``T = Σ ge``, ``Q = Σ ge·((i−ī)² + (j−j̄)²)`` (candidate indices),
   the MAP candidate ``o* = argmax ge`` → position ``m + o*`` and score ``φ = g(o*)e(o*)``.

``faithful=True`` also reproduces the MEX indexing bug: the window half-size and the prior std are read with the
within-filter node index, so filter c's node k uses filter 0's node k ``R`` (window) and ``s`` (prior and Gr), with
its own candidate offsets. Images are processed in chunks (``lax.scan``) so memory is bounded by the chunk.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jinterp.core.xla_options import jit_reductions_outside_ynn
from jinterp.methods.graph.geometry import LayerGeom, candidate_offsets, half_range, mround

SQRT2PI = math.sqrt(2 * math.pi)
RHO_FLOOR = 1e-7


class Prior(NamedTuple):
    """Parent-conditioned prior of one layer (δ = 0, s = init σ, λ = 1 at the top layer / first iteration).

    Attributes:
      delta: (N, C, K, 2) shift of the expected center (cells, (h, w)).
      s: (C, K) prior std (cells).
      log_lam: (N, C, K) log λ.
    """

    delta: jax.Array
    s: jax.Array
    log_lam: jax.Array


class EStats(NamedTuple):
    """E-step output: sums over images (for the M-step) and per-image records.

    Attributes:
      A, T_sum, Q: (C, K) Σ_I A, Σ_I T, Σ_I Q; Gr: (C, K, 2) Σ_I Gr.
      T: (N, C, K) unnormalized score per image; pos: (N, C, K, 2) inferred position (cells, 0-based (h, w));
      phi: (N, C, K) inferred score g(o*)e(o*).
      spacing: (C, K) candidate spacing 2R/S used this iteration.
      log_scale: g was computed divided by ``exp(log_scale)`` (= max log λ); T, T_sum, Q and phi carry that
        factor (it cancels in every use: T / mean T, ΣQ/ΣT, parent ranking); multiply to get absolute values.
    """

    A: jax.Array
    Gr: jax.Array
    T_sum: jax.Array
    Q: jax.Array
    T: jax.Array
    pos: jax.Array
    phi: jax.Array
    spacing: jax.Array
    log_scale: jax.Array


def top_prior(geom: LayerGeom, n: int) -> Prior:
    """δ = 0, s = init_delta·H, λ = 1."""
    return Prior(delta=jnp.zeros((n, geom.c, geom.k, 2), jnp.float32),
                 s=jnp.full((geom.c, geom.k), geom.init_sigma, jnp.float32),
                 log_lam=jnp.zeros((n, geom.c, geom.k), jnp.float32))


def _log_normal(o, s):
    return -(o * o) / (2 * s * s) - jnp.log(SQRT2PI * s)


def _image(r_chw, coord, delta, log_lam, *, geom: LayerGeom, r_win, offs, s_eff, shift):
    """One image: r_chw (C, H, W) relu'd map; coord (C, K, 2); delta (C, K, 2); log_lam (C, K)."""
    c_n, k_n, s_n, rm = geom.c, geom.k, geom.s, geom.r_max
    m = coord + delta  # expected center, 0-based cells
    cen = mround(m)
    cen_i = cen.astype(jnp.int32)
    q = jnp.arange(-rm, rm + 1, dtype=jnp.int32)

    # window gather (C, K, Wn_h, Wn_w), zero outside the map and outside |q| <= R_win
    hq = cen_i[..., 0, None] + q
    wq = cen_i[..., 1, None] + q
    ok_h = (hq >= 0) & (hq < geom.h) & (jnp.abs(q) <= r_win[..., None])
    ok_w = (wq >= 0) & (wq < geom.w) & (jnp.abs(q) <= r_win[..., None])
    ch = jnp.arange(c_n)[:, None, None, None]
    win = r_chw[ch, jnp.clip(hq, 0, geom.h - 1)[..., :, None], jnp.clip(wq, 0, geom.w - 1)[..., None, :]]
    win = jnp.where(ok_h[..., :, None] & ok_w[..., None, :], win, 0.0)

    # evidence e[c, k, iw, ih]
    frac = jnp.zeros_like(m) if geom.faithful else m - cen
    ph = offs + frac[..., 0, None]  # (C, K, S) candidate h relative to the window center
    pw = offs + frac[..., 1, None]
    qf = q.astype(jnp.float32)
    sm = geom.map_sigma
    # κ(d) = G(d) for ‖d‖ < 3σ_m, else the constant G(3σ_m) = exp(−4.5)/(√(2π)σ_m); G decreases with ‖d‖, so this
    # is max(G, floor) with a separable G: only (S × Wn) exps per axis, and the contraction is a fused
    # multiply-reduce (no kernel tensor is materialized).
    gh = jnp.exp(-((ph[..., :, None] - qf) ** 2) / (2 * sm * sm))  # (C, K, S_h, Wn_h)
    gw = jnp.exp(-((pw[..., :, None] - qf) ** 2) / (2 * sm * sm))  # (C, K, S_w, Wn_w)
    kern = jnp.maximum(gw[:, :, :, None, None, :] * gh[:, :, None, :, :, None], math.exp(-4.5))
    e = jnp.sum(kern * win[:, :, None, None], axis=(-2, -1)) / (SQRT2PI * sm)  # (C, K, S_w, S_h)

    # prior g[c, k, iw, ih] (own offsets, std s_eff)
    lg = (log_lam - shift)[..., None, None] + _log_normal(offs, s_eff[..., None])[..., :, None] \
        + _log_normal(offs, s_eff[..., None])[..., None, :]
    g = jnp.exp(lg)

    # competition: candidate points P of every node vs the candidate boxes of the filter's nodes
    p_h = m[..., 0, None] + offs  # (C, K, S_h)
    p_w = m[..., 1, None] + offs  # (C, K, S_w)
    first_h = m[..., 0] + offs[..., 0]  # (C, K')
    first_w = m[..., 1] + offs[..., 0]
    last_h = m[..., 0] + offs[..., -1]
    last_w = m[..., 1] + offs[..., -1]
    spacing = (offs[..., 1] - offs[..., 0]) if s_n > 1 else jnp.zeros(offs.shape[:2], offs.dtype)

    def axis(p, first, last):
        # p (C, K, S) vs node p' (C, K'): (C, K, S, K') nearest index on p''s grid (ties -> lower) and inside box
        u = p[..., None] - first[:, None, None, :]
        sp = spacing[:, None, None, :]
        idx = jnp.where(sp > 0, jnp.ceil(u / jnp.where(sp > 0, sp, 1.0) - 0.5), 0.0)
        idx = jnp.clip(idx, 0, s_n - 1).astype(jnp.int32)
        inside = (p[..., None] >= first[:, None, None, :]) & (p[..., None] <= last[:, None, None, :])
        return idx, inside

    ih, in_h = axis(p_h, first_h, last_h)  # (C, K, S_h, K')
    iw, in_w = axis(p_w, first_w, last_w)  # (C, K, S_w, K')
    kp = jnp.arange(k_n)
    flat = kp * (s_n * s_n) + iw[:, :, :, None, :] * s_n + ih[:, :, None, :, :]  # (C, K, S_w, S_h, K')
    gz = jnp.take_along_axis(g.reshape(c_n, k_n * s_n * s_n), flat.reshape(c_n, -1), axis=1).reshape(flat.shape)
    z = jnp.sum(jnp.where(in_w[:, :, :, None, :] & in_h[:, :, None, :, :], gz, 0.0), axis=-1)  # (C, K, S_w, S_h)
    tau = geom.tau * jnp.mean(jnp.sum(g, axis=(-2, -1)))
    den = jnp.maximum(z + tau, RHO_FLOOR * jnp.exp(-shift))
    rho = jnp.where(den > 0, g / jnp.where(den > 0, den, 1.0), 0.0)

    # statistics
    a = rho * e
    ge = g * e
    o_w = offs[..., :, None]
    o_h = offs[..., None, :]
    inv_s2 = 1.0 / (s_eff * s_eff)
    big_a = a.sum((-2, -1))
    gr = jnp.stack([(a * o_h).sum((-2, -1)), (a * o_w).sum((-2, -1))], -1) * inv_s2[..., None]
    t = ge.sum((-2, -1))
    ii = (jnp.arange(s_n, dtype=jnp.float32) - (s_n - 1) / 2.0) ** 2
    qv = (ge * (ii[:, None] + ii[None, :])).sum((-2, -1))
    best = jnp.argmax(ge.reshape(c_n, k_n, -1), axis=-1)  # flat index iw*S + ih, first max
    bw, bh = best // s_n, best % s_n
    o_best = jnp.stack([jnp.take_along_axis(offs, bh[..., None], -1)[..., 0],
                        jnp.take_along_axis(offs, bw[..., None], -1)[..., 0]], -1)
    phi = jnp.take_along_axis(ge.reshape(c_n, k_n, -1), best[..., None], -1)[..., 0]
    return big_a, gr, t, qv, m + o_best, phi


def layer_constants(geom: LayerGeom, sigma, s):
    """Per-node window half-sizes and offsets; the faithful mode's filter-0 indexing of R and s."""
    r_own = half_range(geom, sigma)
    offs = candidate_offsets(geom, r_own)
    if geom.faithful:
        r_win = jnp.broadcast_to(r_own[0:1], r_own.shape)
        s_eff = jnp.broadcast_to(s[0:1], s.shape)
    else:
        r_win, s_eff = r_own, s
    return r_own, r_win, offs, s_eff


def chunk_size(geom: LayerGeom, n: int, memory_mb: int) -> int:
    """Images per chunk so that the largest E-step temporary (kernel × window per node) fits ``memory_mb``."""
    per_image = geom.num_nodes * (geom.s ** 2) * max(geom.window ** 2, geom.k) * 4 * 3
    return int(max(1, min(n, (memory_mb << 20) // max(per_image, 1))))


# Reductions outside YNNPACK: 2.35x faster at VGG-16 conv5_3 (jinterp.core.xla_options).
@jit_reductions_outside_ynn(static_argnames=("geom", "chunk"))
def estep(maps, coord, sigma, prior: Prior, *, geom: LayerGeom, chunk: int) -> EStats:
    """E-step over all images.

    Args:
      maps: (N, H, W, C) normalized maps (only ``max(x, 0)`` is used).
      coord: (C, K, 2) node centers μ̄ (0-based cells, (h, w)); sigma: (C, K) node scales σ.
      prior: :class:`Prior` (δ, s, log λ).
      geom: the layer's :class:`LayerGeom` (static); chunk: images per chunk (static).
    """
    n = maps.shape[0]
    r_own, r_win, offs, s_eff = layer_constants(geom, sigma, prior.s)
    shift = jax.lax.stop_gradient(jnp.max(prior.log_lam))
    nchunks = -(-n // chunk)
    pad = nchunks * chunk - n
    r = jnp.maximum(jnp.transpose(maps, (0, 3, 1, 2)), 0.0).astype(jnp.float32)  # (N, C, H, W)

    def padded(x):
        return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(nchunks, chunk, *x.shape[1:])

    one = functools.partial(_image, geom=geom, r_win=r_win, offs=offs, s_eff=s_eff, shift=shift)
    batched = jax.vmap(one, in_axes=(0, None, 0, 0))

    def body(carry, xs):
        rc, dc, lc = xs
        big_a, gr, t, qv, pos, phi = batched(rc, coord, dc, lc)
        carry = (carry[0] + big_a.sum(0), carry[1] + gr.sum(0), carry[2] + t.sum(0), carry[3] + qv.sum(0))
        return carry, (t, pos, phi)

    zeros = jnp.zeros((geom.c, geom.k), jnp.float32)
    init = (zeros, jnp.zeros((geom.c, geom.k, 2), jnp.float32), zeros, zeros)
    (sa, sgr, st, sq), (t, pos, phi) = jax.lax.scan(
        body, init, (padded(r), padded(prior.delta.astype(jnp.float32)), padded(prior.log_lam.astype(jnp.float32))))
    flat = lambda x: x.reshape(nchunks * chunk, *x.shape[2:])[:n]  # noqa: E731
    spacing = 2.0 * r_own.astype(jnp.float32) / geom.s
    return EStats(A=sa, Gr=sgr, T_sum=st, Q=sq, T=flat(t), pos=flat(pos), phi=flat(phi), spacing=spacing,
                  log_scale=shift)
