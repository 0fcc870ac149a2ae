"""Shared figure helpers: images to displayable arrays, a labelled image grid, saving PNGs atomically.

Headless by construction: matplotlib is switched to the Agg backend before pyplot is imported, so figures render
on machines without a display (CI, remote GPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from jinterp.errors import ShapeError  # noqa: E402


def to_display(images) -> np.ndarray:
    """Images (N,H,W,C) or (H,W,C) or (H,W), uint8 or float, to float32 in [0, 1] with 1 or 3 channels.

    uint8 is divided by 255; floats in [0, 1] are kept; other float ranges are min-max scaled per image, so
    standardized inputs and raw activation maps display too. One channel is returned as (..., H, W) for a gray
    colormap.
    """
    x = np.asarray(images)
    if x.ndim < 2:
        raise ShapeError(f"to_display: expected an image (H,W[,C]) or a batch (N,H,W,C), got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            axes = tuple(range(x.ndim - 3, x.ndim)) if x.ndim >= 4 or (x.ndim == 3 and x.shape[-1] in (1, 3)) \
                else tuple(range(x.ndim - 2, x.ndim))
            lo = x.min(axis=axes, keepdims=True)
            hi = x.max(axis=axes, keepdims=True)
            x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    if x.shape[-1] == 1:
        x = x[..., 0]
    return x


def image_grid(rows: Sequence[Sequence], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, *, cell: float = 1.2, cmap: str = "gray",
               title: str | None = None) -> plt.Figure:
    """A figure of ``len(rows)`` x ``max(len(r))`` images; each entry is anything :func:`to_display` accepts
    (or ``None`` for an empty cell). Labels go on the left of each row and above each column."""
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ShapeError("image_grid: no images to draw")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + (0.8 if row_labels else 0), cell * n_rows),
                             squeeze=False)
    for i in range(n_rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            img = rows[i][j] if j < len(rows[i]) else None
            if img is not None:
                ax.imshow(to_display(img), cmap=cmap, interpolation="nearest")
            if row_labels is not None and j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=8)
            if col_labels is not None and i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path, *, dpi: int = 100) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (parents created; written to a temporary name and renamed, so an
    interrupted run never leaves half a file) and closes it. Returns the path."""
    from jinterp.core.run import write_file

    try:  # process 0 writes (jinterp.core.run.write_file); every process closes its figure
        return write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)
