"""CUB-200-2011 reader (``cub:PATH``), from the data set's own published layout (Wah et al., 2011, README):

    PATH/images.txt               <image_id> <image_name>            image_name relative to PATH/images/
    PATH/image_class_labels.txt   <image_id> <class_id>              class ids 1..200
    PATH/classes.txt              <class_id> <class_name>
    PATH/train_test_split.txt     <image_id> <is_training_image>     1 = train, 0 = test
    PATH/bounding_boxes.txt       <image_id> <x> <y> <width> <height>   float pixels, x, y = top-left corner
    PATH/parts/parts.txt          <part_id> <part_name>              15 parts; names hold spaces ("left eye")
    PATH/parts/part_locs.txt      <image_id> <part_id> <x> <y> <visible>  float pixels; invisible parts are 0 0 0
    PATH/segmentations/<image_name with .png>   optional (a separate download): grey-level figure masks

Coordinates are taken as continuous pixel coordinates with pixel ``j`` spanning ``[j, j+1)`` (the Dataset
convention); CUB's README does not say whether its coordinates are 0- or 1-based, and the values are used as
written [reconstructed]. Landmarks of invisible parts are (0, 0) with ``landmark_visible`` False.

Options: ``crop="box"`` crops each image to its bounding box (the smallest pixel window covering it; landmarks are
shifted, and parts falling outside the window become invisible), then ``size=(H, W)`` resizes (bilinear image,
landmarks scaled; required when the images differ in size, as CUB's do); ``classes=`` keeps some classes
(names like ``001.Black_footed_Albatross`` or 0-based ids) relabelled 0..k-1; ``max_images=`` keeps the first N
of the split in images.txt order; ``lazy=True`` (with ``size``) decodes images per batch (geometry comes from the
JPEG headers). Grayscale JPEGs (CUB holds a few) load as RGB. The segmentation masks (values
0..255, the average of several annotators) become ``masks["object"]`` = 1 where the value is >= 128 (a majority
of annotators) [reconstructed threshold].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jinterp.data.annotated import box_window, load_rgb, read_table, require, same_size
from jinterp.data.dataset import Dataset
from jinterp.data.lazy import LazyArray
from jinterp.data.spec import class_ids, resize_example
from jinterp.errors import ConfigError, DataError, ShapeError

_FILES = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt", "bounding_boxes.txt",
          "parts/parts.txt", "parts/part_locs.txt")


def _by_id(rows, path: Path, what: str) -> dict:
    out = {}
    for lineno, key, *vals in rows:
        if key in out:
            raise DataError(f"cub: {path} line {lineno}: {what} {key} listed twice")
        out[key] = vals[0] if len(vals) == 1 else tuple(vals)
    return out


def _image_hw(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header (Pillow reads no pixels here)."""
    from PIL import Image, UnidentifiedImageError

    require(path, "cub", "restore it from the CUB_200_2011 archive")
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"cub: {path}: cannot decode image ({e}); the file is corrupt or truncated") from e


def read_cub(path: str | Path, split: str = "train", *, crop: str = "none", size=None, classes=None,
             max_images: int | None = None, lazy: bool = False) -> Dataset:
    """CUB-200-2011 as a Dataset: RGB images, class labels 0..199, 15 part landmarks, optional object masks."""
    root = Path(path)
    for f in _FILES:
        require(root / f, "cub", "a CUB_200_2011 folder holds images.txt, image_class_labels.txt, classes.txt, "
                                 "train_test_split.txt, bounding_boxes.txt, parts/parts.txt, parts/part_locs.txt")
    if crop not in ("box", "none"):
        raise DataError(f"cub: crop={crop!r} unknown; use crop='box' or 'none'")
    images = _by_id(read_table(root / "images.txt", "cub", [("image_id", int), ("image_name", str)]),
                    root / "images.txt", "image_id")
    label_of = _by_id(read_table(root / "image_class_labels.txt", "cub", [("image_id", int), ("class_id", int)]),
                      root / "image_class_labels.txt", "image_id")
    class_rows = read_table(root / "classes.txt", "cub", [("class_id", int), ("class_name", str)])
    is_train = _by_id(read_table(root / "train_test_split.txt", "cub", [("image_id", int), ("is_training", int)]),
                      root / "train_test_split.txt", "image_id")
    boxes = _by_id(read_table(root / "bounding_boxes.txt", "cub", [("image_id", int), ("x", float), ("y", float),
                                                                    ("width", float), ("height", float)]),
                   root / "bounding_boxes.txt", "image_id")
    part_rows = read_table(root / "parts" / "parts.txt", "cub", [("part_id", int), ("part_name", str)])
    loc_rows = read_table(root / "parts" / "part_locs.txt", "cub", [("image_id", int), ("part_id", int),
                                                                     ("x", float), ("y", float), ("visible", int)])

    class_ids_file = [c for _, c, _ in class_rows]
    if class_ids_file != list(range(1, len(class_rows) + 1)):
        raise DataError(f"cub: {root / 'classes.txt'} must number the classes 1..{len(class_rows)} in order")
    class_names = tuple(n for _, _, n in class_rows)
    part_ids = [p for _, p, _ in part_rows]
    if part_ids != list(range(1, len(part_rows) + 1)):
        raise DataError(f"cub: {root / 'parts/parts.txt'} must number the parts 1..{len(part_rows)} in order")
    part_names = tuple(n for _, _, n in part_rows)
    n_parts = len(part_names)

    for table, fname in ((label_of, "image_class_labels.txt"), (is_train, "train_test_split.txt"),
                         (boxes, "bounding_boxes.txt")):
        lacking = [i for i in images if i not in table]
        if lacking:
            raise DataError(f"cub: {root / fname} lists no entry for image_id {lacking[0]} of images.txt; "
                            "the annotation files must cover every image")
    for image_id, cls in label_of.items():
        if not 1 <= cls <= len(class_names):
            raise DataError(f"cub: {root / 'image_class_labels.txt'}: image_id {image_id} has class {cls}, "
                            f"classes.txt has 1..{len(class_names)}")

    ids = [i for i in images if split == "all" or (is_train[i] == 1) == (split == "train")]
    keep = None if classes is None else set(class_ids(classes, class_names, "cub").tolist())
    if keep is not None:
        ids = [i for i in ids if label_of[i] - 1 in keep]
    ids = ids[:max_images]
    if not ids:
        raise DataError(f"cub: no images of split {split!r}{'' if keep is None else ' and the chosen classes'} "
                        f"in {root}")
    wanted = set(ids)

    row_of = {i: r for r, i in enumerate(ids)}
    locs, vis = np.zeros((len(ids), n_parts, 2), np.float32), np.zeros((len(ids), n_parts), bool)
    for lineno, image_id, part_id, x, y, visible in loc_rows:
        if not 1 <= part_id <= n_parts or visible not in (0, 1):
            raise DataError(f"cub: {root / 'parts/part_locs.txt'} line {lineno}: part {part_id} / visible "
                            f"{visible} out of range (parts 1..{n_parts}, visible 0 or 1)")
        if image_id in wanted:
            r = row_of[image_id]
            locs[r, part_id - 1] = (x, y) if visible else (0.0, 0.0)
            vis[r, part_id - 1] = bool(visible)

    seg_root = root / "segmentations" if (root / "segmentations").is_dir() else None
    # Geometry from the JPEG headers only (no pixel decoding): crop windows, landmarks and visibility.
    windows, out_lms = [], []
    for r, image_id in enumerate(ids):
        h, w = _image_hw(root / "images" / images[image_id])
        x0, y0, x1, y1 = box_window(boxes[image_id], h, w) if crop == "box" else (0, 0, w, h)
        lm = locs[r] - np.asarray([x0, y0], np.float32)
        vis[r] &= (lm[:, 0] >= 0) & (lm[:, 1] >= 0) & (lm[:, 0] < x1 - x0) & (lm[:, 1] < y1 - y0)
        if size is not None:
            lm = lm * np.asarray([size[1] / (x1 - x0), size[0] / (y1 - y0)], np.float32)
        windows.append((h, w, x0, y0, x1, y1))
        out_lms.append(np.where(vis[r][:, None], lm, 0.0).astype(np.float32))

    def example(r: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decodes image ``r`` (and its segmentation), crops and resizes it."""
        name = images[ids[r]]
        h, w, x0, y0, x1, y1 = windows[r]
        img = load_rgb(root / "images" / name, "cub")
        seg = None
        if seg_root is not None:
            seg_path = require(seg_root / (str(Path(name).with_suffix("")) + ".png"), "cub",
                               "segmentations/ must hold one PNG per image (or remove the folder)")
            from PIL import Image
            with Image.open(seg_path) as s:
                grey = np.asarray(s.convert("L"), np.uint8)
            if grey.shape != (h, w):
                raise ShapeError(f"cub: segmentation {seg_path} is {grey.shape}, its image {name} is {(h, w)}")
            seg = (grey >= 128).astype(np.uint8)[y0:y1, x0:x1]
        img = img[y0:y1, x0:x1]
        if size is not None:
            img, ms, _ = resize_example(img, size, [] if seg is None else [seg])
            seg = ms[0] if ms else None
        return img, seg

    if lazy:
        if size is None:
            raise ConfigError("cub: lazy=True needs size= (CUB images differ in size), e.g. cub:PATH:lazy=1,size=224")
        out_imgs = LazyArray(len(ids), (*size, 3), np.uint8, lambda r: example(r)[0])
        obj_masks = None if seg_root is None else LazyArray(len(ids), size, np.uint8, lambda r: example(r)[1])
    else:
        decoded = [example(r) for r in range(len(ids))]
        same_size([d[0] for d in decoded], "cub", root)
        out_imgs = np.stack([d[0] for d in decoded])
        obj_masks = None if seg_root is None else np.stack([d[1] for d in decoded])
    labels = np.asarray([label_of[i] - 1 for i in ids], np.int32)
    names = class_names
    if keep is not None:  # relabel the chosen classes 0..k-1
        chosen = sorted(keep)
        labels = np.searchsorted(np.asarray(chosen), labels).astype(np.int32)
        names = tuple(class_names[c] for c in chosen)
    masks = {} if obj_masks is None else {"object": obj_masks}
    return Dataset(images=out_imgs, labels=labels, num_classes=len(names), class_names=names,
                   masks=masks, landmarks=np.stack(out_lms), landmark_visible=vis,
                   concepts={"object": ("background", "bird")} if masks else {},
                   name=f"cub:{root}",
                   meta={"path": str(root), "split": split, "image_ids": ids, "part_names": part_names,
                         "files": [images[i] for i in ids],
                         "boxes_in_file": np.asarray([boxes[i] for i in ids], np.float32), "crop": crop})
