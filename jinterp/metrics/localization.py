"""Part-localization metrics: location instability (two code variants) and few-shot part localization.

Reference: spec ``explainer_and_graph.md`` §A9 (location instability), §A10 (few-shot part localization), §C4 (the
explainer is evaluated with the ICNN variant). Every function works on **image-pixel coordinates** (use
:func:`cells_to_pixels` / :func:`argmax_positions` to get there from feature maps) and is vectorized over images,
units and landmarks with NumPy (float64, as MATLAB); only the per-unit chunking bounds memory.

Location instability of a unit u (a graph node or a raw filter) w.r.t. landmarks k = 1..P:

1. rank the images by u's score (descending, stable: ties keep the lower image index, like MATLAB ``sort``);
2. keep some of them (variant-dependent, below), for each landmark k separately;
3. ``d_{u,I,k} = ‖landmark_k(I) − pos_u(I)‖`` in pixels; per landmark the **sample std** (N−1, MATLAB ``var``) of
   ``d`` over the kept images; the unit's value is the mean over landmarks;
4. average over the selected units and divide by the image diagonal ``√(H² + W²)`` (316.8 for 224×224).

Variants (both transcribed from the released MATLAB code):

* ``variant="graph"`` — explanatory-graph code (``computeStability.m`` + ``simple_func/getDistSqrtVar.m``):
  take the top ``top_n = 20`` images **first**, then drop those where landmark k is missing (≤ 20 remain). A std
  over one image is 0 (MATLAB ``var`` of a scalar); over none it is NaN. Units: the ``num_units = 167`` units with
  the highest mean of their top-``top_n`` scores (per layer; the paper then averages the per-layer values — do it
  with :func:`combine_layers`). MATLAB would return NaN as soon as one selected unit is NaN; we average the
  defined ones and report the count of undefined ones in ``InstabilityResult.num_undefined``.
* ``variant="icnn"`` — ICNN code (``tool/main/getDistSqrtVar.m``, ``computeStability.m``): per landmark, drop the
  images where it is missing **first**, then keep the first ``top_n = 100`` of the ranking; fewer than 2 kept
  images for any landmark makes the unit NaN. NaN units are dropped, the rest sorted ascending and the first
  ``round(U · select_ratio)`` averaged (``select_ratio = 1``: all defined units).

Optional ``valid`` (N, U) mask (e.g. "the unit fired in this image"): invalid (image, unit) pairs are removed from
the unit's ranking before anything else (an extension; the released code has no such mask).

Few-shot part localization (§A10): :func:`normalized_distance` = ``min_j ‖g_j − p‖ / √(H² + W²)`` over the GT
instances ``j``; :func:`part_localization` adds the detection rate (a box of the GT part's size centered at ``p``
has IoU ≥ 0.5 with the GT box) and the LOC rate (``p`` inside the GT box) when part boxes are given.
:func:`fit_part_transfer` / :func:`predict_parts` implement the spec's **reconstructed** transfer step (the
released code has none): units are ranked on a few annotated images by how consistent their offset to the part is,
and a test image's prediction is the score-weighted mean of the selected units' positions plus their offsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jinterp.errors import ConfigError, ShapeError

VARIANTS = ("graph", "icnn")
DEFAULTS = {"graph": {"top_n": 20, "num_units": 167}, "icnn": {"top_n": 100, "select_ratio": 1.0}}

# Bound on the elements of one (units-chunk × images × landmarks) temporary.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------------------------
# Coordinates


def cells_to_pixels(cells: np.ndarray, stride: float | Sequence[float], center: float | Sequence[float] | None = None,
                    *, one_based_pixels: bool = False) -> np.ndarray:
    """Map 0-based feature-cell coordinates (..., 2) to image pixel coordinates (same axis order).

    The released code maps 1-based cell ``x`` to the 1-based pixel ``center + (x − 1)·stride`` (``x2p_.m``), with
    ``center`` the first cell's receptive-field center (VGG-16 conv4_*: stride 8, center 4.5; conv5_*: 16, 8.5).
    jinterp's continuous pixel frame (pixel ``j`` spans ``[j, j+1)``, the frame of ``Dataset.landmarks``) puts the
    1-based pixel ``q`` at ``q − 0.5``, so by default the result is ``center + cell·stride − 0.5``. ``center``
    defaults to ``(stride + 1)/2`` (exact for "same"-padded convs and 2×2 pools, where it gives ``(cell + 0.5) ·
    stride``). ``one_based_pixels=True`` returns the MATLAB 1-based pixel value instead. Cells may be real-valued.
    """
    cells = np.asarray(cells, np.float64)
    stride = np.broadcast_to(np.asarray(stride, np.float64), (2,))
    center = (stride + 1.0) / 2.0 if center is None else np.broadcast_to(np.asarray(center, np.float64), (2,))
    out = center + cells * stride
    return out if one_based_pixels else out - 0.5


def argmax_positions(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw-filter positions and scores: per (image, channel) the argmax cell of an (N, H, W, C) map stack.

    Returns ``(cells, scores)``: ``cells`` (N, C, 2) as 0-based ``(x, y)`` = (column, row), ``scores`` (N, C) the
    max values. Ties follow MATLAB's ``max(max(x,[],1),[],2)`` used by both released codes: the first column
    holding the maximum, and in it the first row.
    """
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ShapeError(f"argmax_positions: maps must be (N, H, W, C), got shape {maps.shape}")
    n, h, w, c = maps.shape
    colmajor = np.transpose(maps, (0, 3, 2, 1)).reshape(n, c, w * h)  # index = x*h + y (column-major order)
    flat = np.argmax(colmajor, axis=-1)
    scores = np.take_along_axis(colmajor, flat[..., None], axis=-1)[..., 0]
    cells = np.stack([flat // h, flat % h], axis=-1).astype(np.float64)
    return cells, scores


# --------------------------------------------------------------------------------------------------------------
# Location instability


@dataclass(frozen=True)
class InstabilityResult:
    """Result of :func:`location_instability`.

    Attributes:
      value: the metric (mean over selected defined units of the per-unit value, divided by the diagonal); NaN if
        no selected unit is defined.
      per_unit: (U,) per-unit mean-over-landmarks std of distances, in **pixels** (not normalized); NaN = undefined.
      selected: indices of the units averaged into ``value`` (graph: the top-``num_units`` by score; icnn: the
        defined units kept after the ascending sort).
      num_undefined: number of selected units whose value is NaN and was skipped (graph variant; 0 for icnn).
      diagonal: the normalizer ``√(H² + W²)``.
      variant: "graph" or "icnn".
    """

    value: float
    per_unit: np.ndarray
    selected: np.ndarray
    num_undefined: int
    diagonal: float
    variant: str


def _check_inputs(unit_xy, scores, landmarks, visible, valid):
    unit_xy = np.asarray(unit_xy, np.float64)
    scores = np.asarray(scores, np.float64)
    landmarks = np.asarray(landmarks, np.float64)
    visible = np.asarray(visible, bool)
    if unit_xy.ndim != 3 or unit_xy.shape[-1] != 2:
        raise ShapeError(f"unit_xy must be (N images, U units, 2), got shape {unit_xy.shape}")
    n, u, _ = unit_xy.shape
    if scores.shape != (n, u):
        raise ShapeError(f"scores must be (N, U) = {(n, u)} like unit_xy, got {scores.shape}")
    if landmarks.ndim != 3 or landmarks.shape[0] != n or landmarks.shape[-1] != 2:
        raise ShapeError(f"landmarks must be (N={n}, P, 2), got shape {landmarks.shape}")
    if visible.shape != landmarks.shape[:2]:
        raise ShapeError(f"visible must be (N, P) = {landmarks.shape[:2]}, got {visible.shape}")
    if valid is None:
        valid = np.ones((n, u), bool)
    valid = np.asarray(valid, bool)
    if valid.shape != (n, u):
        raise ShapeError(f"valid must be (N, U) = {(n, u)}, got {valid.shape}")
    # A non-finite landmark or position cannot be measured: treat it as missing.
    visible = visible & np.all(np.isfinite(landmarks), -1)
    valid = valid & np.all(np.isfinite(unit_xy), -1) & ~np.isnan(scores)
    return unit_xy, scores, landmarks, visible, valid


def _ranking(scores: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, N) image order per unit (descending score, stable) and validity in that order."""
    key = np.where(valid, -scores, np.inf).T  # invalid pairs sink to the end
    order = np.argsort(key, axis=1, kind="stable")
    return order, np.take_along_axis(valid.T, order, axis=1)


def _per_unit_std(unit_xy, scores, landmarks, visible, valid, variant, top_n) -> np.ndarray:
    n, u, _ = unit_xy.shape
    p = landmarks.shape[1]
    out = np.empty(u, np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * max(p, 1)))
    for start in range(0, u, chunk):
        sl = slice(start, min(u, start + chunk))
        order, ok = _ranking(scores[:, sl], valid[:, sl])  # (u_c, N)
        vis = visible[order]  # (u_c, N, P): landmark visibility in each unit's ranking
        if variant == "graph":
            rank = np.arange(n)[None, :]
            keep = (ok & (rank < top_n))[..., None] & vis
        else:
            cand = ok[..., None] & vis
            keep = cand & (np.cumsum(cand, axis=1) <= top_n)
        pos = np.take_along_axis(unit_xy[:, sl].transpose(1, 0, 2), order[..., None], axis=1)  # (u_c, N, 2)
        lm = landmarks[order]  # (u_c, N, P, 2)
        dist = np.sqrt(np.sum((lm - pos[:, :, None, :]) ** 2, axis=-1))  # (u_c, N, P)
        cnt = keep.sum(axis=1)  # (u_c, P)
        mean = np.where(keep, dist, 0.0).sum(axis=1) / np.maximum(cnt, 1)
        ss = np.where(keep, (dist - mean[:, None, :]) ** 2, 0.0).sum(axis=1)
        std = np.sqrt(ss / np.maximum(cnt - 1, 1))
        if variant == "graph":
            std = np.where(cnt == 0, np.nan, std)  # var([]) = NaN, var(scalar) = 0 in MATLAB
        else:
            std = np.where(cnt < 2, np.nan, std)
        out[sl] = std.mean(axis=1) if p else np.nan
    return out


def location_instability(unit_xy: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, visible: np.ndarray,
                         image_size: int | Sequence[int], *, variant: str = "graph", valid: np.ndarray | None = None,
                         top_n: int | None = None, num_units: int | None = None,
                         select_ratio: float | None = None) -> InstabilityResult:
    """Location instability of units (graph nodes or filters) w.r.t. annotated landmarks (§A9). Lower is better.

    Args:
      unit_xy: (N images, U units, 2) inferred unit positions in image pixels, same axis order as ``landmarks``
        (jinterp uses ``(x, y)``; the distance does not care as long as both agree).
      scores: (N, U) the unit's score in each image (graph node: ``prob_record``; raw filter: its max response),
        used to rank images per unit and (graph variant) to select units.
      landmarks: (N, P, 2) landmark positions in image pixels.
      visible: (N, P) bool, landmark k annotated in image I.
      image_size: ``H`` (square) or ``(H, W)``; the result is divided by ``√(H² + W²)``.
      variant: ``"graph"`` (explanatory-graph code) or ``"icnn"`` (ICNN code); see the module docstring.
      valid: optional (N, U) bool; False removes image I from unit u's ranking (e.g. the unit did not fire).
      top_n: images per unit (default 20 for graph, 100 for icnn).
      num_units: graph variant: units averaged, the ones with the highest mean top-``top_n`` score (default 167,
        capped at U).
      select_ratio: icnn variant: fraction of units averaged after sorting the defined ones ascending (default 1).

    Returns:
      :class:`InstabilityResult` (``.value`` is the normalized metric).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"location_instability: variant must be one of {VARIANTS}, got {variant!r}")
    unit_xy, scores, landmarks, visible, valid = _check_inputs(unit_xy, scores, landmarks, visible, valid)
    n, u, _ = unit_xy.shape
    top_n = DEFAULTS[variant]["top_n"] if top_n is None else int(top_n)
    if top_n < 1:
        raise ConfigError(f"location_instability: top_n must be >= 1, got {top_n}")
    hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ShapeError(f"image_size must be H or (H, W) with positive sizes, got {image_size!r}")
    diagonal = float(math.hypot(*hw))
    per_unit = _per_unit_std(unit_xy, scores, landmarks, visible, valid, variant, top_n)

    if variant == "graph":
        num_units = DEFAULTS["graph"]["num_units"] if num_units is None else int(num_units)
        # Mean of each unit's top-N scores (valid images only; a unit with no valid image ranks last).
        s = np.where(valid, scores, -np.inf).T
        top = -np.sort(-s, axis=1)[:, :min(top_n, n)]
        finite = np.isfinite(top)
        mean_top = np.where(finite.any(1), np.where(finite, top, 0).sum(1) / np.maximum(finite.sum(1), 1), -np.inf)
        selected = np.argsort(-mean_top, kind="stable")[:min(num_units, u)]
        vals = per_unit[selected]
        defined = ~np.isnan(vals)
        num_undefined = int((~defined).sum())
        value = float(vals[defined].mean() / diagonal) if defined.any() else float("nan")
    else:
        select_ratio = DEFAULTS["icnn"]["select_ratio"] if select_ratio is None else float(select_ratio)
        if not 0 < select_ratio <= 1:
            raise ConfigError(f"location_instability: select_ratio must be in (0, 1], got {select_ratio}")
        defined = np.flatnonzero(~np.isnan(per_unit))
        asc = defined[np.argsort(per_unit[defined], kind="stable")]
        selected = asc[:min(int(round(u * select_ratio)), asc.size)]
        num_undefined = 0
        value = float(per_unit[selected].mean() / diagonal) if selected.size else float("nan")
    return InstabilityResult(value=value, per_unit=per_unit, selected=selected, num_undefined=num_undefined,
                             diagonal=diagonal, variant=variant)


def combine_layers(results: Sequence[InstabilityResult]) -> float:
    """The explanatory-graph paper's number: the mean over graph layers of each layer's instability."""
    return float(np.mean([r.value for r in results]))


# --------------------------------------------------------------------------------------------------------------
# Few-shot part localization


def _gt_instances(gt_xy, gt_valid, n):
    gt_xy = np.asarray(gt_xy, np.float64)
    if gt_xy.ndim == 2:
        gt_xy = gt_xy[:, None, :]
    if gt_xy.ndim != 3 or gt_xy.shape[0] != n or gt_xy.shape[-1] != 2:
        raise ShapeError(f"gt_xy must be (N={n}, 2) or (N, J, 2), got shape {gt_xy.shape}")
    gt_valid = np.ones(gt_xy.shape[:2], bool) if gt_valid is None else np.asarray(gt_valid, bool)
    if gt_valid.ndim == 1:
        gt_valid = gt_valid[:, None]
    if gt_valid.shape != gt_xy.shape[:2]:
        raise ShapeError(f"gt_valid must be (N, J) = {gt_xy.shape[:2]}, got {gt_valid.shape}")
    return gt_xy, gt_valid & np.all(np.isfinite(gt_xy), -1)


def normalized_distance(pred_xy: np.ndarray, gt_xy: np.ndarray, gt_valid: np.ndarray | None,
                        image_size: int | Sequence[int]) -> np.ndarray:
    """Per-image normalized distance ``min_j ‖g_j − p‖ / √(H² + W²)`` (§A10, PG ``step_getResult.m``).

    Args:
      pred_xy: (N, 2) predicted part centers (pixels).
      gt_xy: (N, 2) or (N, J, 2) ground-truth centers of the part's J instances.
      gt_valid: None or (N,) / (N, J) bool; images with no valid instance get NaN.
      image_size: ``H`` or ``(H, W)`` (224 → divide by 224·√2).
    """
    pred_xy = np.asarray(pred_xy, np.float64)
    if pred_xy.ndim != 2 or pred_xy.shape[-1] != 2:
        raise ShapeError(f"pred_xy must be (N, 2), got shape {pred_xy.shape}")
    gt_xy, gt_valid = _gt_instances(gt_xy, gt_valid, pred_xy.shape[0])
    hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    d = np.sqrt(np.sum((gt_xy - pred_xy[:, None, :]) ** 2, -1))
    d = np.where(gt_valid, d, np.inf).min(1)
    return np.where(np.isfinite(d), d / math.hypot(*hw), np.nan)


def part_localization(pred_xy: np.ndarray, gt_xy: np.ndarray, gt_valid: np.ndarray | None,
                      image_size: int | Sequence[int], *, gt_boxes: np.ndarray | None = None,
                      iou_threshold: float = 0.5) -> dict:
    """Few-shot part-localization scores over test images (images without a valid GT instance are skipped).

    Returns ``{"normalized_distance": mean, "num_images": n}`` and, with ``gt_boxes`` (N, J, 4) as
    ``(x0, y0, x1, y1)`` per instance, ``"detection_rate"`` (a box of the instance's size centered at the
    prediction has IoU ≥ ``iou_threshold`` with it, for some instance) and ``"loc_rate"`` (the prediction lies
    inside some instance's box).
    """
    nd = normalized_distance(pred_xy, gt_xy, gt_valid, image_size)
    ok = ~np.isnan(nd)
    out = {"normalized_distance": float(nd[ok].mean()) if ok.any() else float("nan"), "num_images": int(ok.sum())}
    if gt_boxes is not None:
        pred = np.asarray(pred_xy, np.float64)
        gt_xy_, gt_valid_ = _gt_instances(gt_xy, gt_valid, pred.shape[0])
        boxes = np.asarray(gt_boxes, np.float64)
        if boxes.ndim == 2:
            boxes = boxes[:, None, :]
        if boxes.shape != gt_xy_.shape[:2] + (4,):
            raise ShapeError(f"gt_boxes must be (N, J, 4) = {gt_xy_.shape[:2] + (4,)}, got {boxes.shape}")
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        px, py = pred[:, None, 0], pred[:, None, 1]
        pb = np.stack([px - w / 2, py - h / 2, px + w / 2, py + h / 2], -1)
        iw = np.clip(np.minimum(pb[..., 2], boxes[..., 2]) - np.maximum(pb[..., 0], boxes[..., 0]), 0, None)
        ih = np.clip(np.minimum(pb[..., 3], boxes[..., 3]) - np.maximum(pb[..., 1], boxes[..., 1]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(2 * w * h - inter, 1e-12)
        inside = (px >= boxes[..., 0]) & (px <= boxes[..., 2]) & (py >= boxes[..., 1]) & (py <= boxes[..., 3])
        rows = gt_valid_.any(1)
        out["detection_rate"] = float(((iou >= iou_threshold) & gt_valid_).any(1)[rows].mean()) if rows.any() else \
            float("nan")
        out["loc_rate"] = float((inside & gt_valid_).any(1)[rows].mean()) if rows.any() else float("nan")
    return out


@dataclass(frozen=True)
class PartTransfer:
    """A part model transferred from a few annotated images (reconstructed step, spec §A10 [I]).

    Attributes:
      units: (T,) indices of the selected units.
      offsets: (T, 2) mean offset ``gt − unit position`` in pixels over the annotated images.
      consistency: (T,) the ranking score ``mean score / (1 + std(offset)/diagonal)``.
    """

    units: np.ndarray
    offsets: np.ndarray
    consistency: np.ndarray


def fit_part_transfer(unit_xy: np.ndarray, scores: np.ndarray, gt_xy: np.ndarray, gt_valid: np.ndarray | None,
                      image_size: int | Sequence[int], *, top_t: int = 50) -> PartTransfer:
    """**Reconstructed** few-shot transfer (spec §A10, not in any released code): learn one part from a few shots.

    For every annotated image a and unit V: ``offset = gt_a − pos_{V,a}``; rank units by (mean score over the
    shots) / (1 + ‖std over shots of offset‖ / diagonal) and keep the top ``top_t``, storing their mean offsets.

    Args:
      unit_xy: (A, U, 2) unit positions (pixels) on the A annotated images; scores (A, U).
      gt_xy: (A, 2) the part's center on each shot; gt_valid optional (A,) bool (invisible shots are ignored).
    """
    unit_xy = np.asarray(unit_xy, np.float64)
    scores = np.asarray(scores, np.float64)
    gt_xy = np.asarray(gt_xy, np.float64)
    a, u, _ = unit_xy.shape
    if gt_xy.shape != (a, 2) or scores.shape != (a, u):
        raise ShapeError(f"fit_part_transfer: need unit_xy (A, U, 2), scores (A, U), gt_xy (A, 2); got "
                         f"{unit_xy.shape}, {scores.shape}, {gt_xy.shape}")
    ok = np.ones(a, bool) if gt_valid is None else np.asarray(gt_valid, bool).reshape(a)
    if not ok.any():
        raise ShapeError("fit_part_transfer: no annotated image shows the part (gt_valid is all False)")
    hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    off = gt_xy[ok, None, :] - unit_xy[ok]  # (A', U, 2)
    spread = np.sqrt(np.sum(off.std(axis=0) ** 2, -1))  # (U,)
    rank = scores[ok].mean(0) / (1.0 + spread / math.hypot(*hw))
    units = np.argsort(-rank, kind="stable")[:min(top_t, u)]
    return PartTransfer(units=units, offsets=off.mean(0)[units], consistency=rank[units])


def predict_parts(transfer: PartTransfer, unit_xy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Predict the part center on test images: ``Σ_V S_V (pos_V + Δ_V) / Σ_V S_V`` over the transferred units.

    Scores are clipped at 0; an image where every selected unit scores 0 falls back to the unweighted mean.
    Returns (N, 2) pixel positions.
    """
    pos = np.asarray(unit_xy, np.float64)[:, transfer.units] + transfer.offsets[None]
    w = np.clip(np.asarray(scores, np.float64)[:, transfer.units], 0, None)
    tot = w.sum(1, keepdims=True)
    w = np.where(tot > 0, w / np.where(tot > 0, tot, 1), 1.0 / max(1, w.shape[1]))
    return np.einsum("nt,ntd->nd", w, pos)
