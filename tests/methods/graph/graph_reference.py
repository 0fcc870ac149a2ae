"""Loop-by-loop NumPy (float64) transcription of the explanatory graph's E-step, M-step and parent prior.

Written from spec ``explainer_and_graph.md`` §A4-A6 in the order of the released MEX/MATLAB loops (node by node,
candidate by candidate, nearest candidate by exhaustive search with a strict ``<``), without any vectorization,
so that the JAX implementation can be checked against it on toy maps in both modes.
Coordinates are 0-based cells (h, w), like the C code after its ``coord − 1``.
"""

from __future__ import annotations

import math

import numpy as np


def mround(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)


def gauss(d: float, s: float) -> float:
    return math.exp(-d * d / (2 * s * s)) / (math.sqrt(2 * math.pi) * s)


def offsets(r: int, s: int) -> list[float]:
    edges = [-r + 2 * r * i / s for i in range(s + 1)]
    return [(edges[i] + edges[i + 1]) / 2 for i in range(s)]


def half_range(sigma: float, h: int, max_range: float, deform_ratio: float) -> int:
    return int(mround(min(max_range * h / 2, sigma * deform_ratio)))


def estep(maps, coord, sigma, delta, s_prior, lam, *, s_n, max_range, deform_ratio, map_sigma, tau, faithful):
    """Returns dict of per-image arrays A (N,C,K), Gr (N,C,K,2), T, Q, pos (N,C,K,2), phi (absolute scale)."""
    n, h, w, c_n = maps.shape
    k_n = coord.shape[1]
    out = {k: np.zeros((n, c_n, k_n)) for k in ("A", "T", "Q", "phi")}
    out["Gr"] = np.zeros((n, c_n, k_n, 2))
    out["pos"] = np.zeros((n, c_n, k_n, 2))
    r_own = [[half_range(sigma[c, k], h, max_range, deform_ratio) for k in range(k_n)] for c in range(c_n)]
    for i in range(n):
        prob = np.zeros((c_n, k_n, s_n * s_n))  # g
        prior = np.zeros((c_n, k_n, s_n * s_n))  # e
        logder = np.zeros((c_n, k_n, s_n * s_n, 2))
        pos = np.zeros((c_n, k_n, s_n * s_n, 2))
        for c in range(c_n):
            for k in range(k_n):
                rw = r_own[0][k] if faithful else r_own[c][k]
                se = s_prior[0, k] if faithful else s_prior[c, k]
                off = offsets(r_own[c][k], s_n)
                mh = coord[c, k, 0] + delta[i, c, k, 0]
                mw = coord[c, k, 1] + delta[i, c, k, 1]
                ch, cw = mround(mh), mround(mw)
                fh, fw = (0.0, 0.0) if faithful else (mh - ch, mw - cw)
                j = 0
                for p1 in range(s_n):  # w offset
                    for p2 in range(s_n):  # h offset
                        total = 0.0
                        for qw in range(-rw, rw + 1):
                            for qh in range(-rw, rw + 1):
                                hh, ww = int(ch) + qh, int(cw) + qw
                                if hh < 0 or hh >= h or ww < 0 or ww >= w:
                                    continue
                                d2 = (off[p1] + fw - qw) ** 2 + (off[p2] + fh - qh) ** 2
                                if d2 < (3 * map_sigma) ** 2:
                                    kv = math.exp(-d2 / (2 * map_sigma ** 2)) / (math.sqrt(2 * math.pi) * map_sigma)
                                else:
                                    kv = math.exp(-4.5) / (math.sqrt(2 * math.pi) * map_sigma)
                                total += kv * max(maps[i, hh, ww, c], 0.0)
                        prob[c, k, j] = gauss(off[p1], se) * gauss(off[p2], se) * lam[i, c, k]
                        prior[c, k, j] = total
                        logder[c, k, j] = (off[p2] / se ** 2, off[p1] / se ** 2)
                        pos[c, k, j] = (mh + off[p2], mw + off[p1])
                        j += 1
        # competition
        sum_prob = np.zeros((c_n, k_n, s_n * s_n))
        for c in range(c_n):
            for k in range(k_n):
                for j in range(s_n * s_n):
                    ht, wt = pos[c, k, j]
                    z = 0.0
                    for p in range(k_n):
                        cand = pos[c, p]
                        if ht < cand[0, 0] or wt < cand[0, 1] or ht > cand[-1, 0] or wt > cand[-1, 1]:
                            continue
                        best, val = 1e8, 0.0
                        for cc in range(s_n * s_n):
                            dd = (ht - cand[cc, 0]) ** 2 + (wt - cand[cc, 1]) ** 2
                            if dd < best:
                                best, val = dd, prob[c, p, cc]
                        z += val
                    sum_prob[c, k, j] = z
        tau_i = tau * prob.sum(-1).mean()
        norm = prob / np.maximum(sum_prob + tau_i, 1e-7)
        fin = norm * prior
        idx_w = np.repeat(np.arange(s_n), s_n)
        idx_h = np.tile(np.arange(s_n), s_n)
        var = (idx_h - (s_n - 1) / 2) ** 2 + (idx_w - (s_n - 1) / 2) ** 2
        for c in range(c_n):
            for k in range(k_n):
                out["A"][i, c, k] = fin[c, k].sum()
                out["Gr"][i, c, k] = (fin[c, k][:, None] * logder[c, k]).sum(0)
                ge = prob[c, k] * prior[c, k]
                out["T"][i, c, k] = ge.sum()
                out["Q"][i, c, k] = (ge * var).sum()
                b = int(np.argmax(ge))
                out["pos"][i, c, k] = pos[c, k, b]
                out["phi"][i, c, k] = ge[b]
    return out


def mstep(coord, sigma, stats, s_prior, t, *, eta, init_sigma, h, s_n, max_range, deform_ratio, sigma_min,
          sigma_max, faithful):
    """stats: dict of per-image arrays from :func:`estep`."""
    min_delta = s_prior.min() / t ** 0.25
    a = stats["A"].sum(0)
    gr = stats["Gr"].sum(0)
    new_coord = coord + gr / np.maximum(a, 1e-8)[..., None] * eta * min_delta ** 2
    c_n, k_n = sigma.shape
    new_sigma = np.zeros_like(sigma)
    for c in range(c_n):
        for k in range(k_n):
            tt = stats["T"][:, c, k].sum()
            qq = stats["Q"][:, c, k].sum()
            if faithful:
                unit = 2 * half_range(init_sigma, h, max_range, deform_ratio) / s_n
                v = math.sqrt(qq / tt) * unit if tt > 0 else float("nan")
                v = sigma_min if math.isnan(v) else v
            else:
                unit = 2 * half_range(sigma[c, k], h, max_range, deform_ratio) / s_n
                v = math.sqrt(qq / tt) * unit if tt > 0 else sigma[c, k]
            new_sigma[c, k] = min(max(v, sigma_min), sigma_max)
    prob_record = stats["T"] / stats["T"].mean()
    return new_coord, new_sigma, prob_record


def parents(up_pos, up_prob, up_sigma, pos, phi, *, child_h, upper_h, child_stride, child_center, upper_stride,
            upper_center, top_n, top_m, min_var_rate, edge_cut_rate, faithful):
    """Pool, selection and prior by loops. up_pos (N, U, 2), pos (N, V, 2) flat; returns (parents (V, M), delta
    (N, V, 2), s (V,), lam (N, V))."""
    n, u, _ = up_pos.shape
    v = pos.shape[1]
    mean_up = up_pos.mean(0)
    var = [sum(np.var(up_pos[:, j, a], ddof=1) for a in range(2)) for j in range(u)]
    low = sorted(range(u), key=lambda j: var[j])[:math.ceil(u * min_var_rate)]
    hb = child_h if faithful else upper_h
    border = [j for j in range(u)
              if min(hb / 2 - abs(hb / 2 - (mean_up[j, a] + 1)) for a in range(2)) < hb * edge_cut_rate]
    tot = up_prob.sum(0)
    order = sorted(range(u), key=lambda j: -tot[j])
    pool = [j for j in order if j not in low and j not in border][:top_m]
    m = min(top_n, len(pool))

    def px(d, stride, center):
        return center + (d - 1) * stride if faithful else d * stride

    d_up = up_pos - mean_up
    d = pos - pos.mean(0)
    par = np.zeros((v, m), int)
    for vi in range(v):
        d2 = np.zeros((len(pool), n))
        for pi, uj in enumerate(pool):
            for i in range(n):
                a = px(d[i, vi], child_stride, child_center)
                b = px(d_up[i, uj], upper_stride, upper_center)
                d2[pi, i] = ((a - b) ** 2).sum()
        mean = d2.mean()
        score = [sum(phi[i, vi] * math.exp(-d2[pi, i] / (2 * mean)) for i in range(n)) for pi in range(len(pool))]
        ranked = sorted(range(len(pool)), key=lambda pi: -score[pi])
        par[vi] = [pool[pi] for pi in ranked[:m]]
    ratio = 1.0 if faithful else upper_stride / child_stride
    delta = np.zeros((n, v, 2))
    s = np.zeros(v)
    lam = np.ones((n, v))
    for vi in range(v):
        w = [(1 / m) / (up_sigma[uj] * ratio) ** 2 for uj in par[vi]]
        s[vi] = math.sqrt(1 / sum(w))
        for i in range(n):
            delta[i, vi] = sum(wj * d_up[i, uj] * ratio for wj, uj in zip(w, par[vi], strict=True)) / sum(w)
            val = s[vi]
            for uj in par[vi]:
                su = up_sigma[uj] * ratio
                val *= math.exp(-((delta[i, vi] - d_up[i, uj] * ratio) ** 2).sum() / (2 * m * su ** 2)) / su
            lam[i, vi] = val
    return par, delta, s, lam
