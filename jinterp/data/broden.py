"""Broden-format concept data (``broden:PATH``), read as NetDissect-Lite reads it (spec uibe_and_metrics.md §5.2;
NetDissect-Lite ``loader/data_loader.py``):

    PATH/index.csv      image,split,ih,iw,sh,sw,<one column per category>   (read by header name; order varies)
                        pixel categories: ';'-separated PNG paths under images/ (planes, dominant first) or label
                        numbers covering the whole image; image categories (scene, texture): ';'-separated numbers
    PATH/category.csv   name,first,last,count,frequency
    PATH/label.csv      number,name,category,frequency,coverage,syns   category like "object(3);part(5)"
    PATH/c_<cat>.csv    code,number,name,frequency,coverage            dense per-category code <-> global number
    PATH/images/...     <file>.jpg and mask PNGs: global label number = R + 256 * G (B unused), 0 = unlabelled

What the Dataset holds (``split``: train, val/test, all):

* ``mask_planes[cat]`` (N, P, H, W): **every** plane of pixel category ``cat`` as per-category codes (0 = none),
  resized to the image size with nearest neighbour (Broden stores masks at ``sh = ih // 2``); P is the most planes
  any loaded image has (missing planes are 0). ``masks[cat]`` is the first labelled plane per pixel (the old field,
  kept for code that wants one label per pixel).
* ``image_label_sets[cat]`` (N, Q): **every** code listed in an image-level cell; ``image_labels[cat]`` = the first.
* ``concepts[cat][code]`` names the codes; ``meta["label_numbers"][cat][code]`` is the global label number.
* ``labels`` come from ``label_category`` (default "scene" when present, its first code).

:func:`broden_concepts` turns these into the dissection tally's :class:`~jinterp.metrics.dissection.ConceptSet` the
NetDissect-Lite way: labels merged by name across categories (joinseg gives ``ring`` as object and as part one
global number: it is one concept), all planes, all image-level labels.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jinterp.data.annotated import load_rgb
from jinterp.data.dataset import Dataset
from jinterp.data.lazy import LazyArray
from jinterp.errors import ConfigError, DataError, MissingFileError, ShapeError

CATEGORY_RULES = ("max_coverage", "first_listed")


def read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows of a Broden CSV with their line numbers (header = line 1)."""
    if not path.exists():
        raise MissingFileError(f"broden: {path} is missing; a Broden folder holds index.csv, label.csv, "
                               "category.csv, c_<category>.csv and images/")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [(reader.line_num, r) for r in reader]


def _int(value: str, path: Path, lineno: int, column: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"broden: {path} line {lineno}: column {column!r} must be an integer, got {value!r}") from None


def _float(value: str, path: Path, lineno: int, column: str) -> float:
    try:
        return float(value or 0)
    except ValueError:
        raise DataError(f"broden: {path} line {lineno}: column {column!r} must be a number, got {value!r}") from None


def decode_mask(path: Path) -> np.ndarray:
    """A Broden mask PNG: global label number = R + 256 * G (B unused); 0 = unlabelled."""
    rgb = load_rgb(path, "broden").astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1]


def resize_nearest(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map (pixel centres): an exact repeat for integer factors."""
    ys = (np.arange(h) * m.shape[0]) // h
    xs = (np.arange(w) * m.shape[1]) // w
    return m[ys[:, None], xs[None, :]]


def _category_tables(root: Path, cats, labels_csv):
    """Per category: number -> code, code names, code -> coverage (c_<cat>.csv, else derived from label.csv)."""
    names_by_number = {}
    for lineno, r in labels_csv:
        names_by_number[_int(r.get("number"), root / "label.csv", lineno, "number")] = r.get("name", "")
    code_of, concepts, coverage = {}, {}, {}
    for c in cats:
        cfile = root / f"c_{c}.csv"
        if cfile.exists():
            entries = [(_int(r.get("code"), cfile, ln, "code"), _int(r.get("number"), cfile, ln, "number"),
                        r.get("name", ""), _float(r.get("coverage"), cfile, ln, "coverage"))
                       for ln, r in read_csv(cfile)]
        else:  # dense codes from label.csv's category field, e.g. "color(289)" or "material(36);object(3)"
            nums = []
            for ln, r in labels_csv:
                for part in filter(None, r.get("category", "").split(";")):
                    m = re.fullmatch(r"\s*([^(]+)\((\d+)\)\s*", part)
                    if not m:
                        raise DataError(f"broden: {root / 'label.csv'} line {ln}: category field {part!r} is not "
                                        "name(count)")
                    if m.group(1) == c:
                        nums.append((_int(r["number"], root / "label.csv", ln, "number"),
                                     _float(r.get("coverage"), root / "label.csv", ln, "coverage")))
            entries = [(i + 1, num, names_by_number[num], cov) for i, (num, cov) in enumerate(sorted(nums))]
        code_of[c] = {num: code for code, num, _, _ in entries}
        names = ["-"] * (max((e[0] for e in entries), default=0) + 1)
        cov = [0.0] * len(names)
        for code, _, nm, cv in entries:
            names[code], cov[code] = nm, cv
        concepts[c], coverage[c] = tuple(names), cov
    return code_of, concepts, coverage


def read_broden(path: str | Path, split: str = "train", *, categories=None, label_category: str | None = None,
                max_images: int | None = None, lazy: bool = False) -> Dataset:
    """A Broden-format concept data set (see the module docstring). ``lazy=True``: images and masks are
    :class:`~jinterp.data.lazy.LazyArray` s decoded per batch (the CSVs are read up front)."""
    root = Path(path)
    index = read_csv(root / "index.csv")
    labels_csv = read_csv(root / "label.csv")
    cats = [r["name"] for _, r in read_csv(root / "category.csv")]
    if not index:
        raise DataError(f"broden: {root / 'index.csv'} lists no images")
    fixed = {"image", "split", "ih", "iw", "sh", "sw"}
    missing_cols = fixed - set(index[0][1])
    if missing_cols:
        raise DataError(f"broden: {root / 'index.csv'} lacks columns {sorted(missing_cols)}")
    cats = [c for c in cats if c in index[0][1]] if categories is None else list(categories)
    want = {"train": ("train",), "test": ("val", "test"), "val": ("val", "test"), "validation": ("val", "test"),
            "all": None}[split]
    rows = [(ln, r) for ln, r in index if want is None or r["split"] in want][:max_images]
    if not rows:
        raise DataError(f"broden: no images of split {split!r} in {root / 'index.csv'}")
    code_of, concepts, coverage = _category_tables(root, cats, labels_csv)

    def cells(r, c):
        return [v.strip() for v in (r.get(c) or "").split(";") if v.strip()]

    pixel_cats = [c for c in cats if any(v.lower().endswith(".png") for _, r in rows for v in cells(r, c))]
    image_cats = [c for c in cats if c not in pixel_cats]
    idx_path = root / "index.csv"
    sizes = []
    for ln, r in rows:
        sizes.append(tuple(_int(r[k], idx_path, ln, k) for k in ("ih", "iw", "sh", "sw")))
    if len({sz[:2] for sz in sizes}) > 1:
        raise ShapeError(f"broden: images in {idx_path} have several sizes {sorted({sz[:2] for sz in sizes})}; "
                         "use one Broden size")
    n, (h, w) = len(rows), sizes[0][:2]
    depth = {c: max(1, max(len(cells(r, c)) for _, r in rows)) for c in pixel_cats}
    dtype = np.uint16 if max((len(v) for v in concepts.values()), default=0) < 65536 else np.int32

    def image(i: int) -> np.ndarray:
        (ln, r), (ih, iw, _, _) = rows[i], sizes[i]
        img = load_rgb(root / "images" / r["image"], "broden")
        if img.shape[:2] != (ih, iw):
            raise ShapeError(f"broden: {idx_path} line {ln}: images/{r['image']} is {img.shape[:2]}, index.csv says "
                             f"({ih}, {iw})")
        return img

    def planes(i: int, c: str) -> np.ndarray:
        """(depth, H, W) per-category codes of every plane of category ``c`` in image ``i``."""
        (ln, r), (ih, iw, sh, sw) = rows[i], sizes[i]
        out = np.zeros((depth[c], ih, iw), dtype)
        for p, entry in enumerate(cells(r, c)):
            if entry.lower().endswith(".png"):
                num = decode_mask(root / "images" / entry)
                if num.shape not in ((sh, sw), (ih, iw)):
                    raise ShapeError(f"broden: {idx_path} line {ln}: mask images/{entry} is {num.shape}, "
                                     f"index.csv says ({sh}, {sw})")
            else:  # a whole-image label number in a pixel category (NetDissect-Lite fills the plane)
                num = np.full((sh, sw), _int(entry, idx_path, ln, c), np.int32)
            out[p] = resize_nearest(_codes(num, code_of[c], root / "images" / entry, c), ih, iw)
        return out

    def first_plane(stack: np.ndarray) -> np.ndarray:
        first = np.zeros(stack.shape[1:], stack.dtype)
        for p in range(len(stack)):  # the dominant (first labelled) plane wins per pixel
            first = np.where(first == 0, stack[p], first)
        return first

    sets = {c: [] for c in image_cats}
    for ln, r in rows:
        for c in image_cats:
            nums = [_int(v, idx_path, ln, c) for v in cells(r, c)]
            unknown = [v for v in nums if v not in code_of[c]]
            if unknown:
                raise DataError(f"broden: {idx_path} line {ln}: {c} label number(s) {unknown} are not listed in "
                                f"c_{c}.csv (or label.csv) for category {c!r}")
            sets[c].append([code_of[c][v] for v in nums])
    mask_planes, masks = {}, {}
    if lazy:
        images = LazyArray(n, (h, w, 3), np.uint8, image)
        for c in pixel_cats:
            mask_planes[c] = LazyArray(n, (depth[c], h, w), dtype, lambda i, c=c: planes(i, c))
            masks[c] = LazyArray(n, (h, w), dtype, lambda i, c=c: first_plane(planes(i, c)))
    else:
        images = np.stack([image(i) for i in range(n)])
        for c in pixel_cats:
            mask_planes[c] = np.stack([planes(i, c) for i in range(n)])
            masks[c] = np.stack([first_plane(st) for st in mask_planes[c]])
    label_sets, image_labels = {}, {}
    for c in image_cats:
        width = max(1, max(len(s) for s in sets[c]))
        arr = np.zeros((n, width), np.int32)
        for i, s in enumerate(sets[c]):
            arr[i, :len(s)] = s
        label_sets[c], image_labels[c] = arr, arr[:, 0]
    label_category = label_category or ("scene" if "scene" in image_labels else None)
    if label_category is not None:
        if label_category not in image_labels:
            raise ConfigError(f"broden: label_category {label_category!r} is not an image-level category of {root} "
                              f"({image_cats})")
        y, names = image_labels[label_category], concepts[label_category]
    else:
        y, names = np.zeros(n, np.int32), ("none",)
    return Dataset(images=images, labels=y, num_classes=len(names), class_names=names, masks=masks,
                   image_labels=image_labels, mask_planes=mask_planes, image_label_sets=label_sets,
                   concepts=concepts, name=f"broden:{root}",
                   meta={"path": str(root), "split": split, "images": [r["image"] for _, r in rows],
                         "pixel_categories": pixel_cats, "image_categories": image_cats,
                         "segmentation_size": (int(rows[0][1]["sh"]), int(rows[0][1]["sw"])),
                         "label_numbers": {c: {code: num for num, code in code_of[c].items()} for c in cats},
                         "coverage": coverage, "category_order": cats})


def _codes(num: np.ndarray, table: dict[int, int], path: Path, cat: str) -> np.ndarray:
    """Maps global label numbers to category codes with a lookup table (0 stays 0)."""
    lut = np.zeros(max(max(table, default=0), int(num.max())) + 1, np.int32)
    for k, c in table.items():
        lut[k] = c
    unknown = np.setdiff1d(np.unique(num), [0, *table])
    if unknown.size:
        raise DataError(f"broden: {path} holds label numbers {unknown[:8].tolist()} that c_{cat}.csv does not "
                        f"list for category {cat!r}")
    return lut[num]


def _nearest(maps: np.ndarray, size) -> np.ndarray:
    """``(N, H, W)`` label maps nearest-resized to ``size`` by pixel-centre sampling (as the dissection module)."""
    if size is None or tuple(maps.shape[1:]) == tuple(size):
        return maps
    h, w = maps.shape[1:]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return maps[:, ys[:, None], xs[None, :]]


def broden_concepts(ds: Dataset, categories: Sequence[str] | None = None, size: tuple[int, int] | None = None,
                    category_rule: str = "max_coverage"):
    """The dissection tally's ConceptSet from a ``broden:`` Dataset, as NetDissect-Lite forms its labels.

    * Concepts are label **names** merged across categories (one id for ``ring`` as object and as part), ids
      ``1..L`` in order of first appearance over ``categories`` and codes.
    * ``pixel_labels`` ``(N, P, H', W')`` stacks every plane of every pixel category (NetDissect-Lite concatenates
      all planes; a pixel may carry several concepts); ``image_labels`` ``(N, Q)`` every image-level code.
    * ``category_of`` gives each merged concept one category: ``"max_coverage"`` = NetDissect-Lite's
      ``primary_categories_per_index`` (the category whose c_*.csv coverage is largest; ties go to the later
      category, as its ``max`` over ``(coverage, index)`` does); ``"first_listed"`` = the first category (in
      ``categories`` order) that lists the name.
    * ``size`` nearest-resizes the planes (NetDissect scores at the segmentation size: ``ds.meta
      ["segmentation_size"]``).

    Without ``mask_planes`` (other readers) every pixel category is one plane (``masks``).
    """
    from jinterp.metrics.dissection import ConceptSet

    if category_rule not in CATEGORY_RULES:
        raise ConfigError(f"category_rule {category_rule!r} unknown; use one of {list(CATEGORY_RULES)}")
    planes_of = {c: ds.mask_planes.get(c, ds.masks[c][:, None]) for c in ds.masks}
    sets_of = {c: ds.image_label_sets.get(c, ds.image_labels[c][:, None]) for c in ds.image_labels}
    cats = list(categories) if categories is not None else [c for c in ds.meta.get("category_order", [])
                                                           if c in planes_of or c in sets_of]
    cats = cats or [c for c in list(planes_of) + list(sets_of) if c != "slot"]
    unknown = [c for c in cats if c not in planes_of and c not in sets_of]
    if unknown:
        have = sorted(list(planes_of) + list(sets_of))
        raise DataError(f"{ds.name}: no annotation category {unknown}; it has {have}")
    names, cov_of = ["-"], {}
    lut = {}
    coverage = ds.meta.get("coverage", {})
    for g, c in enumerate(cats):
        table = np.zeros(len(ds.concepts[c]), np.int32)
        for code, nm in enumerate(ds.concepts[c]):
            if code == 0:
                continue
            if nm not in names:
                names.append(nm)
            gid = names.index(nm)
            table[code] = gid
            cov = coverage.get(c, [0.0] * len(ds.concepts[c]))[code]
            cov_of.setdefault(gid, []).append((cov, g))
        lut[c] = table
    category_of = np.zeros(len(names), np.int32)
    for gid, covs in cov_of.items():
        category_of[gid] = max(covs)[1] if category_rule == "max_coverage" else min(g for _, g in covs)
    pixel = [lut[c][_nearest(planes_of[c][:, p], size)] for c in cats if c in planes_of
             for p in range(planes_of[c].shape[1])]
    if not pixel:
        raise DataError(f"{ds.name}: no pixel-level category among {cats}; dissection needs one")
    image = [lut[c][sets_of[c][:, q]] for c in cats if c in sets_of for q in range(sets_of[c].shape[1])]
    n = len(ds)
    return ConceptSet(np.stack(pixel, 1).astype(np.int32),
                      np.stack(image, 1).astype(np.int32) if image else np.zeros((n, 0), np.int32),
                      tuple(names), category_of, tuple(cats))
