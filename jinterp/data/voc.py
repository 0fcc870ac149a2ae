"""PASCAL VOC (``voc:PATH``) and Pascal-Part (``pascal_part:PATH``) readers, from the sets' own layouts.

VOC (VOC2010 devkit folder, e.g. ``VOCdevkit/VOC2010``)::

    PATH/JPEGImages/<id>.jpg
    PATH/Annotations/<id>.xml        <annotation><size><width/><height/></size>
                                     <object><name/><difficult/><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>...
    PATH/ImageSets/Main/train.txt    one <id> per line (also val.txt, trainval.txt)

VOC box corners are 1-based inclusive pixel indices; jinterp's continuous coordinates (pixel ``j`` spans ``[j, j+1)``)
are ``x0 = xmin - 1, x1 = xmax`` (same for y). Each image gets ``labels`` = the class of its largest non-difficult
object (VOC is multi-label; this single label is the one CSG-style classification uses [reconstructed]),
``masks["object"]`` = boxes rasterised with class code 1..20 (larger boxes first, so smaller ones stay visible),
and ``meta["objects"][i]`` = every object as ``(class_id, difficult, x0, y0, x1, y1)`` in output pixels.
``crop="box"`` crops each image to its largest non-difficult object's box (object-level classification).

Pascal-Part (Chen et al., CVPR 2014)::

    PATH/JPEGImages/<id>.jpg
    PATH/Annotations_Part/<id>.mat   anno.imname; anno.objects(1, K): class (str), class_ind (1..20), mask (H, W),
                                     parts(1, P): part_name (str), mask (H, W)
    PATH/ImageSets/Main/{train,val}.txt   optional; without it the deterministic 80/20 rule of the readers applies

Images are the ones with a ``.mat`` file. ``masks["object"]`` holds class_ind (1..20, 0 = background; where objects
overlap the first listed wins), ``masks["part"]`` part codes 1..P by part name (``concepts["part"]`` names them:
the sorted names found in the loaded images, or the merging table's targets); ``part_merge`` maps raw part names
to merged ones (e.g. ``{"lleg": "leg", "rleg": "leg"}``; names absent from a given table are dropped), the built-in
``part_merge="coarse"`` is :data:`COARSE_PARTS` (sides and numbering merged). ``labels`` = the class of the largest
object.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from jinterp.data.annotated import box_window, load_rgb, require, same_size
from jinterp.data.dataset import Dataset
from jinterp.data.spec import class_ids, resize_example
from jinterp.errors import ConfigError, DataError, ShapeError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _split_ids(root: Path, split: str, kind: str, fallback: list[str] | None = None) -> list[str]:
    main = root / "ImageSets" / "Main"
    names = {"train": ["train"], "test": ["val"], "val": ["val"], "validation": ["val"], "all": ["train", "val"]}[split]
    if fallback is not None and not main.is_dir():
        i = np.arange(len(fallback))
        if split == "all":
            return fallback
        return [fallback[j] for j in i[(i % 5 == 4) == (split != "train")]]
    ids = []
    for n in names:
        f = require(main / f"{n}.txt", kind, "ImageSets/Main holds train.txt and val.txt (one image id per line)")
        ids += [line.split()[0] for line in f.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def _xml_objects(path: Path) -> tuple[tuple[int, int], list[tuple[int, int, float, float, float, float]]]:
    """``((H, W), [(class_id 0..19, difficult, x0, y0, x1, y1), ...])`` of one VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"voc: {path} line {e.position[0]}: malformed XML ({e}); restore the file") from None
    try:
        size = root.find("size")
        hw = (int(size.findtext("height")), int(size.findtext("width")))
        objs = []
        for o in root.iter("object"):
            name = o.findtext("name").strip()
            if name not in VOC_CLASSES:
                raise DataError(f"voc: {path}: unknown class {name!r}; VOC classes are {list(VOC_CLASSES)}")
            b = o.find("bndbox")
            xmin, ymin, xmax, ymax = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objs.append((VOC_CLASSES.index(name), int(o.findtext("difficult") or 0), xmin - 1, ymin - 1, xmax, ymax))
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"voc: {path}: an object or size lacks name/bndbox/xmin..ymax/width/height; "
                        "restore the annotation file") from None
    if not objs:
        raise DataError(f"voc: {path} has no <object>; every VOC annotation lists at least one")
    return hw, objs


def _largest(objs, skip_difficult=True):
    cands = [o for o in objs if not (skip_difficult and o[1])] or objs
    return max(cands, key=lambda o: (o[4] - o[2]) * (o[5] - o[3]))


def read_voc(path: str | Path, split: str = "train", *, crop: str = "none", size=None, classes=None,
             max_images: int | None = None) -> Dataset:
    """PASCAL VOC detection annotations as a Dataset (see the module docstring)."""
    root = Path(path)
    require(root / "Annotations", "voc", "a VOC folder holds JPEGImages/, Annotations/ and ImageSets/Main/")
    require(root / "JPEGImages", "voc", "a VOC folder holds JPEGImages/, Annotations/ and ImageSets/Main/")
    ids = _split_ids(root, split, "voc")
    keep = None if classes is None else set(class_ids(classes, VOC_CLASSES, "voc").tolist())
    recs = []
    for image_id in ids:
        if max_images is not None and len(recs) >= max_images:
            break
        ann = require(root / "Annotations" / f"{image_id}.xml", "voc",
                      "every id in ImageSets/Main/*.txt needs an Annotations/<id>.xml")
        hw, objs = _xml_objects(ann)
        if keep is not None and _largest(objs)[0] not in keep:
            continue
        recs.append((image_id, hw, objs))
    if not recs:
        raise DataError(f"voc: no images of split {split!r} (and the chosen classes) under {root}")
    imgs, masks, objects, labels = [], [], [], []
    for image_id, hw, objs in recs:
        img = load_rgb(root / "JPEGImages" / f"{image_id}.jpg", "voc")
        if img.shape[:2] != hw:
            raise ShapeError(f"voc: JPEGImages/{image_id}.jpg is {img.shape[:2]}, Annotations/{image_id}.xml says "
                             f"{hw}; restore the matching files")
        big = _largest(objs)
        box_objs = np.asarray([o[2:] for o in objs], np.float32)
        if crop == "box":
            x0, y0, x1, y1 = box_window((big[2], big[3], big[4] - big[2], big[5] - big[3]), *hw)
            img = img[y0:y1, x0:x1]
            box_objs = box_objs - np.asarray([x0, y0, x0, y0], np.float32)
        h, w = img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        for k in np.argsort([-(o[4] - o[2]) * (o[5] - o[3]) for o in objs], kind="stable"):
            bx0, by0, bx1, by1 = box_objs[k]
            ys, xs = slice(max(int(np.floor(by0)), 0), max(int(np.ceil(by1)), 0)), \
                slice(max(int(np.floor(bx0)), 0), max(int(np.ceil(bx1)), 0))
            mask[ys, xs] = objs[k][0] + 1
        if size is not None:
            img, (mask,), _ = resize_example(img, size, [mask])
            box_objs = box_objs * np.asarray([size[1] / w, size[0] / h] * 2, np.float32)
        imgs.append(img)
        masks.append(mask)
        objects.append(np.concatenate([np.asarray([[o[0], o[1]] for o in objs], np.float32), box_objs], 1))
        labels.append(big[0])
    same_size(imgs, "voc", root)
    labels = np.asarray(labels, np.int32)
    names, obj_masks = VOC_CLASSES, np.stack(masks)
    if keep is not None:
        chosen = sorted(keep)
        labels = np.searchsorted(np.asarray(chosen), labels).astype(np.int32)
        names = tuple(VOC_CLASSES[c] for c in chosen)
    return Dataset(images=np.stack(imgs), labels=labels, num_classes=len(names), class_names=names,
                   masks={"object": obj_masks}, concepts={"object": ("background", *VOC_CLASSES)},
                   name=f"voc:{root}", meta={"path": str(root), "split": split, "ids": [r[0] for r in recs],
                                             "objects": objects, "crop": crop})


# ------------------------------------------------------------------------------------------------ Pascal-Part
# The coarse merging table: Pascal-Part's sided / numbered part names -> one name per part kind. Names not listed
# keep their own name after dropping a trailing "_<number>" (door_1 -> door). The grouping (e.g. lower and upper arm
# both "arm", paws "paw") is reconstructed; pass your own dict to reproduce a paper's table exactly.
COARSE_PARTS = {
    "leye": "eye", "reye": "eye", "lear": "ear", "rear": "ear", "lebrow": "eyebrow", "rebrow": "eyebrow",
    "llarm": "arm", "luarm": "arm", "rlarm": "arm", "ruarm": "arm", "lhand": "hand", "rhand": "hand",
    "llleg": "leg", "luleg": "leg", "rlleg": "leg", "ruleg": "leg", "lfoot": "foot", "rfoot": "foot",
    "lfleg": "leg", "rfleg": "leg", "lbleg": "leg", "rbleg": "leg", "lleg": "leg", "rleg": "leg",
    "lfpa": "paw", "rfpa": "paw", "lbpa": "paw", "rbpa": "paw", "lfho": "hoof", "rfho": "hoof", "lbho": "hoof",
    "rbho": "hoof", "lhorn": "horn", "rhorn": "horn", "lwing": "wing", "rwing": "wing",
    "leftmirror": "mirror", "rightmirror": "mirror", "fliplate": "licenseplate", "bliplate": "licenseplate",
    "fwheel": "wheel", "bwheel": "wheel",
}


def coarse_part_name(name: str) -> str:
    """``part_merge="coarse"``: :data:`COARSE_PARTS`, else the name without a trailing ``_<number>``."""
    return COARSE_PARTS.get(name, re.sub(r"_\d+$", "", name))


def _mat_str(v) -> str:
    v = np.asarray(v)
    return str(v.item() if v.size == 1 else "".join(map(str, v.ravel())))


def _read_part_mat(path: Path):
    """``[(class_ind, object_mask (H, W) bool, [(part_name, mask), ...]), ...]`` of one Annotations_Part file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError on damaged files
        raise DataError(f"pascal_part: {path}: cannot read the .mat file ({type(e).__name__}: {e}); restore it") from e
    try:
        objs = np.atleast_1d(mat["anno"].objects)
        out = []
        for o in objs:
            parts = [(_mat_str(p.part_name), np.asarray(p.mask) > 0) for p in np.atleast_1d(o.parts)
                     if hasattr(p, "part_name")]
            out.append((int(o.class_ind), np.asarray(o.mask) > 0, parts))
    except (KeyError, AttributeError, TypeError, ValueError):
        raise DataError(f"pascal_part: {path}: not a Pascal-Part annotation (needs anno.objects with class_ind, "
                        "mask, parts.part_name, parts.mask)") from None
    return out


def read_pascal_part(path: str | Path, split: str = "train", *, part_merge=None, size=None, classes=None,
                     max_images: int | None = None) -> Dataset:
    """VOC images + Pascal-Part object and part masks (see the module docstring)."""
    root = Path(path)
    ann_dir = require(root / "Annotations_Part", "pascal_part",
                      "a Pascal-Part folder holds JPEGImages/ and Annotations_Part/<id>.mat")
    require(root / "JPEGImages", "pascal_part", "a Pascal-Part folder holds JPEGImages/ and Annotations_Part/")
    have = sorted(p.stem for p in ann_dir.glob("*.mat"))
    if not have:
        raise DataError(f"pascal_part: {ann_dir} holds no .mat files")
    ids = [i for i in _split_ids(root, split, "pascal_part", fallback=have) if i in set(have)]
    if part_merge is None:
        merge = lambda n: n
    elif part_merge == "coarse":
        merge = coarse_part_name
    elif isinstance(part_merge, dict):
        merge = part_merge.get
    else:
        raise ConfigError(f"pascal_part: part_merge must be None, 'coarse' or a dict name -> merged name, "
                          f"got {part_merge!r}")
    keep = None if classes is None else set(class_ids(classes, VOC_CLASSES, "pascal_part").tolist())
    recs = []
    for image_id in ids:
        if max_images is not None and len(recs) >= max_images:
            break
        objs = _read_part_mat(ann_dir / f"{image_id}.mat")
        if not objs:
            raise DataError(f"pascal_part: {ann_dir / (image_id + '.mat')} has no objects")
        for ci, _, _ in objs:
            if not 1 <= ci <= 20:
                raise DataError(f"pascal_part: {ann_dir / (image_id + '.mat')}: class_ind {ci} not in 1..20")
        label = max(objs, key=lambda o: int(o[1].sum()))[0] - 1
        if keep is not None and label not in keep:
            continue
        recs.append((image_id, objs, label))
    if not recs:
        raise DataError(f"pascal_part: no annotated images of split {split!r} (and the chosen classes) under {root}")
    if isinstance(part_merge, dict):
        part_names = tuple(sorted(set(part_merge.values())))
    else:
        part_names = tuple(sorted({merge(n) for _, objs, _ in recs for _, _, ps in objs for n, _ in ps}))
    code = {n: i + 1 for i, n in enumerate(part_names)}
    imgs, obj_masks, part_masks = [], [], []
    for image_id, objs, _ in recs:
        img = load_rgb(root / "JPEGImages" / f"{image_id}.jpg", "pascal_part")
        hw = img.shape[:2]
        om, pm = np.zeros(hw, np.uint8), np.zeros(hw, np.uint16)
        for ci, m, parts in objs:
            if m.shape != hw or any(pmask.shape != hw for _, pmask in parts):
                raise ShapeError(f"pascal_part: {ann_dir / (image_id + '.mat')} masks are {m.shape}, "
                                 f"JPEGImages/{image_id}.jpg is {hw}; restore the matching files")
            om = np.where((om == 0) & m, ci, om)
            for name, pmask in parts:
                merged = merge(name)
                if merged is not None:
                    pm = np.where((pm == 0) & pmask, code[merged], pm)
        if size is not None:
            img, (om, pm), _ = resize_example(img, size, [om, pm])
        imgs.append(img)
        obj_masks.append(om)
        part_masks.append(pm)
    same_size(imgs, "pascal_part", root)
    labels = np.asarray([r[2] for r in recs], np.int32)
    names = VOC_CLASSES
    if keep is not None:
        chosen = sorted(keep)
        labels = np.searchsorted(np.asarray(chosen), labels).astype(np.int32)
        names = tuple(VOC_CLASSES[c] for c in chosen)
    return Dataset(images=np.stack(imgs), labels=labels, num_classes=len(names), class_names=names,
                   masks={"object": np.stack(obj_masks), "part": np.stack(part_masks)},
                   concepts={"object": ("background", *VOC_CLASSES), "part": ("-", *part_names)},
                   name=f"pascal_part:{root}", meta={"path": str(root), "split": split, "ids": [r[0] for r in recs]})
