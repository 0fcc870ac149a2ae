"""ClaDec figures: the Original | RefAE | ClaDec grid (spec A.2 "how an explanation is read") and the α trade-off.

Unlike the official ``showPics`` (per-picture min-max stretch and inverted grey scale), reconstructions are shown
on the images' own [0, 1] scale, so brightness differences between columns are real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jinterp.report.figures._common import image_grid, plt, save


def reconstruction_grid(originals: np.ndarray, refae: np.ndarray | None, cladec: Mapping[float, np.ndarray],
                        path: str | Path, *, title: str = "", row_labels: Sequence[str] | None = None) -> Path:
    """One row per test image: Original | RefAE | ClaDec α=… (one column per α). Arrays ``(N, H, W, C)``."""
    n = len(originals)
    cols = ["Original"] + (["RefAE"] if refae is not None else []) + [f"ClaDec α={a:g}" for a in cladec]
    rows = []
    for i in range(n):
        row = [originals[i]] + ([refae[i]] if refae is not None else []) + [rec[i] for rec in cladec.values()]
        rows.append(row)
    fig = image_grid(rows, row_labels=row_labels, col_labels=cols, title=title or None)
    return save(fig, path)


def tradeoff_plot(per_layer: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, *,
                  title: str = "ClaDec: fidelity vs. classifiability") -> Path:
    """Reconstruction MSE (x) vs. the frozen classifier's accuracy on the reconstructions (y), one line per layer
    through its α values (annotated), RefAE as a cross per layer.

    ``per_layer[layer]`` holds ``alphas``, ``mse``, ``accuracy`` (same length) and optionally ``refae_mse``,
    ``refae_accuracy`` (floats) and ``original_accuracy``.
    """
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for i, (layer, d) in enumerate(per_layer.items()):
        color = f"C{i % 10}"
        ax.plot(d["mse"], d["accuracy"], "o-", color=color, label=f"ClaDec {layer}")
        for a, x, y in zip(d["alphas"], d["mse"], d["accuracy"], strict=True):
            ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
        if d.get("refae_mse") is not None:
            ax.plot([d["refae_mse"]], [d["refae_accuracy"]], "x", color=color, markersize=9, mew=2,
                    label=f"RefAE {layer}")
    originals = [d["original_accuracy"] for d in per_layer.values() if d.get("original_accuracy") is not None]
    if originals:
        ax.axhline(originals[0], color="gray", ls="--", lw=1, label="original test images")
    ax.set_xlabel("reconstruction MSE (per pixel, test)")
    ax.set_ylabel("frozen classifier accuracy on reconstructions")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
