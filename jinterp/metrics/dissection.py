"""Network-Dissection metrics: unit thresholds, unit×concept IoU, detectors, unique detectors, S¹/S².

Reference: Bau et al., *Network Dissection* (CVPR 2017) and UIBE's extended scores (spec
``uibe_and_metrics.md`` §4, §6). The pipeline, all streaming over batches so no data-set-sized array is held:

1. :func:`quantile_thresholds` — per unit the exact top-``q`` threshold ``T_k`` (``q = 0.005``: ``P(a_k ≥ T_k) ≈
   0.005`` over every spatial position of every image, at feature resolution). Exact: a running top-``k`` per unit
   merged batch by batch with ``lax.top_k`` (``k = ceil(q · N · h · w)``); ``T_k`` is the k-th largest value.
   NetDissect-Lite uses an approximate sketch, so its thresholds differ slightly.
2. :func:`tally` — per batch, activations are upsampled bilinearly to the label resolution (as two small
   interpolation matmuls), thresholded ``S > T`` (strict, as NetDissect-Lite), and intersected with each image's
   *present* concepts only (at most ``max_labels`` per image, padded), then scatter-added into global counters.
   Memory per batch is ``B × U × H × W`` float32 upsampled values and as many int8 masks (these go into an
   int32-accumulating matmul: exact integer counts), never ``N × U × H × W``.
3. :func:`iou` — ``IoU[u, c] = I[u, c] / (A[u, cat(c)] + G[c] − I[u, c])`` where ``G[c]`` counts concept c's
   pixels and ``A[u, g]`` counts unit u's active pixels over the images that count for category g, by the tally's
   ``category_rule`` (spec §4.1 step 3): ``"paper"`` (default; the paper's and QND's rule) — every image that carries
   some label of category g; ``"netdissect"`` (NetDissect-Lite's ``tally_job``, for bit-matching its outputs) — only
   the images where the unit's active region overlaps a pixel labelled with category g, or that carry an image-level
   label of g. Image-level labels (texture) cover the whole image.
   :func:`tally_chunked` builds the labels a chunk of images at a time (the counters are sums over images), so
   neither the activations nor the label maps of the whole data set are ever held.
4. :func:`label_units` — each unit's best concept (lowest index on ties), detectors (IoU > 0.04), unique detectors.
5. :func:`s1_s2` — UIBE's threshold-integrated scores in closed form: ``S¹ = Σ_i φ_i(c*_i, val)``,
   ``S² = Σ_{c∈{c*_i}} max_{i: c*_i=c} φ_i(c, val)`` with ``c*_i`` chosen on the train split.

Concepts are global integer ids ``1..L`` (0 = no label). :func:`concepts_from_label_maps` turns per-category label
maps (synthparts' ``object``/``part``/``color`` masks and ``texture`` image labels, or Broden planes) into that form.

Degenerate units (constant over the data set, e.g. dead ReLUs) get an empty mask and IoU 0 with every concept;
they are reported in ``DissectionResult.dead``. No metric is ever NaN: every division has a positive guard.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import ConfigError, DataError, ShapeError

IOU_DETECTOR_THRESHOLD = 0.04
TOP_QUANTILE = 0.005
CATEGORY_RULES = ("paper", "netdissect")  # which images count toward A[u, g] (module docstring, step 3)


# --------------------------------------------------------------------------------------------------------------
# Concepts


@dataclass(frozen=True)
class ConceptSet:
    """Concept labels in the global-id form the tally consumes.

    Attributes:
      pixel_labels: ``(N, P, H, W)`` int32 global concept ids per label plane (0 = none).
      image_labels: ``(N, Q)`` int32 global ids of image-level concepts (0 = none).
      names: ``L + 1`` names; ``names[0] = "-"``.
      category_of: ``(L + 1,)`` int32 category index per concept (entry 0 unused).
      categories: category names.
    """

    pixel_labels: np.ndarray
    image_labels: np.ndarray
    names: tuple[str, ...]
    category_of: np.ndarray
    categories: tuple[str, ...]

    @property
    def num_concepts(self) -> int:
        return len(self.names) - 1


def concepts_from_label_maps(pixel_maps: Mapping[str, np.ndarray], image_maps: Mapping[str, np.ndarray],
                             names: Mapping[str, Sequence[str]]) -> ConceptSet:
    """Build a :class:`ConceptSet` from per-category label maps.

    Args:
      pixel_maps: category -> ``(N, H, W)`` int labels, 0 = none, ``j ≥ 1`` = ``names[category][j - 1]``.
      image_maps: category -> ``(N,)`` int labels, same convention (e.g. synthparts' texture; use ``j + 1``).
      names: category -> concept names of that category.
    """
    planes, img_cols, all_names, cat_of, cats = [], [], ["-"], [0], []
    n = None
    unnamed = [c for c in list(pixel_maps) + list(image_maps) if c not in names]
    if unnamed:
        raise DataError(f"no concept names for category {unnamed}; give names[category] = the concept names of "
                        f"labels 1..k (names covers {sorted(names)}).")
    for g, (cat, maps) in enumerate(list(pixel_maps.items()) + list(image_maps.items())):
        maps = np.asarray(maps)
        want = 3 if cat in pixel_maps else 1
        if maps.ndim != want:
            form = "(N, H, W) per-pixel label maps" if want == 3 else "(N,) image-level labels"
            raise ShapeError(f"concept labels of category {cat!r} have shape {maps.shape}; expected {form}.")
        if maps.dtype.kind not in "iub":
            raise ShapeError(f"concept labels of category {cat!r} must be integers, got dtype {maps.dtype}; "
                             "round and cast them (labels are 0 = none or 1..k).")
        n = len(maps) if n is None else n
        if len(maps) != n:
            raise ShapeError(f"concept labels of category {cat!r} cover {len(maps)} images, others cover {n}; "
                             "give one label map per image for every category.")
        k = len(names[cat])
        if maps.size and (maps.min() < 0 or maps.max() > k):
            raise DataError(f"labels of category {cat!r} range over [{maps.min()}, {maps.max()}] but the category "
                            f"has {k} concepts (labels must be 0 = none or 1..{k}).")
        offset = len(all_names) - 1
        glob = np.where(maps > 0, maps + offset, 0).astype(np.int32)
        (planes if cat in pixel_maps else img_cols).append(glob)
        all_names += [f"{cat}:{name}" for name in names[cat]]
        cat_of += [g] * k
        cats.append(cat)
    if not planes:
        raise DataError("no pixel-level concept labels given; dissection needs at least one label-map category.")
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise ShapeError(f"pixel label maps have different shapes {sorted(shapes)}; resize them to one (H, W).")
    image_labels = np.stack(img_cols, 1) if img_cols else np.zeros((n, 0), np.int32)
    return ConceptSet(np.stack(planes, 1), image_labels, tuple(all_names), np.asarray(cat_of, np.int32), tuple(cats))


def _nearest(maps: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of ``(N, H, W)`` label maps (pixel-centre sampling, as ``jax.image.resize``)."""
    if size is None or tuple(maps.shape[1:]) == tuple(size):
        return maps
    if len(size) != 2 or min(size) < 1:
        raise ShapeError(f"label maps can only be resized to a positive (H, W), got {tuple(size)}")
    h, w = maps.shape[1:]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return maps[:, ys[:, None], xs[None, :]]


def concepts_from_dataset(ds, categories: Sequence[str] | None = None, size: tuple[int, int] | None = None,
                          exclude: Sequence[str] = ("slot",)) -> ConceptSet:
    """A :class:`ConceptSet` from a ``jinterp.data.Dataset`` (synthparts or ``broden:PATH``).

    Pixel categories come from ``ds.masks``, image-level ones from ``ds.image_labels``; ``ds.concepts[cat][v]``
    names value ``v`` and value 0 ("-", "none", "background", synthparts' "plain" texture) means no label, as the
    Dataset documents. ``categories`` picks a subset (default: every annotated category but ``exclude``; synthparts'
    ``slot`` is bookkeeping, not a concept). ``size`` nearest-resizes the label maps (NetDissect scores at half the
    image size: pass ``(H // 2, W // 2)``).
    """
    names_all = dict(ds.concepts)
    cats = [c for c in (categories or list(ds.masks) + list(ds.image_labels)) if c not in exclude]
    missing = [c for c in cats if c not in ds.masks and c not in ds.image_labels]
    if missing:
        raise DataError(f"{ds.name or 'the data set'} has no annotation category {missing}; it has "
                        f"{sorted(list(ds.masks) + list(ds.image_labels))}.")
    unnamed = [c for c in cats if c not in names_all]
    if unnamed:
        raise DataError(f"{ds.name or 'the data set'} names no concepts for category {unnamed} (Dataset.concepts).")
    pixel = {c: _nearest(np.asarray(ds.masks[c]), size) for c in cats if c in ds.masks}
    image = {c: np.asarray(ds.image_labels[c]) for c in cats if c not in ds.masks}
    names = {c: names_all[c][1:] for c in cats}
    return concepts_from_label_maps(pixel, image, names)


def downsample_labels(concepts: ConceptSet, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel concept membership on a feature grid: ``(N, h, w, L)`` bool, the label planes nearest-downsampled
    to ``size`` (IBD's training labels, spec §3.1) and image-level concepts covering every pixel."""
    n = len(concepts.pixel_labels)
    planes = np.stack([_nearest(concepts.pixel_labels[:, p], size) for p in range(concepts.pixel_labels.shape[1])], 1)
    out = np.zeros((n, *size, concepts.num_concepts + 1), bool)
    ii = np.arange(n)[:, None, None]
    yy, xx = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    for p in range(planes.shape[1]):
        out[ii, yy[None], xx[None], planes[:, p]] = True
    for q in range(concepts.image_labels.shape[1]):
        out[np.arange(n), :, :, concepts.image_labels[:, q]] = True
    return out[..., 1:]


# --------------------------------------------------------------------------------------------------------------
# Thresholds


def _flat_units(acts: jax.Array) -> jax.Array:
    """``(B, h, w, U)`` or ``(B, U)`` -> ``(U, B·h·w)``."""
    return acts.reshape(-1, acts.shape[-1]).T


@functools.partial(jax.jit, donate_argnums=0)
def _merge_top(top: jax.Array, acts: jax.Array) -> jax.Array:
    vals = jnp.concatenate([top, _flat_units(acts).astype(top.dtype)], axis=1)
    return jax.lax.top_k(vals, top.shape[1])[0]


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _merge_range(lo: jax.Array, hi: jax.Array, acts: jax.Array):
    flat = _flat_units(acts)
    return jnp.minimum(lo, flat.min(1)), jnp.maximum(hi, flat.max(1))


@dataclass(frozen=True)
class Thresholds:
    """Per-unit thresholds ``(U,)`` and a ``(U,)`` mask of units that are constant over the data (dead)."""

    value: np.ndarray
    dead: np.ndarray


def quantile_thresholds(batches: Iterable[np.ndarray], total_positions: int,
                        quantile: float = TOP_QUANTILE) -> Thresholds:
    """Exact top-``quantile`` threshold per unit, streamed.

    Args:
      batches: activations ``(B, h, w, U)`` (or ``(B, U)``) per batch.
      total_positions: ``N · h · w`` over the whole stream (fixes ``k``).
      quantile: upper tail mass (NetDissect: 0.005, i.e. the 0.995 quantile).
    """
    if not 0 < quantile < 1:
        raise ConfigError(f"quantile must lie in (0, 1), got {quantile} (NetDissect: 0.005)")
    if total_positions < 1:
        raise DataError(f"total_positions must be >= 1 (N·h·w of the streamed data), got {total_positions}")
    k = max(1, math.ceil(quantile * total_positions))
    top = lo = hi = finite = None
    seen = 0
    for acts in batches:
        acts = jnp.asarray(acts, jnp.float32)
        u = acts.shape[-1]
        if top is None:
            top = jnp.full((u, k), -jnp.inf, jnp.float32)
            lo, hi = jnp.full((u,), jnp.inf), jnp.full((u,), -jnp.inf)
            finite = jnp.bool_(True)
        elif u != top.shape[0]:
            raise ShapeError(f"activation batches disagree in their number of units ({top.shape[0]} then {u}); "
                             "stream one layer of one model.")
        finite = finite & _all_finite(acts)  # stays on device: checked once at the end
        top = _merge_top(top, acts)
        lo, hi = _merge_range(lo, hi, acts)
        seen += math.prod(acts.shape[:-1])
    if top is None:
        raise DataError("no activations given: the data set is empty; stream at least one batch of activations.")
    if seen != total_positions:
        raise DataError(f"total_positions={total_positions} but the batches held {seen} positions per unit; "
                        "pass N·h·w of the data actually streamed.")
    if not bool(finite):
        raise ShapeError(_NONFINITE)
    return Thresholds(np.asarray(top[:, -1]), np.asarray(lo >= hi))


_NONFINITE = ("the activations contain NaN or Inf, so thresholds and IoU would be meaningless; check the "
              "images (NaN pixels), the weights (a diverged model) and the preprocessing.")


@jax.jit
def _all_finite(acts: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(acts))


# --------------------------------------------------------------------------------------------------------------
# Tally


@dataclass(frozen=True)
class Tally:
    """Streaming counters. ``intersection (U, L+1)``, ``activated (U, G)``, ``label_count (L+1,)``."""

    intersection: jax.Array
    activated: jax.Array
    label_count: jax.Array


jax.tree_util.register_dataclass(Tally, data_fields=["intersection", "activated", "label_count"], meta_fields=[])


def empty_tally(num_units: int, num_concepts: int, num_categories: int) -> Tally:
    return Tally(jnp.zeros((num_units, num_concepts + 1), jnp.float32),
                 jnp.zeros((num_units, num_categories), jnp.float32),
                 jnp.zeros((num_concepts + 1,), jnp.float32))


def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` matrix of half-pixel-centred bilinear interpolation (``jax.image.resize`` without antialias)."""
    eye = np.eye(src, dtype=np.float32)
    return np.asarray(jax.image.resize(eye, (dst, src), "bilinear", antialias=False))


@functools.partial(jax.jit, static_argnames=("max_labels", "num_categories", "category_rule"), donate_argnums=0)
def _tally_batch(tally: Tally, acts, thresholds, dead, valid, pixel_labels, image_labels, category_of, rh, rw,
                 max_labels: int, num_categories: int, category_rule: str = "paper") -> Tally:
    b, _, h, w = pixel_labels.shape
    # Upsample as two interpolation matmuls: exact bilinear, no (B, H, W, U) float intermediate of resize.
    up = jnp.einsum("Hh,bhwu,Ww->buHW", rh, acts.astype(jnp.float32), rw, precision=jax.lax.Precision.HIGHEST)
    # Strict ">" as NetDissect-Lite: a unit that is 0 on >= 99.5 % of positions gets T = 0, and ">=" would mark
    # every pixel of every image active (a spurious texture/whole-image detector).
    on = (up > thresholds[None, :, None, None]) & ~dead[None, :, None, None] & valid[:, None, None, None]
    # 0/1 masks as int8 into an int32-accumulating matmul: exact by construction (integer arithmetic) and, on
    # XLA:CPU, ~2.5x faster than float32 operands (a quarter of the bytes of the (B, U, H·W) mask; issue #21).
    on = on.reshape(b, on.shape[1], h * w).astype(jnp.int8)

    # Present concepts per image, padded to max_labels (0 = pad); pixel and image-level labels together.
    flat = pixel_labels.reshape(b, -1, h * w)
    ids = jnp.concatenate([jnp.zeros((b, 1), flat.dtype), flat.reshape(b, -1), image_labels.astype(flat.dtype)],
                          axis=1)
    # Sorted distinct ids as a presence scatter + top_k (a vmapped jnp.unique took a third of the batch on CPU):
    # the key n_ids - id ranks smaller ids first; absent ids and the 0 label get key 0 and become padding.
    n_ids = tally.intersection.shape[1]
    seen = jnp.zeros((b, n_ids), bool).at[jnp.arange(b)[:, None], ids].set(True).at[:, 0].set(False)
    keys, order = jax.lax.top_k(jnp.where(seen, n_ids - jnp.arange(n_ids), 0), min(max_labels, n_ids))
    present = jnp.where(keys > 0, order, 0)
    if present.shape[1] < max_labels:
        present = jnp.pad(present, ((0, 0), (0, max_labels - present.shape[1])))
    present = jnp.where(valid[:, None], present, 0)
    # onehot[b, s, c]: pixel s of image b carries present concept c (any plane); image-level ones cover all pixels.
    pix_hit = jnp.any(flat[:, :, :, None] == present[:, None, None, :], axis=1)
    img_hit = jnp.any(image_labels[:, :, None] == present[:, None, :], axis=1)
    onehot = (pix_hit | img_hit[:, None, :]) & (present[:, None, :] > 0)

    # A last column of ones makes the same matmul count each unit's active pixels (a separate reduction over the
    # mask read it from memory a second time).
    onehot1 = jnp.concatenate([onehot, jnp.ones((b, h * w, 1), bool)], axis=2).astype(jnp.int8)
    inter1 = jnp.einsum("bus,bsc->buc", on, onehot1, preferred_element_type=jnp.int32).astype(jnp.float32)
    inter, n_on = inter1[..., :-1], inter1[..., -1]                      # (B, U, C), (B, U)
    counts = onehot.sum(1, dtype=jnp.int32).astype(jnp.float32)          # (B, C)
    # cat_slot[b, m, g]: present slot m of image b is a concept of category g (padding slots belong to none).
    cat_slot = ((category_of[present][:, :, None] == jnp.arange(num_categories)) & (present > 0)[:, :, None])
    cat_slot = cat_slot.astype(jnp.float32)
    if category_rule == "netdissect":
        # NetDissect-Lite: image b counts for (u, g) only where u's active pixels meet a label of category g
        # (an image-level label meets every active pixel).
        counts_for = jnp.einsum("bum,bmg->bug", (inter > 0).astype(jnp.float32), cat_slot) > 0
        activated = jnp.einsum("bu,bug->ug", n_on, counts_for.astype(jnp.float32))
    else:  # the paper / QND: image b counts for every category it carries a label of
        activated = jnp.einsum("bu,bg->ug", n_on, (cat_slot.sum(1) > 0).astype(jnp.float32))
    cols = present.reshape(-1)
    return Tally(
        tally.intersection.at[:, cols].add(inter.transpose(1, 0, 2).reshape(inter.shape[1], -1)),
        tally.activated + activated,
        tally.label_count.at[cols].add(counts.reshape(-1)),
    )


def tally(act_batches: Iterable[np.ndarray], concepts: ConceptSet, thresholds: Thresholds,
          batch_size: int, max_labels: int = 16, category_rule: str = "paper") -> Tally:
    """Accumulate intersection / activation / label counters over the data set.

    Args:
      act_batches: activations ``(B, h, w, U)`` per batch, in the order of ``concepts``' images; every batch but
        the last has ``batch_size`` images.
      concepts: the labels of the same images.
      thresholds: from :func:`quantile_thresholds`.
      batch_size: the fixed compiled batch (the last batch is padded and masked).
      max_labels: the most distinct concepts one image carries (an image with more raises an error).
      category_rule: ``"paper"`` or ``"netdissect"``: which images count toward a unit's activation in the IoU
        denominator (module docstring, step 3).
    """
    _check_category_rule(category_rule)
    if np.ndim(concepts.pixel_labels) != 4 or np.ndim(concepts.image_labels) != 2:
        raise ShapeError(f"concept labels must be pixel_labels (N, P, H, W) and image_labels (N, Q); got "
                         f"{np.shape(concepts.pixel_labels)} and {np.shape(concepts.image_labels)}. Build them with "
                         "concepts_from_label_maps or concepts_from_dataset.")
    if len(concepts.image_labels) != len(concepts.pixel_labels):
        raise ShapeError(f"image_labels cover {len(concepts.image_labels)} images, pixel_labels "
                         f"{len(concepts.pixel_labels)}; give labels for the same images.")
    n, _, h, w = concepts.pixel_labels.shape
    need = _max_distinct(concepts)
    if need > max_labels:
        raise DataError(f"an image carries {need} distinct concepts but max_labels={max_labels}; raise max_labels.")
    th = jnp.asarray(thresholds.value, jnp.float32)
    dead = jnp.asarray(thresholds.dead)
    cat_of = jnp.asarray(concepts.category_of)
    state = None
    start = 0
    for acts in act_batches:
        acts = np.asarray(acts)
        if acts.ndim != 4:
            raise ShapeError(f"dissection needs spatial activations (B, h, w, U); got shape {acts.shape}.")
        m = len(acts)
        if start + m > n:
            raise ShapeError(f"activations cover more images than the concept labels ({n}); pass matching data.")
        if acts.shape[-1] != len(th):
            raise ShapeError(f"activations have {acts.shape[-1]} units but thresholds {len(th)}; compute the "
                             "thresholds and the tally on the same layer.")
        if not np.all(np.isfinite(acts)):
            raise ShapeError(_NONFINITE)
        if state is None:
            state = empty_tally(acts.shape[-1], concepts.num_concepts, len(concepts.categories))
            rh, rw = _bilinear_matrix(acts.shape[1], h), _bilinear_matrix(acts.shape[2], w)
        pl = concepts.pixel_labels[start:start + m]
        il = concepts.image_labels[start:start + m]
        valid = np.arange(batch_size) < m
        state = _tally_batch(state, _pad(acts, batch_size), th, dead, valid, _pad(pl, batch_size),
                             _pad(il, batch_size), cat_of, rh, rw, max_labels=max_labels,
                             num_categories=len(concepts.categories), category_rule=category_rule)
        start += m
    if state is None:
        raise DataError("no activations given: the data set is empty; stream at least one batch of activations.")
    if start != n:
        raise ShapeError(f"activations cover {start} images but the concept labels {n}; pass matching data.")
    return state


def _check_category_rule(rule: str) -> None:
    if rule not in CATEGORY_RULES:
        raise ConfigError(f"category_rule {rule!r} unknown; use one of {list(CATEGORY_RULES)} (\"paper\": every "
                          "image carrying the category counts; \"netdissect\": NetDissect-Lite's overlap rule)")


def tally_chunked(act_batches: Iterable[np.ndarray], concepts_of: Callable[[int, int], ConceptSet], n: int,
                  thresholds: Thresholds, batch_size: int, chunk: int = 512, max_labels: int = 16,
                  category_rule: str = "paper") -> tuple[Tally, ConceptSet]:
    """:func:`tally` with the concept labels built ``chunk`` images at a time, so no data-set-sized label array exists.

    The counters are sums over images, so the sum of the chunk tallies is the tally of the whole set (exactly: the
    counts are integers, held exactly in float32 below 2**24 per entry).

    Args:
      act_batches: activations ``(B, h, w, U)`` per batch over all ``n`` images in order (every batch but the last
        has ``batch_size`` images); consumed once.
      concepts_of: ``(start, stop) -> ConceptSet`` of images ``start..stop-1``; every chunk must give the same
        concept names and categories (true of ``broden_concepts`` and ``concepts_from_dataset`` on one data set).
      n: number of images.
      chunk: images per label chunk, rounded down to whole batches (at least one).
    Returns:
      ``(tally, the first chunk's ConceptSet)`` — pass the latter to :func:`iou` (it only reads the names and
      categories, which every chunk shares).
    """
    _check_category_rule(category_rule)
    if n < 1:
        raise DataError("no images to tally: the data set is empty; stream at least one batch of activations.")
    chunk = max(1, chunk // batch_size) * batch_size  # whole batches per chunk: chunk edges are batch edges
    stream = iter(act_batches)
    total = head = None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        concepts = concepts_of(start, stop)
        if head is None:
            head = concepts
        elif concepts.names != head.names or concepts.categories != head.categories or not np.array_equal(
                concepts.category_of, head.category_of):
            raise DataError(f"the concept labels of images {start}..{stop - 1} name other concepts than those of the "
                            "first chunk; build every chunk from one data set (one label table).")
        first = next(stream, None)
        if first is None:
            raise ShapeError(f"activations cover {start} images but the concept labels {n}; pass matching data.")
        batches = itertools.chain([first], itertools.islice(stream, -(-(stop - start) // batch_size) - 1))
        part = tally(batches, concepts, thresholds, batch_size, max_labels, category_rule)
        total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
    if next(stream, None) is not None:
        raise ShapeError(f"activations cover more images than the concept labels ({n}); pass matching data.")
    return total, head


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) == size:
        return a
    if len(a) > size:
        raise ShapeError(f"a batch of {len(a)} exceeds batch_size={size}; stream batches of at most batch_size "
                         "images (or raise batch_size).")
    return np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


def _max_distinct(concepts: ConceptSet) -> int:
    n = len(concepts.pixel_labels)
    ids = np.concatenate([concepts.pixel_labels.reshape(n, -1), concepts.image_labels], 1)
    return max((len(np.unique(r[r > 0])) for r in ids), default=0)


def iou(t: Tally, concepts: ConceptSet) -> np.ndarray:
    """``(U, L)`` IoU of every unit with every concept (column j is concept id j + 1). Never NaN."""
    if t.intersection.shape[1] != concepts.num_concepts + 1 or t.activated.shape[1] != len(concepts.categories):
        raise ShapeError(f"the tally counts {t.intersection.shape[1] - 1} concepts in {t.activated.shape[1]} "
                         f"categories but the concept set has {concepts.num_concepts} in {len(concepts.categories)}; "
                         "pass the concept set the tally was made with.")
    inter = np.asarray(t.intersection)[:, 1:]
    act = np.asarray(t.activated)[:, concepts.category_of[1:]]
    lab = np.asarray(t.label_count)[1:]
    union = act + lab[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Labelling and scores


@dataclass(frozen=True)
class DissectionResult:
    """Per-unit labels and the summary counts."""

    best_concept: np.ndarray   # (U,) concept column index (id - 1)
    best_iou: np.ndarray       # (U,)
    is_detector: np.ndarray    # (U,) bool, IoU > threshold
    num_detectors: int
    num_unique: int
    dead: np.ndarray           # (U,) bool

    def summary(self) -> dict:
        return {"detectors": self.num_detectors, "unique_detectors": self.num_unique,
                "mean_best_iou": float(self.best_iou.mean()) if self.best_iou.size else 0.0,
                "dead_units": int(self.dead.sum())}


def label_units(iou_table: np.ndarray, dead: np.ndarray | None = None,
                threshold: float = IOU_DETECTOR_THRESHOLD) -> DissectionResult:
    """NetDissect labelling: each unit's top concept; a detector if its IoU exceeds ``threshold`` (0.04)."""
    iou_table = np.asarray(iou_table)
    if iou_table.ndim != 2 or not np.all(np.isfinite(iou_table)):
        raise ShapeError(f"the IoU table must be a finite (units, concepts) array, got shape {iou_table.shape}"
                         + ("" if iou_table.ndim != 2 else " with NaN/Inf entries") + "; compute it with iou().")
    best = np.argmax(iou_table, axis=1)           # argmax takes the lowest index on ties
    best_iou = iou_table[np.arange(len(best)), best]
    det = best_iou > threshold
    dead = np.zeros(len(best), bool) if dead is None else np.asarray(dead)
    return DissectionResult(best, best_iou, det, int(det.sum()), int(len(np.unique(best[det]))), dead)


def s1_s2(iou_train: np.ndarray, iou_val: np.ndarray) -> tuple[float, float]:
    """UIBE's S¹ and S² (closed forms of the threshold integrals; spec §4.2).

    Each direction is labelled on the train split (``c*_i = argmax_c IoU_train``), then scored on the val split.
    """
    iou_train, iou_val = np.asarray(iou_train), np.asarray(iou_val)
    if iou_train.shape != iou_val.shape:
        raise ShapeError(f"train and val IoU tables differ in shape: {iou_train.shape} vs {iou_val.shape}.")
    if iou_train.ndim != 2 or not (np.all(np.isfinite(iou_train)) and np.all(np.isfinite(iou_val))):
        raise ShapeError(f"IoU tables must be finite (units, concepts) arrays, got shape {iou_train.shape}"
                         + ("" if iou_train.ndim != 2 else " with NaN/Inf entries") + "; compute them with iou().")
    best = np.argmax(iou_train, axis=1)
    phi = np.clip(iou_val[np.arange(len(best)), best], 0.0, 1.0)
    s1 = float(phi.sum())
    s2 = float(sum(phi[best == c].max() for c in np.unique(best)))
    return s1, s2


def dissect(act_batches_fn, concepts: ConceptSet, batch_size: int, quantile: float = TOP_QUANTILE,
            max_labels: int = 16, category_rule: str = "paper") -> tuple[np.ndarray, DissectionResult]:
    """Thresholds, tally, IoU and labels in one call.

    Args:
      act_batches_fn: a zero-argument callable returning a fresh iterator of ``(B, h, w, U)`` activation
        batches (it is streamed twice: once for thresholds, once for the tally).
    Returns:
      ``(iou_table (U, L), DissectionResult)``.
    """
    first = next(iter(act_batches_fn()), None)
    if first is None:
        raise DataError("no activations given: the data set is empty; stream at least one batch of activations.")
    first = np.asarray(first)
    if first.ndim != 4:
        raise ShapeError(f"dissection needs spatial activations (B, h, w, U); got shape {first.shape}.")
    n = len(concepts.pixel_labels)
    th = quantile_thresholds(act_batches_fn(), n * first.shape[1] * first.shape[2], quantile)
    table = iou(tally(act_batches_fn(), concepts, th, batch_size, max_labels, category_rule), concepts)
    return table, label_units(table, th.dead)
