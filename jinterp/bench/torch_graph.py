"""The explanatory graph's E-step in PyTorch: the same math as ``jinterp.methods.graph.estep`` (spec §A4), written
the way one would vectorize the released MATLAB/C++ code in PyTorch (all images, filters, nodes and candidates as
tensor dimensions; windows gathered by advanced indexing; nearest competitor candidates by per-axis rounding).

There is no public PyTorch (or any non-MATLAB) implementation of the explanatory graph, so this twin is ours.
Inputs and outputs follow the JAX function: maps (N, H, W, C) float32, node centers (C, K, 2) 0-based (h, w),
σ (C, K), prior δ (N, C, K, 2), s (C, K), log λ (N, C, K).
"""

from __future__ import annotations

import math

import torch

SQRT2PI = math.sqrt(2 * math.pi)


def mround(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def estep(maps, coord, sigma, delta, s, log_lam, *, s_n: int, r_max: int, max_range: float, deform_ratio: float,
          map_sigma: float, tau: float, faithful: bool, chunk: int | None = None):
    """Returns dict A, Gr, T_sum, Q (sums over images), T, pos, phi (per image), log_scale (tensors on the maps'
    device; no host sync inside)."""
    dev = maps.device
    n, h, w, c_n = maps.shape
    k_n = coord.shape[1]
    r_own = mround(torch.clamp(sigma * deform_ratio, max=max_range * h / 2)).to(torch.int64)
    j = torch.arange(s_n, dtype=torch.float32, device=dev)
    rf = r_own.to(torch.float32)[..., None]
    offs = -rf + (2 * j + 1) * rf / s_n  # (C, K, S)
    if faithful:
        r_win = r_own[0:1].expand_as(r_own)
        s_eff = s[0:1].expand_as(s)
    else:
        r_win, s_eff = r_own, s
    shift = log_lam.max()
    r_all = torch.relu(maps.permute(0, 3, 1, 2))  # (N, C, H, W)
    chunk = chunk or n
    out = {k: [] for k in ("A", "Gr", "T", "Q", "pos", "phi")}
    q = torch.arange(-r_max, r_max + 1, device=dev)
    qf = q.to(torch.float32)
    sm = map_sigma
    floor_k = math.exp(-4.5)
    ii = (torch.arange(s_n, dtype=torch.float32, device=dev) - (s_n - 1) / 2.0) ** 2
    qvar = ii[:, None] + ii[None, :]
    kp = torch.arange(k_n, device=dev)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        r = r_all[sl]
        b = r.shape[0]
        m = coord[None] + delta[sl]  # (B, C, K, 2)
        cen = mround(m)
        ci = cen.to(torch.int64)
        hq = ci[..., 0, None] + q  # (B, C, K, Wn)
        wq = ci[..., 1, None] + q
        ok_h = (hq >= 0) & (hq < h) & (q.abs() <= r_win[None, ..., None])
        ok_w = (wq >= 0) & (wq < w) & (q.abs() <= r_win[None, ..., None])
        bi = torch.arange(b, device=dev)[:, None, None, None, None]
        ch = torch.arange(c_n, device=dev)[None, :, None, None, None]
        win = r[bi, ch, hq.clamp(0, h - 1)[..., :, None], wq.clamp(0, w - 1)[..., None, :]]
        win = win * (ok_h[..., :, None] & ok_w[..., None, :])  # (B, C, K, Wn_h, Wn_w)
        frac = torch.zeros_like(m) if faithful else m - cen
        ph = offs[None] + frac[..., 0, None]  # (B, C, K, S)
        pw = offs[None] + frac[..., 1, None]
        dh2 = (ph[..., :, None] - qf) ** 2  # (B, C, K, S_h, Wn_h)
        dw2 = (pw[..., :, None] - qf) ** 2
        d2 = dw2[..., :, None, None, :] + dh2[..., None, :, :, None]  # (B, C, K, S_w, S_h, Wn_h, Wn_w)
        kern = torch.where(d2 < (3 * sm) ** 2, torch.exp(-d2 / (2 * sm * sm)), floor_k) / (SQRT2PI * sm)
        e = torch.einsum("bckxyhw,bckhw->bckxy", kern, win)  # (B, C, K, S_w, S_h)
        ln = -(offs ** 2) / (2 * s_eff[..., None] ** 2) - torch.log(SQRT2PI * s_eff[..., None])  # (C, K, S)
        g = torch.exp((log_lam[sl] - shift)[..., None, None] + ln[None, ..., :, None] + ln[None, ..., None, :])
        # competition
        p_h = m[..., 0, None] + offs[None]  # (B, C, K, S)
        p_w = m[..., 1, None] + offs[None]
        first_h, last_h = m[..., 0] + offs[..., 0], m[..., 0] + offs[..., -1]  # (B, C, K')
        first_w, last_w = m[..., 1] + offs[..., 0], m[..., 1] + offs[..., -1]
        spacing = (offs[..., 1] - offs[..., 0]) if s_n > 1 else torch.zeros(offs.shape[:2], device=dev)

        def axis(p, first, last, spacing=spacing):
            u = p[..., None] - first[:, :, None, None, :]  # (B, C, K, S, K')
            sp = spacing[None, :, None, None, :]
            idx = torch.where(sp > 0, torch.ceil(u / torch.where(sp > 0, sp, torch.ones_like(sp)) - 0.5),
                              torch.zeros_like(u))
            idx = idx.clamp(0, s_n - 1).to(torch.int64)
            inside = (p[..., None] >= first[:, :, None, None, :]) & (p[..., None] <= last[:, :, None, None, :])
            return idx, inside

        ih, in_h = axis(p_h, first_h, last_h)
        iw, in_w = axis(p_w, first_w, last_w)
        flat = kp * (s_n * s_n) + iw[..., :, None, :] * s_n + ih[..., None, :, :]  # (B, C, K, S_w, S_h, K')
        gz = torch.gather(g.reshape(b, c_n, 1, k_n * s_n * s_n).expand(b, c_n, k_n, -1), 3,
                          flat.reshape(b, c_n, k_n, -1)).reshape(flat.shape)
        z = (gz * (in_w[..., :, None, :] & in_h[..., None, :, :])).sum(-1)
        tau_b = tau * g.sum((-2, -1)).mean((1, 2))  # (B,)
        # the floor as a tensor: float(shift) would sync the device inside the timed call
        den = torch.maximum(z + tau_b[:, None, None, None, None], 1e-7 * torch.exp(-shift))
        rho = g / den
        a = rho * e
        ge = g * e
        inv_s2 = 1.0 / s_eff ** 2
        o_w = offs[None, ..., :, None]
        o_h = offs[None, ..., None, :]
        out["A"].append(a.sum((-2, -1)).sum(0))
        out["Gr"].append((torch.stack([(a * o_h).sum((-2, -1)), (a * o_w).sum((-2, -1))], -1)
                          * inv_s2[None, ..., None]).sum(0))
        out["T"].append(ge.sum((-2, -1)))
        out["Q"].append((ge * qvar).sum((-2, -1)).sum(0))
        flat_ge = ge.reshape(b, c_n, k_n, -1)
        best = flat_ge.argmax(-1)
        bw, bh = best // s_n, best % s_n
        o_best = torch.stack([torch.gather(offs[None].expand(b, -1, -1, -1), 3, bh[..., None])[..., 0],
                              torch.gather(offs[None].expand(b, -1, -1, -1), 3, bw[..., None])[..., 0]], -1)
        out["pos"].append(m + o_best)
        out["phi"].append(torch.gather(flat_ge, 3, best[..., None])[..., 0])
    t = torch.cat(out["T"])
    return {"A": sum(out["A"]), "Gr": sum(out["Gr"]), "T_sum": t.sum(0), "Q": sum(out["Q"]), "T": t,
            "pos": torch.cat(out["pos"]), "phi": torch.cat(out["phi"]), "log_scale": shift}


def mstep(coord, sigma, stats: dict, s_prior, t: int, *, s_n: int, h: int, max_range: float, deform_ratio: float,
          sigma_min: float, sigma_max: float, eta: float = 1.0):
    """The fixed-mode M-step of ``jinterp/methods/graph/mstep.py`` (spec §A5) in PyTorch: centers move by
    ``η·ΣGr/max(ΣA, 1e-8)·(min s / t^{1/4})²``; scales ``clip(√(ΣQ/ΣT)·Δ, σ_min, σ_max)`` with Δ = 2R/S of this
    iteration's σ (a node with ΣT = 0 keeps its σ); ``prob_record = T / mean(T)``."""
    min_delta = s_prior.min() / float(t) ** 0.25
    coord = coord + stats["Gr"] / torch.clamp(stats["A"], min=1e-8)[..., None] * (eta * min_delta ** 2)
    r_own = mround(torch.clamp(sigma * deform_ratio, max=max_range * h / 2)).to(torch.int32)
    spacing = 2.0 * r_own.float() / s_n
    has = stats["T_sum"] > 0
    new = torch.where(has, torch.sqrt(torch.where(has, stats["Q"] / stats["T_sum"], 0.0)) * spacing, sigma)
    return coord, torch.clamp(new, sigma_min, sigma_max), stats["T"] / stats["T"].mean()
