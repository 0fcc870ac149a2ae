"""Figures of the explainer network: part maps per interpretable filter, the distribution of p, training
curves and the λ/η trade-off."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jinterp.report.figures._common import plt, save, to_display


def _upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest upsampling of an (h', w') map to (h, w) (integer factors; otherwise index mapping)."""
    rows = (np.arange(h) * m.shape[0] // h)
    cols = (np.arange(w) * m.shape[1] // w)
    return m[rows][:, cols]


def part_maps(images: np.ndarray, maps: np.ndarray, scores: np.ndarray, path, *, num_filters: int = 8,
              per_filter: int = 5, title: str | None = None) -> Path:
    """One row per filter (the ``num_filters`` with the highest mean top-``per_filter`` score): its
    ``per_filter`` most activated images with the filter's map overlaid (red, alpha ∝ activation) and the
    argmax marked.

    images: (N, H, W, C) uint8; maps: (N, h, w, K) the filters' maps on those images; scores: (N, K).
    """
    n, h, w = images.shape[:3]
    k = maps.shape[-1]
    per_filter = min(per_filter, n)
    top = np.argsort(-scores, axis=0, kind="stable")[:per_filter]          # (per_filter, K)
    strength = np.take_along_axis(scores, top, axis=0).mean(axis=0)
    chosen = np.argsort(-strength, kind="stable")[:min(num_filters, k)]
    fig, axes = plt.subplots(len(chosen), per_filter, figsize=(1.3 * per_filter + 0.6, 1.3 * len(chosen)),
                             squeeze=False)
    for r, f in enumerate(chosen):
        for c in range(per_filter):
            i = top[c, f]
            ax = axes[r][c]
            ax.imshow(to_display(images[i]), interpolation="nearest")
            m = maps[i, :, :, f]
            mx = m.max()
            if mx > 0:
                up = _upsample(m / mx, h, w)
                overlay = np.zeros((h, w, 4), np.float32)
                overlay[..., 0] = 1.0
                overlay[..., 3] = 0.6 * up
                ax.imshow(overlay, interpolation="nearest")
                yy, xx = np.unravel_index(np.argmax(m), m.shape)
                ax.plot((xx + 0.5) * w / m.shape[1] - 0.5, (yy + 0.5) * h / m.shape[0] - 0.5, "c+", ms=8, mew=2)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"filter {f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def p_histogram(p: np.ndarray, path, *, title: str = "share of interpretable features p (test images)") -> Path:
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.hist(np.asarray(p), bins=30, range=(0, 1), color="tab:blue")
    ax.axvline(float(np.mean(p)), color="k", ls="--", label=f"mean {float(np.mean(p)):.3f}")
    ax.set_xlabel("p")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def training_curve(curve: Sequence[dict], path) -> Path:
    steps = [c["step"] for c in curve]
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.6))
    for ax, key in zip(axes, ("recon", "filter", "p_mean"), strict=True):
        ax.plot(steps, [c.get(key, np.nan) for c in curve])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    return save(fig, path)


def sweep_tradeoff(rows: Sequence[dict], path) -> Path:
    """Relative reconstruction error vs location instability of the interpretable filters, one point per
    (λ, η), labelled with mean p."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for r in rows:
        ax.scatter(r["relative_error"], r["instability_interp2"], s=30)
        ax.annotate(f"λ={r['lam']:g}, η={r['eta']:g}\np={r['p_mean']:.2f}",
                    (r["relative_error"], r["instability_interp2"]), fontsize=6)
    ax.set_xlabel("relative reconstruction error")
    ax.set_ylabel("location instability (interp2)")
    ax.set_title("λ/η trade-off", fontsize=9)
    fig.tight_layout()
    return save(fig, path)
