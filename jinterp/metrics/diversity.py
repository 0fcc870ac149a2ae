"""Filter diversity: do a layer's filters find different parts, or is one detector copied many times?

Issue #20: all 32 interpretable filters of the explainer peaked on the same cell in 98–99 % of test images (the
performer's: 3 %), so its "2× more stable" result measured one detector 32 times. Two numbers catch that:

* :func:`share_on_most_common_cell` — per image, the share of filters whose peak (argmax cell) is the cell most
  filters peak on; averaged over images. ``1/K`` at best (all filters on different cells), 1 when collapsed.
* :func:`parts_covered` — each filter is assigned the landmark it stays closest to (median peak–landmark distance
  over images where that landmark is visible); it *covers* that part when its peak lies within ``radius`` pixels
  of it in at least ``min_hit`` of those images. Returns how many distinct parts are covered and by how many
  filters each [I: jinterp's definition; the explainer paper reports no such number].

Both are jitted pure functions of arrays (peaks from :func:`jinterp.metrics.localization.argmax_positions`,
mapped to pixels with ``cells_to_pixels``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import ShapeError


@functools.partial(jax.jit, static_argnames=("grid",))
def _share(cells: jax.Array, grid: tuple[int, int]) -> jax.Array:
    n, k, _ = cells.shape
    flat = cells[..., 1].astype(jnp.int32) * grid[1] + cells[..., 0].astype(jnp.int32)  # (N, K), x = column
    counts = jax.vmap(lambda f: jnp.zeros((grid[0] * grid[1],), jnp.int32).at[f].add(1))(flat)
    return (counts.max(1) / k).mean()


def share_on_most_common_cell(cells, grid: tuple[int, int]) -> float:
    """Mean over images of (most filters on one cell) / K.

    Args:
      cells: ``(N, K, 2)`` integer peak cells ``(x, y)`` = (column, row), as :func:`argmax_positions` returns.
      grid: ``(H, W)`` of the feature map.
    """
    cells = jnp.asarray(cells)
    if cells.ndim != 3 or cells.shape[-1] != 2 or cells.shape[1] < 1:
        raise ShapeError(f"cells must be (N images, K filters, 2), got shape {tuple(cells.shape)}")
    h, w = int(grid[0]), int(grid[1])
    c = np.asarray(cells)
    if c.size and (c.min() < 0 or c[..., 0].max() >= w or c[..., 1].max() >= h):
        raise ShapeError(f"peak cells lie outside the {h}x{w} grid; pass (column, row) cells of that map")
    return float(_share(cells, (h, w)))


@jax.jit
def _assign(peaks, landmarks, visible, radius):
    d = jnp.linalg.norm(peaks[:, :, None, :] - landmarks[:, None, :, :], axis=-1)     # (N, K, P)
    vis = visible[:, None, :]
    big = jnp.where(vis, d, jnp.nan)
    median = jnp.nanmedian(big, axis=0)                                                # (K, P)
    median = jnp.where(jnp.isnan(median), jnp.inf, median)
    part = jnp.argmin(median, axis=1)                                                  # (K,)
    hit = (d <= radius) & vis
    n_vis = jnp.maximum(visible.sum(0), 1)                                             # (P,)
    rate = hit.sum(0) / n_vis[None, :]                                                 # (K, P)
    return part, jnp.take_along_axis(rate, part[:, None], 1)[:, 0]


def parts_covered(peaks_xy, landmarks, visible, radius: float, *, min_hit: float = 0.5) -> dict:
    """Which parts the filters track.

    Args:
      peaks_xy: ``(N, K, 2)`` filter peaks in image pixels ``(x, y)``.
      landmarks: ``(N, P, 2)`` part centres in pixels; visible ``(N, P)`` bool.
      radius: a peak within this many pixels of the landmark counts as on the part (e.g. the feature stride).
      min_hit: the share of the part's visible images in which the filter must be on it.

    Returns ``{"parts_covered": int, "filters_per_part": [P ints], "filter_part": [K ints, -1 = none],
    "hit_rate": [K floats]}``.
    """
    peaks = jnp.asarray(peaks_xy, jnp.float32)
    lm = jnp.asarray(landmarks, jnp.float32)
    vis = jnp.asarray(visible, bool) & jnp.all(jnp.isfinite(lm), -1)
    if peaks.ndim != 3 or lm.ndim != 3 or peaks.shape[0] != lm.shape[0] or vis.shape != lm.shape[:2]:
        raise ShapeError(f"need peaks (N, K, 2), landmarks (N, P, 2), visible (N, P); got {tuple(peaks.shape)}, "
                         f"{tuple(lm.shape)}, {tuple(vis.shape)}")
    part, rate = (np.asarray(a) for a in _assign(peaks, lm, vis, jnp.float32(radius)))
    covered = rate >= min_hit
    filter_part = np.where(covered, part, -1)
    per_part = np.bincount(filter_part[covered], minlength=lm.shape[1])
    return {"parts_covered": int((per_part > 0).sum()), "filters_per_part": per_part.tolist(),
            "filter_part": filter_part.tolist(), "hit_rate": rate.tolist()}
