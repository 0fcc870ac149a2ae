"""Figures of ``jinterp basis``: top-activating images per learned direction, and the dissection scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jinterp.errors import ShapeError  # noqa: E402


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image dimmed outside the direction's thresholded region (mask nearest-resized to the image)."""
    img = np.asarray(image, np.float32)
    img = img / 255.0 if np.asarray(image).dtype == np.uint8 else img
    if img.ndim == 2 or img.shape[-1] == 1:
        img = np.repeat(img.reshape(*img.shape[:2], 1), 3, -1)
    h, w = img.shape[:2]
    m = np.asarray(mask, bool)
    ys = np.minimum((np.arange(h) + 0.5) * m.shape[0] / h, m.shape[0] - 1).astype(int)
    xs = np.minimum((np.arange(w) + 0.5) * m.shape[1] / w, m.shape[1] - 1).astype(int)
    up = m[ys[:, None], xs[None, :]]
    out = img * np.where(up[..., None], 1.0, 0.25)
    out[..., 0] = np.where(up, np.clip(out[..., 0] * 0.8 + 0.2, 0, 1), out[..., 0])
    return out


def direction_grid(rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], row_labels: Sequence[str], path,
                   title: str = "") -> Path:
    """One row per direction: its top-activating images with the thresholded region highlighted."""
    if not rows or not any(rows):
        raise ShapeError("direction_grid: no directions to draw")
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols + 2.2, 1.3 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(_overlay(*row[j]))
        axes[i, 0].text(-0.1, 0.5, row_labels[i], transform=axes[i, 0].transAxes, ha="right", va="center",
                        fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.3, wspace=0.05, hspace=0.1)
    return _save(fig, path)


def score_bars(results: Mapping[str, Mapping], path, title: str = "") -> Path:
    """S¹, S² and (unique) detectors per basis and threshold rule."""
    keys = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    x = np.arange(len(keys))
    for ax, metrics in zip(axes, (("S1", "S2"), ("detectors", "unique_detectors")), strict=True):
        for k, m in enumerate(metrics):
            ax.bar(x + (k - 0.5) * 0.38, [results[key].get(m, 0) for key in keys], 0.38, label=m)
        ax.set_xticks(x, keys, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    from jinterp.core.run import write_file

    try:  # process 0 writes (jinterp.core.run.write_file); every process closes its figure
        return write_file(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
