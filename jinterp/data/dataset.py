"""The one in-memory form every reader returns.

A :class:`Dataset` is a bundle of host NumPy arrays: images in storage form (uint8 NHWC), integer class labels,
and optional dense annotations (per-pixel label maps, image-level labels, landmarks). Readers build one, the
pipeline (:mod:`jinterp.data.pipeline`) batches it; methods and metrics never see file formats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jinterp.data.lazy import LazyArray
from jinterp.errors import DataError, ShapeError


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image data set held in host memory.

    Attributes:
      images: uint8 ``(N, H, W, C)``, C in {1, 3}; a NumPy array or a :class:`~jinterp.data.lazy.LazyArray`
        (decoded per batch; also allowed for ``masks`` and ``mask_planes``).
      labels: int32 ``(N,)`` class ids in ``[0, num_classes)``.
      num_classes: number of classes.
      class_names: ``num_classes`` names.
      masks: per-pixel label maps ``name -> (N, H, W)`` integer arrays (0 = unlabelled). Stored as int32 or a
        narrower integer type (uint8/uint16 keep large sets small); batches always carry int32.
      image_labels: image-level labels ``name -> (N,)`` int32 (e.g. synthparts' ``texture``).
      mask_planes: every label plane of a multi-plane pixel category, ``name -> (N, P, H, W)`` integers in the
        code space of ``masks[name]`` (0 = unlabelled; planes where a pixel carries several labels, e.g. Broden's
        overlapping ``part`` planes). ``masks[name]``, when both exist, is the first labelled plane per pixel.
      image_label_sets: multi-label image-level categories, ``name -> (N, Q)`` int32 codes, 0-padded (e.g. Broden
        cells listing several textures). ``image_labels[name]``, when both exist, is the first code of each row.
      landmarks: float32 ``(N, P, 2)`` as ``(x, y)`` pixel coordinates (pixel ``j`` spans ``[j, j+1)``).
      landmark_visible: bool ``(N, P)``; required with ``landmarks``.
      concepts: concept names per annotation category, ``name -> names`` where ``names[v]`` is the meaning of
        value ``v`` in ``masks[name]`` / ``image_labels[name]`` (index 0 is the "none" entry).
      name: a short description (the spec it was loaded from).
      meta: free-form extra information (split, source paths, label numbering of the source). The entries named
        in :data:`PER_EXAMPLE_META` (e.g. VOC's ``objects``, CUB's ``image_ids``) hold one item per example, in
        example order; :meth:`take` subsets them with the examples.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    masks: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    image_labels: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    landmarks: np.ndarray | None = None
    landmark_visible: np.ndarray | None = None
    concepts: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    name: str = ""
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mask_planes: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    image_label_sets: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # Normalize types first (frozen dataclass: go through object.__setattr__), then validate, so that
        # every Dataset in the program satisfies the documented invariants.
        set_ = lambda k, v: object.__setattr__(self, k, v)
        images = self.images if isinstance(self.images, LazyArray) else np.asarray(self.images)
        _check_layout(images, self.name)
        if images.ndim == 3 and not isinstance(images, LazyArray):  # grayscale without a channel axis
            images = images[..., None]
        set_("images", images)
        set_("labels", _as_int32(self.labels, "labels"))
        set_("class_names", tuple(str(c) for c in self.class_names))
        set_("masks", {k: _array(v) for k, v in dict(self.masks).items()})
        set_("mask_planes", {k: _array(v) for k, v in dict(self.mask_planes).items()})
        set_("image_label_sets", {k: _as_int32(v, f"image_label_sets[{k!r}]")
                                  for k, v in dict(self.image_label_sets).items()})
        set_("image_labels", {k: _as_int32(v, f"image_labels[{k!r}]") for k, v in dict(self.image_labels).items()})
        set_("concepts", {k: tuple(str(c) for c in v) for k, v in dict(self.concepts).items()})
        set_("meta", dict(self.meta))
        if self.landmarks is not None:
            set_("landmarks", np.asarray(self.landmarks, np.float32))
        if self.landmark_visible is not None:
            set_("landmark_visible", np.asarray(self.landmark_visible, bool))
        _validate(self)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(self.images.shape[1:])

    def take(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The examples at ``indices`` (any int array or sequence, in that order) as a new Dataset."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise ShapeError(f"take(): indices must lie in [0, {len(self)}) for {self.name or 'this dataset'}")
        return dataclasses.replace(
            self,
            images=_take(self.images, idx),
            labels=self.labels[idx],
            masks={k: _take(v, idx) for k, v in self.masks.items()},
            mask_planes={k: _take(v, idx) for k, v in self.mask_planes.items()},
            image_label_sets={k: v[idx] for k, v in self.image_label_sets.items()},
            image_labels={k: v[idx] for k, v in self.image_labels.items()},
            landmarks=None if self.landmarks is None else self.landmarks[idx],
            landmark_visible=None if self.landmark_visible is None else self.landmark_visible[idx],
            meta={k: _take_meta(v, idx) if k in PER_EXAMPLE_META and len(v) == len(self) else v
                  for k, v in self.meta.items()},
        )

    def __repr__(self) -> str:
        extras = [f"masks={sorted(self.masks)}"] if self.masks else []
        extras += [f"image_labels={sorted(self.image_labels)}"] if self.image_labels else []
        extras += [f"landmarks={self.landmarks.shape[1]}"] if self.landmarks is not None else []
        return (
            f"Dataset({self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}{''.join(', ' + e for e in extras)})"
        )


def _array(a):
    """A NumPy array, or a :class:`LazyArray` kept lazy (decoded per batch)."""
    return a if isinstance(a, LazyArray) else np.asarray(a)


# meta entries with one item per example (written by the readers): subset by Dataset.take with the examples, so that
# e.g. CSG's localization on voc: reads the boxes of the images it evaluates.
PER_EXAMPLE_META = ("images", "image_ids", "ids", "files", "objects")


def _take_meta(v, idx: np.ndarray):
    return v[idx] if isinstance(v, np.ndarray) else [v[int(i)] for i in idx]


def _take(a, idx: np.ndarray):
    return a.subset(idx) if isinstance(a, LazyArray) else a[idx]


def _as_int32(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise ShapeError(f"{what} must be integers, got dtype {a.dtype}; cast whole-number labels with "
                         ".astype(np.int32)")
    return a.astype(np.int32, copy=False)


def _check_layout(images: np.ndarray, name: str) -> None:
    """Recognizes the two layouts users pass by mistake: one image without a batch axis, and NCHW batches."""
    where = f" in dataset {name!r}" if name else ""
    if images.ndim == 3 and images.shape[-1] in (3, 4) and images.shape[0] > 4 and images.shape[1] > 4:
        raise ShapeError(f"images of shape {images.shape} look like one (H, W, C) image without a batch axis{where}; "
                         "give a batch (N, H, W, C), e.g. image[None]")
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        raise ShapeError(f"images of shape {images.shape} are NCHW (channels first){where}; jinterp takes NHWC: "
                         "pass images.transpose(0, 2, 3, 1)")


def _validate(ds: Dataset) -> None:
    where = f" in dataset {ds.name!r}" if ds.name else ""
    im = ds.images
    if im.ndim != 4 or im.shape[-1] not in (1, 3):
        raise ShapeError(f"images must be (N, H, W, C) with C in {{1, 3}}, got shape {im.shape}{where}")
    if im.dtype != np.uint8:
        raise ShapeError(f"images must be uint8 (storage form), got {im.dtype}{where}; convert with "
                         "np.clip(x * 255, 0, 255).round().astype(np.uint8) for [0, 1] floats")
    n, h, w = im.shape[:3]
    if n == 0:
        raise DataError(f"dataset is empty{where}: it holds no images; check the path, split and filters")
    if ds.labels.shape != (n,):
        raise ShapeError(f"labels must have shape ({n},) to match {n} images, got {ds.labels.shape}{where}")
    if ds.num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {ds.num_classes}{where}")
    if len(ds.class_names) != ds.num_classes:
        raise DataError(f"{len(ds.class_names)} class_names for num_classes={ds.num_classes}{where}; give one "
                        "name per class")
    lo, hi = int(ds.labels.min()), int(ds.labels.max())
    if lo < 0 or hi >= ds.num_classes:
        raise DataError(f"labels must lie in [0, {ds.num_classes}), found range [{lo}, {hi}]{where}")
    for k, m in ds.masks.items():
        if m.shape != (n, h, w):
            raise ShapeError(f"mask {k!r} has shape {m.shape}, but the images need ({n}, {h}, {w}){where}")
        if m.dtype.kind not in "iu" or m.dtype.itemsize > 4:
            raise ShapeError(f"mask {k!r} must be an integer label map of at most 32 bits, got {m.dtype}{where}")
    for k, m in ds.mask_planes.items():
        if m.ndim != 4 or m.shape[0] != n or m.shape[2:] != (h, w) or m.dtype.kind not in "iu":
            raise ShapeError(f"mask_planes[{k!r}] must be integer (N={n}, P, {h}, {w}), got {m.dtype} {m.shape}{where}")
    for k, v in ds.image_label_sets.items():
        if v.ndim != 2 or v.shape[0] != n:
            raise ShapeError(f"image_label_sets[{k!r}] must be (N={n}, Q), got {v.shape}{where}")
    for k, v in ds.image_labels.items():
        if v.shape != (n,):
            raise ShapeError(f"image_labels[{k!r}] has shape {v.shape}, expected ({n},){where}")
    if (ds.landmarks is None) != (ds.landmark_visible is None):
        raise ShapeError(f"landmarks and landmark_visible must be given together{where}")
    if ds.landmarks is not None:
        lm, vis = ds.landmarks, ds.landmark_visible
        if lm.ndim != 3 or lm.shape[0] != n or lm.shape[2] != 2:
            raise ShapeError(f"landmarks must be (N={n}, P, 2), got {lm.shape}{where}")
        if vis.shape != lm.shape[:2]:
            raise ShapeError(f"landmark_visible must be {lm.shape[:2]}, got {vis.shape}{where}")
