"""One parser for ``--data`` strings: ``kind[:ARG][:key=value,key=value,...]``.

Reader options that every annotated-data reader understands (applied here when the reader does not apply them
itself, see :func:`apply_common_options`):

    split=train|test|val|all     overrides the split the caller asked for
    size=224 | size=224x160      resize to (H, W) (bilinear images, nearest masks, landmarks scaled)
    max_images=N                 keep the first N examples (file order, after the class filter)
    classes=a+b+c                keep these classes ('+'-separated names, or 0-based class ids), relabelled 0..k-1
    crop=box                     crop to the annotated bounding box (cub, voc) before resizing
    lazy=1                       decode images (and masks) per batch, for sets larger than RAM (folder, broden,
                                 cub, tfds)
    part_merge=coarse            pascal_part only: merge sided/numbered part names (jinterp.data.voc.COARSE_PARTS)

Example: ``cub:/data/CUB_200_2011:crop=box,size=224,classes=1+2+3``. A path may itself hold ':' as long as the
last ':'-separated segment does not hold '=' (then that segment is the option list).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jinterp.data.lazy import is_lazy
from jinterp.errors import ConfigError

COMMON_OPTIONS = ("split", "size", "max_images", "classes", "crop", "lazy")
# Options only one reader understands (passed to it as keywords).
READER_OPTIONS = {"pascal_part": ("part_merge",)}


def split_spec(spec: str) -> tuple[str, str, dict]:
    """``"cub:PATH:size=224,crop=box"`` -> ``("cub", "PATH", {"size": (224, 224), "crop": "box"})``.

    synthparts keeps its own ``synthparts:key=value`` form (the whole argument is options), returned unparsed.
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "synthparts":
        return kind, arg, {}
    head, sep, tail = arg.rpartition(":")
    if sep and "=" in tail:
        return kind, head, parse_options(tail, kind)
    return kind, arg, {}


def parse_options(text: str, kind: str) -> dict:
    """``"size=224,crop=box"`` -> typed options; unknown keys and bad values are a one-line ConfigError."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not key:
            raise ConfigError(f"{kind}: reader option {item!r} must be key=value (e.g. {kind}:PATH:size=224)")
        valid = COMMON_OPTIONS + READER_OPTIONS.get(kind, ())
        if key not in valid:
            raise ConfigError(f"{kind}: unknown reader option {key!r}; valid options are {list(valid)}")
        out[key] = _convert(key, val, kind)
    return out


def _convert(key: str, val: str, kind: str):
    if key == "size":
        m = re.fullmatch(r"(\d+)(?:x(\d+))?", val)
        if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < 1):
            raise ConfigError(f"{kind}: size={val!r} must be a positive H or HxW (e.g. size=224 or size=224x160)")
        return (int(m.group(1)), int(m.group(2) or m.group(1)))
    if key == "max_images":
        if not val.isdigit() or int(val) < 1:
            raise ConfigError(f"{kind}: max_images={val!r} must be a positive integer (e.g. max_images=500)")
        return int(val)
    if key == "classes":
        names = tuple(c.strip() for c in val.split("+") if c.strip())
        if not names:
            raise ConfigError(f"{kind}: classes= needs '+'-separated class names or ids (e.g. classes=0+3+7)")
        return names
    if key == "crop":
        if val not in ("box", "none"):
            raise ConfigError(f"{kind}: crop={val!r} unknown; use crop=box (crop to the bounding box) or crop=none")
        return val
    if key == "part_merge":
        if val not in ("coarse", "none"):
            raise ConfigError(f"{kind}: part_merge={val!r} unknown; use part_merge=coarse (or pass a dict through "
                              "the Python API)")
        return None if val == "none" else val
    if key == "lazy":
        if val.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{kind}: lazy={val!r} must be 1 or 0 (true/false)")
        return val.lower() in ("1", "true", "yes")
    if val not in ("train", "test", "val", "validation", "all"):
        raise ConfigError(f"{kind}: split={val!r} unknown; use train, test, val or all")
    return val


def class_ids(wanted, class_names, kind: str) -> np.ndarray:
    """0-based ids of the ``classes=`` entries: a class name, else a 0-based id."""
    ids = []
    for w in wanted:
        w = str(w)
        if w in class_names:
            ids.append(class_names.index(w))
        elif w.lstrip("-").isdigit() and 0 <= int(w) < len(class_names):
            ids.append(int(w))
        else:
            raise ConfigError(f"{kind}: class {w!r} is neither a class name nor an id in [0, {len(class_names)}); "
                              f"the first names are {list(class_names[:5])}")
    return np.asarray(sorted(set(ids)), np.int64)


def resize_example(image: np.ndarray, size, masks=(), landmarks=None):
    """One example to ``size=(H, W)``: image bilinear (Pillow), masks nearest, landmarks ``(P, 2)`` (x, y) scaled.

    Landmarks use the Dataset convention (pixel ``j`` spans ``[j, j+1)``), so scaling by ``W'/W``, ``H'/H`` is exact.
    """
    from PIL import Image

    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image, list(masks), landmarks
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((tw, th), Image.BILINEAR), np.uint8).reshape(th, tw, *image.shape[2:])
    ys = np.minimum(((np.arange(th) + 0.5) * h / th).astype(int), h - 1)
    xs = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(int), w - 1)
    new_masks = [m[..., ys[:, None], xs[None, :]] for m in masks]
    if landmarks is not None:
        landmarks = np.asarray(landmarks, np.float32) * np.asarray([tw / w, th / h], np.float32)
    return out, new_masks, landmarks


def apply_common_options(ds, options: dict, handled=()):
    """Applies ``classes``, ``max_images`` and ``size`` to a loaded Dataset, except those the reader ``handled``.

    ``crop`` must be handled by the reader (only annotated sets with boxes can crop): elsewhere it is an error.
    """
    kind = ds.name.split(":")[0] or "data"
    if "crop" in options and "crop" not in handled and options["crop"] != "none":
        raise ConfigError(f"{kind}: crop=box needs bounding boxes; only cub and voc have them")
    if is_lazy(ds.images) and "size" in options and "size" not in handled:
        raise ConfigError(f"{kind}: resizing a lazily decoded set is not supported; drop size= or lazy=1")
    if "classes" in options and "classes" not in handled:
        keep = class_ids(options["classes"], ds.class_names, kind)
        idx = np.flatnonzero(np.isin(ds.labels, keep))
        if idx.size == 0:
            raise ConfigError(f"{kind}: no examples of classes {list(options['classes'])} in this split")
        remap = np.full(ds.num_classes, -1, np.int32)
        remap[keep] = np.arange(len(keep))
        ds = ds.take(idx)
        ds = dataclasses.replace(ds, labels=remap[ds.labels], num_classes=len(keep),
                                 class_names=tuple(ds.class_names[k] for k in keep))
    if "max_images" in options and "max_images" not in handled:
        ds = ds.take(np.arange(min(options["max_images"], len(ds))))
    if "size" in options and "size" not in handled and tuple(ds.images.shape[1:3]) != options["size"]:
        ds = resize_dataset(ds, options["size"])
    return ds


def resize_dataset(ds, size):
    """Every example of ``ds`` resized to ``size=(H, W)`` (see :func:`resize_example`)."""
    mask_names = list(ds.masks)
    plane_names = list(getattr(ds, "mask_planes", {}))
    imgs, masks, planes, lms = [], {k: [] for k in mask_names}, {k: [] for k in plane_names}, []
    for i in range(len(ds)):
        lm = None if ds.landmarks is None else ds.landmarks[i]
        im, out, lm = resize_example(ds.images[i], size, [ds.masks[k][i] for k in mask_names]
                                     + [ds.mask_planes[k][i] for k in plane_names], lm)
        imgs.append(im)
        for k, m in zip(mask_names, out[:len(mask_names)], strict=True):
            masks[k].append(m)
        for k, m in zip(plane_names, out[len(mask_names):], strict=True):
            planes[k].append(m)
        lms.append(lm)
    extra = {"mask_planes": {k: np.stack(v) for k, v in planes.items()}} if plane_names else {}
    return dataclasses.replace(ds, images=np.stack(imgs), masks={k: np.stack(v) for k, v in masks.items()},
                               landmarks=None if ds.landmarks is None else np.stack(lms), **extra)
