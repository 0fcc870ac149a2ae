"""Readers: every supported source into one :class:`~jinterp.data.dataset.Dataset`.

Entry point :func:`load`. Spec strings::

    synthparts                                  generated in memory (no files)
    synthparts:size=64,n_train=10000,n_test=2000,seed=0,preset=default,<any SynthPartsConfig field>=...
    mnist:PATH | fashion_mnist:PATH             a folder of idx(.gz) files, or an .npz (see npz)
    cifar10:PATH | cifar100:PATH                the python-pickle batches folder (cifar-10-batches-py, cifar-100-python)
    npz:PATH                                    train_x/train_y/test_x/test_y, or x/y (single split, see below)
    folder:PATH                                 PATH/<class>/<image> or PATH/{train,test}/<class>/<image>
    tfds:NAME[:DATA_DIR]                        a prepared TFDS data set read with tfds.data_source
    broden:PATH                                 a Broden-format concept data set (NetDissect layout; data/broden.py)
    cub:PATH                                    CUB-200-2011 (images.txt, parts/part_locs.txt, ...; data/cub.py)
    voc:PATH                                    PASCAL VOC (JPEGImages/, Annotations/*.xml, ImageSets/Main; data/voc.py)
    pascal_part:PATH                            VOC JPEGImages/ + Pascal-Part Annotations_Part/*.mat (data/voc.py)

Every kind but synthparts also takes reader options after a last ':' (``cub:PATH:crop=box,size=224``; see
:mod:`jinterp.data.spec`: split, size, max_images, classes, crop).

Single-split sources (an .npz with only ``x``/``y``, an image folder without train/test subfolders) are split
deterministically, with no randomness: example ``i`` is in "test" when ``i % 5 == 4``, else in "train"
(an 80/20 split that keeps every class's order and proportions); ``split="all"`` returns everything.
"""

from __future__ import annotations

import ast
import gzip
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from jinterp.data import synthparts as sp
from jinterp.data.broden import read_broden
from jinterp.data.cub import read_cub
from jinterp.data.dataset import Dataset
from jinterp.data.lazy import LazyArray
from jinterp.data.spec import COMMON_OPTIONS, READER_OPTIONS, apply_common_options, split_spec
from jinterp.data.voc import read_pascal_part, read_voc
from jinterp.errors import ConfigError, DataError, MissingFileError, ShapeError

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPLITS = ("train", "test", "all")


def with_synthparts_defaults(spec: str, **options) -> str:
    """``spec`` with synthparts options added where the spec does not set them itself (``None`` values skipped);
    other sources are returned unchanged. How a method's config (image size, split sizes) reaches the generator:

        with_synthparts_defaults("synthparts:n_train=50", size=64, n_train=800) == "synthparts:n_train=50,size=64"
    """
    kind, _, arg = spec.partition(":")
    if kind != "synthparts":
        return spec
    opts = [o for o in arg.split(",") if o.strip()]
    given = {o.split("=", 1)[0].strip() for o in opts}
    opts += [f"{k}={v}" for k, v in options.items() if v is not None and k not in given]
    return "synthparts:" + ",".join(opts) if opts else "synthparts"


def load(spec: str, split: str = "train", **kw) -> Dataset:
    """Loads a data set from a spec string (see the module docstring) into memory.

    Args:
      spec: ``"kind"``, ``"kind:ARG"`` or ``"kind:ARG:key=value,..."`` (reader options, :mod:`jinterp.data.spec`);
        synthparts takes ``synthparts:key=value,...``.
      split: ``"train"``, ``"test"`` or ``"all"`` (``"val"`` = ``"test"``); a ``split=`` option in the spec wins.
      **kw: reader options (e.g. ``n_train=``, ``seed=`` for synthparts, ``label="coarse"`` for cifar100,
        ``size=(H, W)``, ``max_images=``, ``classes=``, ``crop="box"``, ``image_key=`` for tfds).
    Returns:
      A validated :class:`Dataset`.
    """
    kind, arg, options = split_spec(spec)
    if kind not in _READERS:
        raise ConfigError(f"unknown data spec {spec!r}: the kind must be one of {sorted(_READERS)}")
    if "split" in options and options["split"] != split:
        # Programs load "train" and "test" from one spec: a split= in it makes both the same set. Say so.
        warnings.warn(f"{kind}: the spec's split={options['split']} replaces the requested {split!r} split",
                      stacklevel=2)
    split = options.pop("split", split)
    if split not in (*_SPLITS, "val", "validation"):
        raise ConfigError(f"unknown split {split!r}; use 'train', 'test' or 'all'")
    if kind != "synthparts":  # synthparts has options of the same names (size=) with its own meaning
        options.update({k: kw.pop(k) for k in COMMON_OPTIONS if k in kw and k != "split"})
    if "size" in options and isinstance(options["size"], int | np.integer):
        options["size"] = (int(options["size"]), int(options["size"]))
    handled = _NATIVE_OPTIONS.get(kind, ())
    if options.get("lazy") and "lazy" not in handled:
        raise ConfigError(f"{kind}: lazy decoding is available for folder, broden, cub and tfds; drop lazy=1")
    options = {k: v for k, v in options.items() if k != "lazy" or k in handled}
    native = {k: v for k, v in options.items() if k in handled}
    native.update({k: options.pop(k) for k in READER_OPTIONS.get(kind, ()) if k in options})
    ds = _READERS[kind](arg, split, **native, **kw)
    return apply_common_options(ds, options, handled) if options else ds


# ------------------------------------------------------------------------------------------------ helpers
def _path(arg: str, kind: str, what: str) -> Path:
    if not arg:
        raise ConfigError(f"the data spec needs a path: '{kind}:PATH' where PATH is {what}")
    p = Path(os.path.expanduser(arg))
    if not p.exists():
        raise MissingFileError(f"{kind}: {p} does not exist; put {what} there")
    return p


def _split_rule(n: int, split: str) -> np.ndarray:
    """Indices of the deterministic 80/20 split of a single-split source (``i % 5 == 4`` is test)."""
    i = np.arange(n)
    if split == "all":
        return i
    return i[(i % 5 == 4) == (split in ("test", "val", "validation"))]


def _classes(labels: np.ndarray, names, num_classes=None) -> tuple[int, tuple[str, ...]]:
    k = int(num_classes or (len(names) if names else int(labels.max()) + 1 if labels.size else 1))
    return k, tuple(names) if names else tuple(str(i) for i in range(k))


# ------------------------------------------------------------------------------------------------ synthparts
def _parse_options(arg: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ConfigError(f"synthparts option {item!r} must be key=value")
        try:
            out[key.strip()] = ast.literal_eval(val.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = val.strip()
    return out


def synthparts_dataset(split: str = "train", *, n: int | None = None, size: int = 64, n_train: int = 10000,
                       n_test: int = 2000, seed: int = 0, preset: str = "default",
                       config: sp.SynthPartsConfig | None = None, **config_kw) -> Dataset:
    """Generates a synthparts split in memory as a Dataset (masks uint8; see :mod:`jinterp.data.synthparts`).

    ``n`` overrides the split's size (``n_train`` / ``n_test``). ``config`` or ``preset`` + ``config_kw`` (any
    :class:`SynthPartsConfig` field, e.g. ``noise=0``) pick the generator settings. "all" is train + test.
    """
    for key, value in (("n", n), ("size", size), ("n_train", n_train), ("n_test", n_test), ("seed", seed)):
        if (value is None and key != "n") or (
                value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer))):
            raise ConfigError(f"synthparts option {key} must be an integer, got {value!r} "
                              f"(e.g. synthparts:size=64,n_train=2000,seed=0)")
    if config is None:
        if preset not in ("easy", "default", "hard", "rigid", "articulated"):
            raise ConfigError(f"synthparts preset {preset!r} unknown; use easy, default, hard, rigid or articulated")
        fields = {f for f in sp.SynthPartsConfig.__dataclass_fields__}
        bad = sorted(set(config_kw) - fields)
        if bad:
            raise ConfigError(f"unknown synthparts option(s) {bad}; valid: n, n_train, n_test, seed, size, "
                              f"preset, {sorted(fields)}")
        try:
            config = getattr(sp.SynthPartsConfig, preset)(size=size, **config_kw)
        except (TypeError, IndexError) as e:  # e.g. scale=abc or distractors=3 (a pair is needed)
            defaults = sp.SynthPartsConfig()
            types_ = ", ".join(f"{k}={getattr(defaults, k)!r}" for k in sorted(config_kw))
            raise ConfigError(f"synthparts option(s) {sorted(config_kw)} have the wrong type ({e}); the defaults "
                              f"show the expected form: {types_}") from None
    if split == "all":
        parts = [synthparts_dataset(s, n_train=n_train, n_test=n_test, seed=seed, config=config)
                 for s in ("train", "test")]
        return _concat(parts, f"synthparts:size={config.size},seed={seed},split=all")
    name = "test" if split in ("test", "val", "validation") else "train"
    count = n if n is not None else (n_train if name == "train" else n_test)
    if count <= 0:
        raise DataError(f"synthparts split {name!r} would be empty: ask for n_{name} >= 1")
    d = sp.generate(count, seed=seed, split=name, config=config)
    shape_t, _, _ = sp._tables(config.num_categories)
    return Dataset(
        images=d["image"], labels=d["label"], num_classes=config.num_categories, class_names=config.class_names,
        masks={k: d[k] for k in ("object", "part", "color", "slot")}, image_labels={"texture": d["texture"]},
        landmarks=d["landmarks"], landmark_visible=d["landmark_visible"], concepts=sp.concepts(config),
        name=f"synthparts:size={config.size},seed={seed},split={name}",
        meta={"config": config, "seed": seed, "split": name, "slot_part_table": shape_t + 1},
    )


def _concat(parts: list[Dataset], name: str) -> Dataset:
    a = parts[0]
    cat = lambda xs: None if xs[0] is None else np.concatenate(xs)
    return Dataset(
        images=cat([p.images for p in parts]), labels=cat([p.labels for p in parts]), num_classes=a.num_classes,
        class_names=a.class_names, masks={k: cat([p.masks[k] for p in parts]) for k in a.masks},
        image_labels={k: cat([p.image_labels[k] for p in parts]) for k in a.image_labels},
        landmarks=cat([p.landmarks for p in parts]), landmark_visible=cat([p.landmark_visible for p in parts]),
        concepts=a.concepts, name=name, meta=a.meta,
        mask_planes={k: cat([p.mask_planes[k] for p in parts]) for k in a.mask_planes},
        image_label_sets={k: cat([p.image_label_sets[k] for p in parts]) for k in a.image_label_sets},
    )


def _read_synthparts(arg: str, split: str, **kw) -> Dataset:
    return synthparts_dataset(split, **{**_parse_options(arg), **kw})


# ------------------------------------------------------------------------------------------------ npz
# What each named set holds: (H, W), channels, number of classes. A named set whose content differs is an error.
NAMED_SETS = {"mnist": ((28, 28), 1, 10), "fashion_mnist": ((28, 28), 1, 10), "cifar10": ((32, 32), 3, 10),
              "cifar100": ((32, 32), 3, None)}


def check_named_set(kind: str, path, images: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> None:
    """Refuses content that is not the named set: image size, channels, and labels outside ``0..K-1``."""
    if kind not in NAMED_SETS:
        return
    (h, w), c, k = NAMED_SETS[kind]
    k = num_classes or k
    shape = tuple(images.shape[1:3])
    chans = images.shape[3] if images.ndim == 4 else 1
    if shape != (h, w) or chans != c:
        guess = {((28, 28), 1): "MNIST/Fashion-MNIST", ((32, 32), 3): "CIFAR"}.get((shape, chans), "another set")
        raise DataError(f"{kind}: {path} holds {shape[0]}x{shape[1]} {chans}-channel images (like {guess}), but "
                        f"{kind} images are {h}x{w} with {c} channel(s); use the matching kind (e.g. npz:{path})")
    if labels.size and k is not None and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise DataError(f"{kind}: {path} has labels in [{int(labels.min())}, {int(labels.max())}], but {kind} has "
                        f"{k} classes labelled 0..{k - 1}; fix the labels or read it as npz:{path}")


def _npz_annotations(z, prefix: str, idx: np.ndarray | None) -> dict:
    """The optional annotation arrays of an .npz (see :func:`read_npz`) for one split."""
    pick = (lambda a: a) if idx is None else (lambda a: a[idx])
    out = {"masks": {}, "image_labels": {}, "concepts": {}}
    for key in z.files:
        for field, tag in (("masks", "mask_"), ("image_labels", "image_label_")):
            if key.startswith(prefix + tag):
                out[field][key[len(prefix + tag):]] = pick(z[key])
        if key.startswith("concepts_"):
            out["concepts"][key[len("concepts_"):]] = tuple(str(v) for v in z[key])
    for field in ("landmarks", "landmark_visible"):
        if prefix + field in z.files:
            out[field] = pick(z[prefix + field])
    return out


def read_npz(path: str | Path, split: str = "train", *, class_names=None, num_classes=None,
             name: str | None = None) -> Dataset:
    """An .npz with ``train_x/train_y/test_x/test_y`` or ``x/y`` (uint8 images (N,H,W[,C]), integer labels).

    Optional annotations, per split prefix (``train_``/``test_``, or none with ``x``/``y``), are kept:
    ``<prefix>mask_<name>`` (N, H, W) label maps, ``<prefix>image_label_<name>`` (N,), ``<prefix>landmarks``
    (N, P, 2) (x, y) pixels with ``<prefix>landmark_visible`` (N, P); ``concepts_<name>`` (unicode array) names
    the values of category ``<name>``; ``class_names`` (unicode array) names the classes.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if split in ("train", "test") and {f"{split}_x", f"{split}_y"} <= keys:
                x, y = z[f"{split}_x"], z[f"{split}_y"]
                ann = _npz_annotations(z, f"{split}_", None)
            elif split == "all" and {"train_x", "train_y", "test_x", "test_y"} <= keys:
                x = np.concatenate([z["train_x"], z["test_x"]])
                y = np.concatenate([z["train_y"], z["test_y"]])
                parts = [_npz_annotations(z, f"{s}_", None) for s in ("train", "test")]
                ann = {"concepts": parts[0]["concepts"]}
                for field in ("masks", "image_labels"):
                    ann[field] = {k: np.concatenate([parts[0][field][k], parts[1][field][k]])
                                  for k in parts[0][field] if k in parts[1][field]}
                for field in ("landmarks", "landmark_visible"):
                    if field in parts[0] and field in parts[1]:
                        ann[field] = np.concatenate([parts[0][field], parts[1][field]])
            elif {"x", "y"} <= keys:
                x, y = z["x"], z["y"]
                if len(x) != len(y):
                    raise DataError(f"{path}: x holds {len(x)} images but y {len(y)} labels; give one label per "
                                    "image")
                idx = _split_rule(len(y), split)
                x, y = x[idx], y[idx]
                ann = _npz_annotations(z, "", idx)
            else:
                raise DataError(f"{path}: expected arrays train_x/train_y/test_x/test_y or x/y, found {sorted(keys)}")
            if class_names is None and "class_names" in keys:
                class_names = tuple(str(v) for v in z["class_names"])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: corrupt or truncated .npz file ({e}); re-create or re-download it") from e
    if x.dtype != np.uint8:
        raise ShapeError(f"{path}: images must be uint8, got {x.dtype}")
    kind = (name or "npz").split(":")[0]
    check_named_set(kind, path, x, y, num_classes)
    k, names = _classes(y, class_names, num_classes)
    return Dataset(images=x, labels=y, num_classes=k, class_names=names, name=name or f"npz:{path}",
                   masks=ann["masks"], image_labels=ann["image_labels"], concepts=ann["concepts"],
                   landmarks=ann.get("landmarks"), landmark_visible=ann.get("landmark_visible"),
                   meta={"path": str(path), "split": split})


def _read_npz(arg: str, split: str, **kw) -> Dataset:
    return read_npz(_path(arg, "npz", "an .npz file with train_x/train_y/test_x/test_y or x/y"), split, **kw)


# ------------------------------------------------------------------------------------------------ idx (MNIST)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one idx file (optionally gzipped): magic ``00 00 <dtype> <ndim>``, big-endian int32 dims, data."""
    path = Path(path)
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is corrupt or truncated - download it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number {raw[:4].hex()!r}); point the spec at the "
                        "original MNIST-format idx files (or an .npz)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated idx header; the file is incomplete - download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    want = int(np.prod(dims)) * dt.itemsize
    if len(raw) - head != want:
        raise DataError(f"{path}: truncated or corrupt idx data: header says {dims} ({want} bytes), "
                        f"file has {len(raw) - head} bytes of data; download it again")
    return np.frombuffer(raw, dt, offset=head).reshape(dims).astype(dt.newbyteorder("="))


def read_mnist(path: str | Path, split: str = "train", *, class_names=MNIST_CLASSES, name="mnist") -> Dataset:
    """MNIST-layout folder: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; or an .npz (see read_npz)."""
    path = Path(path)
    if path.is_file():
        return read_npz(path, split, class_names=class_names, num_classes=len(class_names), name=f"{name}:{path}")
    if split == "all":
        parts = [read_mnist(path, s, class_names=class_names, name=name) for s in ("train", "test")]
        return _concat(parts, f"{name}:{path}")
    prefix = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3", "labels-idx1"):  # look for both files before reading either
        stem = f"{prefix}-{kind}-ubyte"
        cands = [path / (stem + ext) for ext in (".gz", "")] + [path / stem.replace("-idx", ".idx")]
        hit = next((c for c in cands if c.exists()), None)
        if hit is None:
            raise MissingFileError(f"{name}: {path} lacks {stem}.gz (or {stem}); put the {name} idx files there")
        found.append(hit)
    x, y = (read_idx(f) for f in found)
    if x.ndim != 3 or y.shape != (x.shape[0],):
        raise DataError(f"{name}: {path}: images {x.shape} and labels {y.shape} do not match")
    check_named_set(name, path, x, y)
    return Dataset(images=x.astype(np.uint8), labels=y, num_classes=len(class_names), class_names=class_names,
                   name=f"{name}:{path}", meta={"path": str(path), "split": split})


def _read_mnist(arg, split, **kw):
    return read_mnist(_path(arg, "mnist", "a folder with train-images-idx3-ubyte.gz etc., or an .npz"), split, **kw)


def _read_fashion(arg, split, **kw):
    p = _path(arg, "fashion_mnist", "a folder with train-images-idx3-ubyte.gz etc., or an .npz")
    return read_mnist(p, split, class_names=FASHION_CLASSES, name="fashion_mnist", **kw)


# ------------------------------------------------------------------------------------------------ CIFAR
def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"{path}: corrupt or truncated CIFAR batch ({e}); download it again") from e
    if not isinstance(d, dict):
        raise DataError(f"{path}: a CIFAR batch must be a pickled dict, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: CIFAR batch lacks 'data' or '{label_key}' (has {sorted(d)})")
    data, y = np.asarray(d["data"]), np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(y) != len(data):
        raise DataError(f"{path}: 'data' must be uint8 (N, 3072) with N labels, got {data.dtype} {data.shape} "
                        f"and {len(y)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y  # stored as channel planes (CHW)


def read_cifar(path: str | Path, split: str = "train", *, variant: str = "cifar10", label: str = "fine") -> Dataset:
    """CIFAR python batches: cifar10 ``data_batch_1..5``/``test_batch``/``batches.meta``; cifar100
    ``train``/``test``/``meta`` with ``label="fine"`` (100 classes) or ``"coarse"`` (20). An .npz also works."""
    path = Path(path)
    if path.is_file():
        return read_npz(path, split, class_names=CIFAR10_CLASSES if variant == "cifar10" else None,
                        num_classes=10 if variant == "cifar10" else (100 if label == "fine" else 20),
                        name=f"{variant}:{path}")
    if split == "all":
        return _concat([read_cifar(path, s, variant=variant, label=label) for s in ("train", "test")],
                       f"{variant}:{path}")
    if variant == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        if label not in ("fine", "coarse"):
            raise ConfigError(f"cifar100 label must be 'fine' or 'coarse', got {label!r}")
        files = ["train" if split == "train" else "test"]
        key, meta_file, names_key = f"{label}_labels", "meta", f"{label}_label_names"
    missing = [f for f in files if not (path / f).exists()]
    if missing:
        raise MissingFileError(f"{variant}: {path} lacks {missing}; put the extracted python-version batches "
                               f"({'cifar-10-batches-py' if variant == 'cifar10' else 'cifar-100-python'}) there")
    xs, ys = zip(*(_cifar_batch(path / f, key) for f in files), strict=True)
    y = np.concatenate(ys)
    names = CIFAR10_CLASSES if variant == "cifar10" else None
    if (path / meta_file).exists():
        m = _unpickle(path / meta_file)
        if names_key in m:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in m[names_key])
    k, names = _classes(y, names, 10 if variant == "cifar10" else (100 if label == "fine" else 20))
    check_named_set(variant, path, np.concatenate(xs[:1]), y, k)
    return Dataset(images=np.concatenate(xs), labels=y, num_classes=k, class_names=names,
                   name=f"{variant}:{path}", meta={"path": str(path), "split": split})


def _read_cifar10(arg, split, **kw):
    return read_cifar(_path(arg, "cifar10", "cifar-10-batches-py (data_batch_1..5, test_batch)"), split,
                      variant="cifar10", **kw)


def _read_cifar100(arg, split, **kw):
    return read_cifar(_path(arg, "cifar100", "cifar-100-python (train, test, meta)"), split, variant="cifar100", **kw)


# ------------------------------------------------------------------------------------------------ folders
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _read_image(path: Path, mode: str, size) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); the file is corrupt or truncated") from e


def read_folder(path: str | Path, split: str = "train", *, mode: str = "RGB", size=None,
                lazy: bool = False) -> Dataset:
    """Image folders, one subfolder per class (sorted names = class ids). With ``train``/``test`` subfolders
    each is a split; otherwise the 80/20 rule of the module docstring applies per class. All images must have
    one size unless ``size=(H, W)`` resizes them (bilinear). ``mode`` is a Pillow mode ("RGB" or "L").
    ``lazy=True`` decodes images per batch (:mod:`jinterp.data.lazy`)."""
    path = Path(path)
    root = path
    if (path / "train").is_dir() and split != "all":
        root = path / ("train" if split == "train" else "test")
        if not root.is_dir():
            raise MissingFileError(f"folder: {path} has train/ but no {root.name}/; put one folder per class there")
        rule = "all"
    else:
        rule = split
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"folder: {root} has no class subfolders; put images in {root}/<class name>/")
    files, labels = [], []
    for ci, c in enumerate(classes):
        fs = sorted(f for f in (root / c).iterdir() if f.suffix.lower() in _IMAGE_EXT)
        fs = [fs[i] for i in _split_rule(len(fs), rule)]
        files += fs
        labels += [ci] * len(fs)
    if not files:
        raise DataError(f"folder: no images ({sorted(_IMAGE_EXT)}) for split {split!r} under {root}")
    if lazy:
        first = _read_image(files[0], mode, size)

        def decode(i: int) -> np.ndarray:
            im = _read_image(files[i], mode, size)
            if im.shape != first.shape:
                raise ShapeError(f"folder: {files[i]} is {im.shape}, {files[0]} is {first.shape}; pass size=(H, W) "
                                 "to resize them")
            return im

        images = LazyArray(len(files), first.shape, np.uint8, decode)
    else:
        imgs = [_read_image(f, mode, size) for f in files]
        shapes = {im.shape for im in imgs}
        if len(shapes) > 1:
            raise ShapeError(f"folder: images under {root} have different sizes {sorted(shapes)[:4]}...; "
                             "pass size=(H, W) to resize them")
        images = np.stack(imgs)
    return Dataset(images=images, labels=np.asarray(labels), num_classes=len(classes),
                   class_names=tuple(classes), name=f"folder:{path}",
                   meta={"path": str(path), "split": split, "files": [str(f) for f in files]})


def _read_folder(arg, split, **kw):
    return read_folder(_path(arg, "folder", "one subfolder of images per class"), split, **kw)


# ------------------------------------------------------------------------------------------------ TFDS
def read_tfds(name: str, split: str = "train", *, data_dir: str | Path | None = None, image_key: str = "image",
              label_key: str = "label", num_classes: int | None = None, lazy: bool = False) -> Dataset:
    """Any prepared TFDS data set via ``tfds.data_source`` (array_record; no TensorFlow needed to read).

    ``image_key``/``label_key`` name the features; other features are sorted by shape: (H, W) integer arrays
    become masks, scalars image_labels, ``landmarks``/``landmark_visible`` landmarks.

    ``lazy=True`` (``--data tfds:NAME:DATA_DIR:lazy=1``): nothing image-sized is decoded up front. Opening reads
    the small features (label, scalars, landmarks) of every record by parsing the serialized example for those
    features only (``ExampleParserNp`` restricted to them: images and masks are not decoded); the image and the
    (H, W) masks are :class:`~jinterp.data.lazy.LazyArray` s that share one record cache, so the records of a
    batch are read and decoded once (``data_source.__getitems__``) and every column is served from them, in
    :class:`~jinterp.data.BatchIterator`'s prefetch thread. Lazy needs fixed-shape images.

    Why the array_record files are read through TFDS's ``data_source`` into jinterp's own pipeline and not grain:
    measured (``python -m jinterp.bench.data_readers --n 2000 --reps 2``: 2000 synthparts images at 224 px into a
    quarter-width ConvNet's features, batch 32, one run, modes alternating; a shared 2-core machine at a 1-minute
    load of 28-36, so only ratios within the run mean anything), per round: jinterp's lazy JPEG files + prefetch
    thread 17.8 / 15.2 images/s (10.0 / 11.2 ms CPU per image), the same JPEG bytes from one ArrayRecord file through
    the same iterator 18.8 / 15.3 (10.5 / 11.1 ms), grain's DataLoader over that file with one worker process
    15.7 / 17.0 (11.6 / 11.9 ms): the three are equal within the spread between rounds. The cost is the JPEG decode
    and the network, not the container or the loader, so we keep ``LazyArray`` + BatchIterator's prefetch thread
    (no new dependency, one path for ``folder``/``broden``/``cub``/``tfds``, per-host shards already done there) and
    read array_record through TFDS's data source; grain (a wheel exists for Python 3.11; not a dependency) would
    have to beat it on a quiet many-core host, where its worker processes can decode in parallel (not measured
    here). Details: experiments/README.md, "Input pipeline: grain vs ArrayRecord (issue #19)".
    """
    from jinterp._extras import require_tfds

    tfds = require_tfds(f"tfds:{name}")
    if name.split("/")[0] == "synthparts":  # registers our builder with TFDS
        import jinterp.data.synthparts_tfds  # noqa: F401

    if data_dir is not None and not Path(data_dir).exists():
        raise MissingFileError(f"tfds: data_dir {data_dir} does not exist; prepare {name} there first "
                               "(e.g. jinterp.data.prepare_synthparts(data_dir, ...))")
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        if not builder.is_prepared():
            raise MissingFileError(f"tfds: {name} is not prepared under {builder.data_dir}; prepare it there first")
        tfds_split = "test" if split in ("val", "validation") and "test" in builder.info.splits else split
        if split == "all":
            tfds_split = "+".join(builder.info.splits)
        src = builder.as_data_source(split=tfds_split)
    except MissingFileError:
        raise
    except Exception as e:
        raise DataError(f"tfds: cannot open {name} split {split!r} under {data_dir}: {e}") from e
    n = len(src)
    if n == 0:
        raise DataError(f"tfds: {name} split {split!r} is empty")
    if lazy:
        cols = _tfds_lazy_columns(name, src, builder.info.features, image_key, n)
    else:
        recs = src.__getitems__(list(range(n))) if hasattr(src, "__getitems__") else [src[i] for i in range(n)]
        cols = {k: np.stack([np.asarray(r[k]) for r in recs]) for k in recs[0]}
    if image_key not in cols or label_key not in cols:
        raise DataError(f"tfds: {name} has features {sorted(cols)}; pass image_key=/label_key= to pick them")
    x, y = cols.pop(image_key), cols.pop(label_key)
    feat = builder.info.features[label_key]
    meta_json = builder.info.metadata or {}
    names = getattr(feat, "names", None) or meta_json.get("class_names")
    k, names = _classes(y, names, num_classes or getattr(feat, "num_classes", None))
    lm, vis = cols.pop("landmarks", None), cols.pop("landmark_visible", None)
    masks = {c: v for c, v in cols.items() if v.shape == (n, *x.shape[1:3]) and v.dtype.kind in "iu"}
    image_labels = {c: v for c, v in cols.items() if v.shape == (n,) and v.dtype.kind in "iub"}
    return Dataset(images=x, labels=y, num_classes=k, class_names=names, masks=masks, image_labels=image_labels,
                   landmarks=lm, landmark_visible=vis, concepts=dict(meta_json.get("concepts", {})),
                   name=f"tfds:{name}", meta={"data_dir": str(builder.data_dir), "split": split})


class _TfdsBatchRecords:
    """The decoded records of the last batch asked for, shared by the lazy columns of one TFDS source (the
    iterator asks for the image, then each mask, of the same rows: each record is read and decoded once)."""

    MAX_CACHED = 4096  # records; a larger read (the whole set through np.asarray) is decoded but not kept

    def __init__(self, src):
        import threading

        self._src, self._lock = src, threading.Lock()
        self._rows: tuple[int, ...] | None = None
        self._records: list = []

    def column(self, key: str):
        def decode_batch(indices: np.ndarray) -> np.ndarray:
            rows = tuple(int(i) for i in indices)
            with self._lock:
                if rows == self._rows:
                    records = self._records
                else:
                    records = list(self._src.__getitems__(list(rows)))
                    # kept for the other columns of this batch; a whole-set read (np.asarray) is not kept
                    self._rows, self._records = (rows, records) if len(rows) <= self.MAX_CACHED else (None, [])
            return np.stack([np.asarray(r[key]) for r in records])
        return decode_batch


def _tfds_lazy_columns(name: str, src, features, image_key: str, n: int, chunk: int = 1024) -> dict:
    """``lazy=True`` columns of a TFDS source: LazyArrays for the image and its (H, W) integer maps, arrays
    for the rest, read by parsing only those features of each serialized record."""
    from tensorflow_datasets.core import example_parser

    shapes = {k: tuple(getattr(features[k], "shape", ()) or ()) for k in features.keys()}
    dtypes = {k: np.dtype(getattr(features[k], "np_dtype", np.uint8)) for k in features.keys()}
    if image_key not in shapes:
        raise DataError(f"tfds: {name} has features {sorted(shapes)}; pass image_key= to pick the image")
    image_shape = shapes[image_key]
    if len(image_shape) != 3 or any(d is None for d in image_shape):
        raise ConfigError(f"tfds: {name}'s {image_key!r} has shape {image_shape}; lazy=1 needs fixed-shape "
                          "(H, W, C) images: drop lazy=1")
    pixel = {k for k, sh in shapes.items()
             if k != image_key and sh == image_shape[:2] and dtypes[k].kind in "iu"}
    raw_source = getattr(src, "data_source", None)
    if raw_source is None:
        raise ConfigError(f"tfds: {name}'s data source ({type(src).__name__}) gives no raw records to read "
                          "lazily; drop lazy=1")
    small = [k for k in shapes if k != image_key and k not in pixel]
    serialized = features.get_serialized_info()
    parser = example_parser.ExampleParserNp({k: serialized[k] for k in small})
    values: dict[str, list] = {k: [] for k in small}
    for start in range(0, n, chunk):  # only the small features are decoded
        for raw in raw_source.__getitems__(list(range(start, min(n, start + chunk)))):
            parsed = parser.parse_example(raw)
            for k in small:
                values[k].append(np.asarray(features[k].decode_example_np(parsed[k])))
    cols: dict = {k: np.stack(v) for k, v in values.items()}
    records = _TfdsBatchRecords(src)
    for k in (image_key, *sorted(pixel)):
        cols[k] = LazyArray(n, shapes[k], dtypes[k], decode_batch=records.column(k))
    return {k: cols[k] for k in shapes}  # the features' order, as the eager path


def _read_tfds(arg, split, **kw):
    name, _, data_dir = arg.partition(":")
    if not name:
        raise ConfigError("the data spec needs a name: 'tfds:NAME[:DATA_DIR]'")
    return read_tfds(name, split, data_dir=data_dir or kw.pop("data_dir", None), **kw)


# ------------------------------------------------------------------------------------------------ annotated sets
def _read_broden(arg, split, **kw):
    return read_broden(_path(arg, "broden", "a Broden folder (index.csv, label.csv, category.csv, images/)"),
                       split, **kw)


def _read_cub(arg, split, **kw):
    return read_cub(_path(arg, "cub", "the CUB_200_2011 folder (images.txt, parts/, images/)"), split, **kw)


def _read_voc(arg, split, **kw):
    return read_voc(_path(arg, "voc", "a VOC folder (JPEGImages/, Annotations/, ImageSets/Main/)"), split, **kw)


def _read_pascal_part(arg, split, **kw):
    return read_pascal_part(_path(arg, "pascal_part", "a folder with JPEGImages/ and Annotations_Part/*.mat"),
                            split, **kw)


# Reader options each reader applies itself (the rest are applied after reading, in jinterp.data.spec).
_NATIVE_OPTIONS = {"cub": ("crop", "size", "classes", "max_images", "lazy"),
                   "voc": ("crop", "size", "classes", "max_images"), "pascal_part": ("size", "classes", "max_images"),
                   "broden": ("max_images", "lazy"), "folder": ("size", "lazy"), "tfds": ("lazy",)}

_READERS = {
    "synthparts": _read_synthparts, "npz": _read_npz, "mnist": _read_mnist, "fashion_mnist": _read_fashion,
    "cifar10": _read_cifar10, "cifar100": _read_cifar100, "folder": _read_folder, "tfds": _read_tfds,
    "broden": _read_broden, "cub": _read_cub, "voc": _read_voc, "pascal_part": _read_pascal_part,
}
