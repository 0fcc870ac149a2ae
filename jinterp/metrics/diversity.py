"""Filter diversity: do a layer's filters find different parts, or is one detector copied many times?

Issue #20: all 32 interpretable filters of the explainer peaked on the same cell in 98–99 % of test images (the
performer's: 3 %), so its "2× more stable" result measured one detector 32 times. Two numbers catch that:

* :func:`share_on_most_common_cell` — per image, the share of filters whose peak (argmax cell) is the cell most
  filters peak on; averaged over images. ``1/K`` at best (all filters on different cells), 1 when collapsed.
* :func:`parts_covered` — each filter is assigned the landmark it stays closest to (median peak–landmark distance
  over images where that landmark is visible); it *covers* that part when its peak lies within ``radius`` pixels
  of it in at least ``min_hit`` of those images. Returns how many distinct parts are covered and by how many
  filters each [I: jinterp's definition; the explainer paper reports no such number].
* :func:`part_radius` — the default ``radius``, taken from the landmark geometry rather than the feature grid: half
  the median distance from a visible part to the nearest other visible part of the same image. A peak within it is
  closer to that part than to its typical neighbour, so "on the part" means the same on any image size and any
  layer (a fixed one-cell radius grew with the layer's stride and could not tell neighbouring parts apart on
  coarse maps while rejecting near misses on fine ones) [I].

Both are jitted pure functions of arrays (peaks from :func:`jinterp.metrics.localization.argmax_positions`,
mapped to pixels with ``cells_to_pixels``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import DataError, ShapeError


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
def _nearest_other(landmarks, visible):
    d = jnp.linalg.norm(landmarks[:, :, None, :] - landmarks[:, None, :, :], axis=-1)          # (N, P, P)
    both = visible[:, :, None] & visible[:, None, :] & ~jnp.eye(landmarks.shape[1], dtype=bool)[None]
    nearest = jnp.min(jnp.where(both, d, jnp.inf), axis=-1)                                     # (N, P)
    return jnp.where(visible & jnp.isfinite(nearest), nearest, jnp.nan)


def part_radius(landmarks, visible) -> float:
    """Half the median distance (pixels) from a visible part to the nearest other visible part of its image.

    Args:
      landmarks: ``(N, P, 2)`` part centres in pixels; visible ``(N, P)`` bool.

    Raises ``ShapeError`` on other shapes and ``DataError`` when no image shows two parts (no distance to take
    half of; pass ``radius`` to :func:`parts_covered` yourself then).
    """
    lm = jnp.asarray(landmarks, jnp.float32)
    if lm.ndim != 3 or lm.shape[-1] != 2 or np.shape(visible) != lm.shape[:2]:
        raise ShapeError(f"need landmarks (N, P, 2) and visible (N, P); got {tuple(lm.shape)} and "
                         f"{tuple(np.shape(visible))}")
    vis = jnp.asarray(visible, bool) & jnp.all(jnp.isfinite(lm), -1)
    nearest = np.asarray(_nearest_other(jnp.where(vis[..., None], lm, 0.0), vis))
    if not np.isfinite(nearest).any():
        raise DataError("part_radius: no image shows two parts, so parts have no neighbour distance; give "
                        "parts_covered a radius in pixels instead")
    return float(np.nanmedian(nearest) / 2)


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


def parts_covered(peaks_xy, landmarks, visible, radius: float | None = None, *, min_hit: float = 0.5) -> dict:
    """Which parts the filters track.

    Args:
      peaks_xy: ``(N, K, 2)`` filter peaks in image pixels ``(x, y)``.
      landmarks: ``(N, P, 2)`` part centres in pixels; visible ``(N, P)`` bool.
      radius: a peak within this many pixels of the landmark counts as on the part; ``None`` (default):
        :func:`part_radius` of these landmarks.
      min_hit: the share of the part's visible images in which the filter must be on it.

    Returns ``{"parts_covered": int, "filters_per_part": [P ints], "filter_part": [K ints, -1 = none],
    "hit_rate": [K floats], "radius": the radius used (pixels)}``.
    """
    peaks = jnp.asarray(peaks_xy, jnp.float32)
    lm = jnp.asarray(landmarks, jnp.float32)
    vis = jnp.asarray(visible, bool) & jnp.all(jnp.isfinite(lm), -1)
    if peaks.ndim != 3 or lm.ndim != 3 or peaks.shape[0] != lm.shape[0] or vis.shape != lm.shape[:2]:
        raise ShapeError(f"need peaks (N, K, 2), landmarks (N, P, 2), visible (N, P); got {tuple(peaks.shape)}, "
                         f"{tuple(lm.shape)}, {tuple(vis.shape)}")
    if radius is None:
        radius = part_radius(lm, vis)
    part, rate = (np.asarray(a) for a in _assign(peaks, lm, vis, jnp.float32(radius)))
    covered = rate >= min_hit
    filter_part = np.where(covered, part, -1)
    per_part = np.bincount(filter_part[covered], minlength=lm.shape[1])
    return {"parts_covered": int((per_part > 0).sum()), "filters_per_part": per_part.tolist(),
            "filter_part": filter_part.tolist(), "hit_rate": rate.tolist(), "radius": float(radius)}
