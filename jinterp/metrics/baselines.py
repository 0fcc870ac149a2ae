"""Sanity baselines: what a metric gives to a unit that knows nothing, to stand beside every method's number.

Issue #20: location instability could not tell a graph node that tracks a part from one frozen in place (a unit
fixed at the image centre scored better than the nodes), and an image-blind few-shot predictor came within 10 % of
the nodes. A number means something only next to what these trivial units score on the **same data and metric**.

Location instability and few-shot localization (the metrics of :mod:`jinterp.metrics.localization`):

* **centre** — every unit sits at the image centre ``(W/2, H/2)`` (jinterp's continuous pixel frame), in every
  image;
* **mean position** — every unit sits at its own mean position (over the images where it is valid) in every image:
  the best a unit that never moves can do for its own image selection;
* **random** — every unit at a uniformly random pixel position, independently per image;
* **image-blind few-shot predictor** — predicts, on every test image, the mean of the shots' landmarks.

The fixed units keep the method's own scores (so each ranks and selects exactly the images the method's unit does);
only the positions change. Position generators are jitted pure functions of arrays (and a key).

Dissection (:mod:`jinterp.metrics.dissection`): the **natural basis** (the raw units, identity directions) and a
**random orthonormal basis at the same firing rate** as a given basis: its thresholds are the quantile whose tail
mass is the given basis' mean firing rate, so a basis cannot "win" by firing on more pixels (UIBE's own rule fired
on ~11 % of pixels against the quantile rule's 0.5 %). Firing rates (share of feature positions strictly above the
threshold, at feature resolution) are returned for every basis so the report can print them.

:func:`verdict` turns a value and its baselines into one sentence for the report.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import ConfigError, DataError, ShapeError
from jinterp.metrics import dissection as dis
from jinterp.metrics import localization as loc

# --------------------------------------------------------------------------------------------------------------
# Positions of units that know nothing (jitted, pure)


def _hw(image_size) -> tuple[int, int]:
    hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ShapeError(f"image_size must be H or (H, W) with positive sizes, got {image_size!r}")
    return hw


@functools.partial(jax.jit, static_argnames=("num_images", "num_units", "height", "width"))
def _centre(num_images: int, num_units: int, height: int, width: int) -> jax.Array:
    return jnp.broadcast_to(jnp.array([width / 2.0, height / 2.0], jnp.float32), (num_images, num_units, 2))


def centre_positions(num_images: int, num_units: int, image_size) -> jax.Array:
    """``(N, U, 2)`` ``(x, y)`` positions all at the image centre ``(W/2, H/2)`` (continuous pixel frame)."""
    h, w = _hw(image_size)
    return _centre(int(num_images), int(num_units), h, w)


@jax.jit
def mean_positions(unit_xy: jax.Array, valid: jax.Array) -> jax.Array:
    """Each unit frozen at its own mean position: ``(N, U, 2)`` from ``unit_xy (N, U, 2)`` and ``valid (N, U)``.

    The mean runs over the images where the unit is valid (and its position finite); a unit valid nowhere keeps
    NaN (undefined, as the metric treats it).
    """
    ok = valid & jnp.all(jnp.isfinite(unit_xy), -1)
    xy = jnp.where(ok[..., None], unit_xy, 0.0)
    count = ok.sum(0)[:, None]
    mean = jnp.where(count > 0, xy.sum(0) / jnp.maximum(count, 1), jnp.nan)  # (U, 2)
    return jnp.broadcast_to(mean[None], unit_xy.shape)


@functools.partial(jax.jit, static_argnames=("num_images", "num_units", "height", "width"))
def _random(key, num_images: int, num_units: int, height: int, width: int) -> jax.Array:
    u = jax.random.uniform(key, (num_images, num_units, 2), jnp.float32)
    return u * jnp.array([width, height], jnp.float32)


def random_positions(key: jax.Array, num_images: int, num_units: int, image_size) -> jax.Array:
    """``(N, U, 2)`` ``(x, y)`` positions uniform over the image, independent per image and unit."""
    h, w = _hw(image_size)
    return _random(key, int(num_images), int(num_units), h, w)


@functools.partial(jax.jit, static_argnames=("num_test",))
def _blind(shot_xy, shot_visible, num_test: int):
    ok = shot_visible & jnp.all(jnp.isfinite(shot_xy), -1)
    mean = jnp.where(ok[:, None], shot_xy, 0.0).sum(0) / jnp.maximum(ok.sum(), 1)
    return jnp.broadcast_to(mean, (num_test, 2))


def image_blind_prediction(shot_xy, shot_visible, num_test: int) -> jax.Array:
    """The image-blind few-shot predictor: ``(num_test, 2)``, every row the mean of the shots' landmarks.

    ``shot_xy (A, 2)`` the part's centre on the A annotated images, ``shot_visible (A,)`` whether it is shown.
    """
    shot_xy = jnp.asarray(shot_xy, jnp.float32)
    shot_visible = jnp.asarray(shot_visible, bool)
    if shot_xy.ndim != 2 or shot_xy.shape[-1] != 2 or shot_visible.shape != shot_xy.shape[:1]:
        raise ShapeError(f"shots must be shot_xy (A, 2) and shot_visible (A,); got {shot_xy.shape} and "
                         f"{shot_visible.shape}")
    if not bool(shot_visible.any()):
        raise DataError("image_blind_prediction: no shot shows the part (shot_visible is all False); pick shots "
                        "where the part is visible.")
    return _blind(shot_xy, shot_visible, int(num_test))


# --------------------------------------------------------------------------------------------------------------
# Baselines of the localization metrics


def instability_baselines(unit_xy, scores, landmarks, visible, image_size, key: jax.Array, *,
                          valid=None, **metric_kwargs) -> dict[str, float]:
    """Location instability of the method's units and of the fixed/random units with the same scores.

    Args are those of :func:`jinterp.metrics.localization.location_instability` (``unit_xy (N, U, 2)``, ``scores
    (N, U)``, ``landmarks (N, P, 2)``, ``visible (N, P)``, ``valid (N, U)`` optional; ``variant``, ``top_n``, …
    pass through ``metric_kwargs``). Returns ``{"method", "centre", "mean_position", "random"}`` (lower is better).
    """
    unit_xy = np.asarray(unit_xy, np.float64)
    if unit_xy.ndim != 3 or unit_xy.shape[-1] != 2:
        raise ShapeError(f"unit_xy must be (N images, U units, 2), got shape {unit_xy.shape}")
    n, u, _ = unit_xy.shape
    ok = np.ones((n, u), bool) if valid is None else np.asarray(valid, bool)
    positions = {
        "method": unit_xy,
        "centre": np.asarray(centre_positions(n, u, image_size)),
        "mean_position": np.asarray(mean_positions(jnp.asarray(unit_xy, jnp.float32), jnp.asarray(ok))),
        "random": np.asarray(random_positions(key, n, u, image_size)),
    }
    return {name: loc.location_instability(xy, scores, landmarks, visible, image_size, valid=valid,
                                           **metric_kwargs).value for name, xy in positions.items()}


def localization_baselines(pred_xy, shot_xy, shot_visible, gt_xy, gt_valid, image_size, key: jax.Array,
                           **metric_kwargs) -> dict[str, float]:
    """Few-shot normalized distance of the method's predictions ``pred_xy (N, 2)`` and of the image-blind
    predictor, the centre and random positions, on the same test images (lower is better).

    ``shot_xy (A, 2)``/``shot_visible (A,)``: the shots' landmarks; ``gt_xy``/``gt_valid``: the test images' ground
    truth as :func:`jinterp.metrics.localization.part_localization` takes them (``metric_kwargs`` pass through).
    Returns ``{"method", "image_blind", "centre", "random"}`` normalized distances.
    """
    pred_xy = np.asarray(pred_xy, np.float64)
    if pred_xy.ndim != 2 or pred_xy.shape[-1] != 2:
        raise ShapeError(f"pred_xy must be (N, 2), got shape {pred_xy.shape}")
    n = len(pred_xy)
    preds = {
        "method": pred_xy,
        "image_blind": np.asarray(image_blind_prediction(shot_xy, shot_visible, n)),
        "centre": np.asarray(centre_positions(n, 1, image_size))[:, 0],
        "random": np.asarray(random_positions(key, n, 1, image_size))[:, 0],
    }
    return {name: loc.part_localization(p, gt_xy, gt_valid, image_size, **metric_kwargs)["normalized_distance"]
            for name, p in preds.items()}


# --------------------------------------------------------------------------------------------------------------
# Dissection baselines


@jax.jit
def _count_above(acts: jax.Array, thresholds: jax.Array) -> jax.Array:
    flat = acts.reshape(-1, acts.shape[-1]).astype(jnp.float32)
    return (flat > thresholds[None, :]).sum(0)


def firing_rates(act_batches: Iterable, thresholds) -> np.ndarray:
    """Per unit the share of feature positions strictly above its threshold (the dissection's ``>``): ``(U,)``.

    ``act_batches`` yields ``(B, h, w, U)`` (or ``(B, U)``) activations; ``thresholds`` a ``(U,)`` array or
    :class:`jinterp.metrics.dissection.Thresholds` (dead units count as never firing).
    """
    th = thresholds.value if isinstance(thresholds, dis.Thresholds) else thresholds
    dead = thresholds.dead if isinstance(thresholds, dis.Thresholds) else None
    th = jnp.asarray(th, jnp.float32)
    count, total = None, 0
    for acts in act_batches:
        acts = jnp.asarray(acts)
        if acts.shape[-1] != th.shape[0]:
            raise ShapeError(f"activations have {acts.shape[-1]} units but {th.shape[0]} thresholds; use the "
                             "thresholds of the same basis.")
        c = _count_above(acts, th)
        count = c if count is None else count + c
        total += math.prod(acts.shape[:-1])
    if count is None:
        raise DataError("firing_rates: no activations given; stream at least one batch.")
    rate = np.asarray(count, np.float64) / total
    return np.where(dead, 0.0, rate) if dead is not None else rate


def natural_basis(dim: int) -> np.ndarray:
    """The natural basis: the raw units as directions, ``(D, D)`` identity."""
    return np.eye(int(dim), dtype=np.float32)


@jax.jit
def _orthonormal(key, shape_ref):
    q, r = jnp.linalg.qr(jax.random.normal(key, shape_ref.shape, jnp.float32))
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)[None, :]  # sign-fixed QR: Haar-distributed


def random_orthonormal_basis(key: jax.Array, dim: int, num_directions: int) -> np.ndarray:
    """A Haar-random ``(D, I)`` basis with orthonormal columns (``I ≤ D``)."""
    if not 1 <= num_directions <= dim:
        raise ConfigError(f"a random orthonormal basis needs 1 <= num_directions <= dim, got {num_directions} "
                          f"directions in {dim} dimensions")
    return np.asarray(_orthonormal(key, jnp.zeros((int(dim), int(num_directions)))))


@jax.jit
def _project(feats, offset, basis):
    return jnp.einsum("...d,du->...u", feats.astype(jnp.float32) - offset, basis, precision=jax.lax.Precision.HIGHEST)


def project_batches(feature_batches_fn: Callable[[], Iterable], basis, offset=None) -> Callable[[], Iterable]:
    """A fresh-iterator factory of ``(feats − offset) @ basis`` for each ``(B, h, w, D)`` feature batch."""
    basis = jnp.asarray(basis, jnp.float32)
    off = jnp.zeros((basis.shape[0],), jnp.float32) if offset is None else jnp.asarray(offset, jnp.float32)
    return lambda: (np.asarray(_project(jnp.asarray(f), off, basis)) for f in feature_batches_fn())


def thresholds_at_rate(act_batches_fn: Callable[[], Iterable], rate: float) -> dis.Thresholds:
    """Per-unit thresholds whose upper tail holds ``rate`` of the positions (:func:`dissection.quantile_thresholds`)."""
    if not 0 < rate < 1:
        raise ConfigError(f"a firing rate must lie in (0, 1), got {rate}; a basis that never (or always) fires has "
                          "no matching random baseline.")
    batches = list(act_batches_fn())
    if not batches:
        raise DataError("thresholds_at_rate: no activations given; stream at least one batch.")
    total = sum(math.prod(np.shape(b)[:-1]) for b in batches)
    return dis.quantile_thresholds(batches, total, rate)


def random_basis_at_rate(key: jax.Array, feature_batches_fn: Callable[[], Iterable], num_directions: int,
                         target_rate: float, offset=None) -> tuple[np.ndarray, dis.Thresholds, np.ndarray]:
    """The random-basis baseline at a given firing rate.

    Draws a random orthonormal ``(D, I)`` basis, projects the features (``(feats − offset) @ basis``) and sets each
    direction's threshold at the ``target_rate`` upper quantile (use the mean firing rate of the basis it is
    compared with, from :func:`firing_rates`). Returns ``(basis, thresholds, measured firing rates (I,))``; dissect
    the projections of :func:`project_batches` with these thresholds. Ties (a direction constant on many positions)
    make the measured rate fall below the target; report the measured one.
    """
    first = next(iter(feature_batches_fn()), None)
    if first is None:
        raise DataError("random_basis_at_rate: no features given; stream at least one batch.")
    basis = random_orthonormal_basis(key, np.shape(first)[-1], num_directions)
    proj = project_batches(feature_batches_fn, basis, offset)
    th = thresholds_at_rate(proj, target_rate)
    return basis, th, firing_rates(proj(), th)


def basis_scores(train_fn: Callable[[], Iterable], val_fn: Callable[[], Iterable], concepts_train: dis.ConceptSet,
                 concepts_val: dis.ConceptSet, thresholds: dis.Thresholds, batch_size: int,
                 max_labels: int = 64) -> dict:
    """Dissection scores of one basis under given thresholds: S¹, S² (labelled on train, scored on val), detectors
    and the firing rate on each split, so every basis (method, natural, random) is reported the same way.

    ``train_fn``/``val_fn``: fresh-iterator factories of projected ``(B, h, w, I)`` activations (e.g.
    :func:`project_batches`), in the order of ``concepts_train``/``concepts_val``.
    """
    iou_tr = dis.iou(dis.tally(train_fn(), concepts_train, thresholds, batch_size, max_labels), concepts_train)
    iou_va = dis.iou(dis.tally(val_fn(), concepts_val, thresholds, batch_size, max_labels), concepts_val)
    s1, s2 = dis.s1_s2(iou_tr, iou_va)
    best = iou_tr.argmax(1)
    phi = iou_va[np.arange(len(best)), best]
    det = phi > dis.IOU_DETECTOR_THRESHOLD
    return {"S1": s1, "S2": s2, "detectors": int(det.sum()), "unique_detectors": int(len(np.unique(best[det]))),
            "firing_rate_train": float(firing_rates(train_fn(), thresholds).mean()),
            "firing_rate_val": float(firing_rates(val_fn(), thresholds).mean())}


# --------------------------------------------------------------------------------------------------------------
# Model randomization (Adebayo et al., NeurIPS 2018, "Sanity checks for saliency maps")

# The key stream of the re-initialized weights: fold_in(PRNGKey(seed), RANDOMIZATION_STREAM), a stream no stage of
# any program uses otherwise, so the randomized network is another draw than the one a run trains from.
RANDOMIZATION_STREAM = 7919


def randomized_weights(model, seed: int, image_shape) -> dict:
    """The model's architecture with freshly initialized variables (PyTorch default init, BatchNorm statistics at
    their initial values): the model-randomization check of Adebayo et al., full re-initialization rather than
    their layer-by-layer cascade [I]. Every program's ``randomize_backbone`` goes through here.

    ``image_shape``: ``(H, W, C)`` of the inputs. A method whose numbers survive this does not depend on what the
    network learned.
    """
    from jinterp import backbones

    key = jax.random.fold_in(jax.random.PRNGKey(int(seed)), RANDOMIZATION_STREAM)
    return backbones.init(model, key, tuple(int(d) for d in image_shape))


# Without a measured spread (seeds), a trained network must beat its randomized twin by this share of the randomized
# number for the result to count as depending on training: differences of a few percent are what another random
# draw of the same run gives [I].
RANDOMIZATION_REL_MARGIN = 0.05


def randomization_verdict(label: str, trained: float, randomized: float, *, lower_is_better: bool,
                          margin: float = 0.0, rel_margin: float = RANDOMIZATION_REL_MARGIN) -> dict:
    """Does a result survive model randomization? ``trained``: the method's number on the trained network;
    ``randomized``: the same method and metric on the same architecture with re-initialized weights.

    The result *survives* (a bad sign: it is not about the trained weights) unless the trained network is better
    by more than ``max(margin, rel_margin·|randomized|)`` (``margin`` in the metric's units, e.g. the seeds'
    spread). Returns ``{"survives_randomization": bool, "trained", "randomized", "margin", "text"}``; NaN on either
    side is reported as undefined (and counted as surviving: nothing shows that the result depends on training).
    """
    direction = "lower" if lower_is_better else "higher"
    margin = max(float(margin), float(rel_margin) * abs(float(randomized))) if np.isfinite(randomized) else margin
    out = {"trained": float(trained), "randomized": float(randomized), "margin": float(margin)}
    if not (np.isfinite(trained) and np.isfinite(randomized)):
        return {**out, "survives_randomization": True,
                "text": f"{label}: undefined on the trained or the randomized network ({trained:.4g} vs "
                        f"{randomized:.4g}), so the model-randomization check cannot clear it."}
    tie = 1e-6 * max(abs(randomized), 1e-12)
    depends = (trained < randomized - margin - tie) if lower_is_better else (trained > randomized + margin + tie)
    if depends:
        text = (f"{label}: {trained:.4g} on the trained network against {randomized:.4g} on the same architecture "
                f"with random weights ({direction} is better, by more than {margin:.2g}): the result depends on "
                "what the network learned (it passes the model-randomization check).")
    else:
        text = (f"{label}: {trained:.4g} on the trained network, {randomized:.4g} on the same architecture with "
                f"random weights ({direction} is better; a margin of {margin:.2g} needed): the result SURVIVES "
                "randomization, so it does not show anything the network learned (Adebayo et al.'s "
                "model-randomization check).")
    return {**out, "survives_randomization": not depends, "text": text}


# --------------------------------------------------------------------------------------------------------------
# Verdict in words


def verdict(label: str, value: float, baselines: Mapping[str, float], *, lower_is_better: bool,
            margin: float = 0.0, names: Mapping[str, str] | None = None) -> dict:
    """Does ``value`` beat every baseline? Returns ``{"beats_baselines": bool, "beaten_by": [...], "text": str}``.

    A baseline counts as beaten only when the method is better by more than ``margin`` (same units as the metric).
    ``names`` maps baseline keys to reader-facing words (default: the keys with ``_`` as spaces). NaN values are
    never "beaten" (the text says the value is undefined).
    """
    names = dict(names or {})
    word = lambda k: names.get(k, k.replace("_", " "))  # noqa: E731
    if not np.isfinite(value):
        return {"beats_baselines": False, "beaten_by": sorted(baselines),
                "text": f"{label}: undefined (no value), so it cannot be compared with its baselines."}
    lost = []
    for k, b in baselines.items():
        tie = 1e-6 * max(abs(b), 1e-12)  # float32 vs float64 round-off of the same position is a tie, not a win
        better = (value < b - margin - tie) if lower_is_better else (value > b + margin + tie)
        if not (np.isfinite(b) and better):
            lost.append(k)
    direction = "lower" if lower_is_better else "higher"
    listing = ", ".join(f"{word(k)} {b:.3g}" for k, b in baselines.items())
    if not lost:
        text = f"{label} {value:.3g} beats all its baselines ({direction} is better: {listing})."
    else:
        lost_txt = ", ".join(f"{word(k)} ({baselines[k]:.3g})" for k in lost)
        text = (f"{label} {value:.3g} does NOT beat its baselines ({direction} is better): {lost_txt} "
                f"score{'s' if len(lost) == 1 else ''} as well or better, so this number alone does not show that "
                f"the method found anything.")
    return {"beats_baselines": not lost, "beaten_by": lost, "text": text}


def instability_summary(values: Mapping[str, float], label: str = "location instability",
                        margin: float = 0.0) -> dict:
    """:func:`verdict` for the output of :func:`instability_baselines` (``values["method"]`` vs the rest)."""
    base = {k: v for k, v in values.items() if k != "method"}
    return verdict(label, values["method"], base, lower_is_better=True, margin=margin,
                   names={"centre": "a unit fixed at the image centre", "mean_position":
                          "a unit fixed at its own mean position", "random": "random positions"})


def localization_summary(values: Mapping[str, float], label: str = "few-shot normalized distance",
                         margin: float = 0.0) -> dict:
    """:func:`verdict` for the output of :func:`localization_baselines`."""
    base = {k: v for k, v in values.items() if k != "method"}
    return verdict(label, values["method"], base, lower_is_better=True, margin=margin,
                   names={"image_blind": "the image-blind predictor (mean of the shots' landmarks)",
                          "centre": "the image centre", "random": "random positions"})
