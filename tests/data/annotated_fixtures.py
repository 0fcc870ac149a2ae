"""Writers of tiny data sets in the official layouts of CUB-200-2011, VOC, Pascal-Part and Broden (tests only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from jinterp.data.broden_writer import encode  # noqa: F401  (tests import it from here)
from jinterp.data.broden_writer import write_csv as _write_csv

CUB_PARTS = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing", "nape",
             "right eye", "right leg", "right wing", "tail", "throat")


def decoded(path):
    """What a decoder returns for an image file, as RGB (the exact expectation for lossy JPEGs)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def write_cub(root, seed=0, segmentations=False):
    """6 images of 3 classes, sizes differ, image 3 is a grayscale JPEG; returns the truth per image id."""
    rng = np.random.default_rng(seed)
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    (root / "parts").mkdir(parents=True)
    truth = {}
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for i in range(1, 7):
        cls = (i - 1) % 3 + 1
        h, w = 20 + 2 * i, 30 - i
        name = f"{classes[cls - 1]}/img_{i:04d}.jpg"
        (root / "images" / classes[cls - 1]).mkdir(parents=True, exist_ok=True)
        if i == 3:
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(root / "images" / name)
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name, quality=95)
        box = (2.0, 3.0, 12.0, 10.5)  # x y width height; the window is x 2..14, y 3..14 (13.5 rounded up)
        locs = np.zeros((15, 2), np.float32)
        vis = np.zeros(15, bool)
        for p in range(15):
            if (p + i) % 4 == 0:  # invisible: CUB writes 0 0 0
                continue
            vis[p] = True
            locs[p] = (rng.uniform(2.5, 13.5), rng.uniform(3.5, 13.5))
        if i == 2:
            locs[1], vis[1] = (w - 1.5, 1.0), True  # a visible part outside the box
        truth[i] = dict(name=name, cls=cls - 1, train=i % 3 != 0, hw=(h, w), box=box, locs=locs, vis=vis)
        lines["images"].append(f"{i} {name}")
        lines["labels"].append(f"{i} {cls}")
        lines["split"].append(f"{i} {int(i % 3 != 0)}")
        lines["boxes"].append(f"{i} {box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}")
        lines["locs"] += [f"{i} {p + 1} {locs[p, 0]:.6f} {locs[p, 1]:.6f} {int(vis[p])}" if vis[p] else
                          f"{i} {p + 1} 0.0 0.0 0" for p in range(15)]
        truth[i]["locs"] = np.asarray([[float(f"{x:.6f}") for x in xy] for xy in locs], np.float32)
        if segmentations:
            seg = np.zeros((h, w), np.uint8)
            seg[4:12, 3:10] = 255
            seg[12, 3:10] = 102  # a minority of annotators: not the bird
            (root / "segmentations" / classes[cls - 1]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(root / "segmentations" / name.replace(".jpg", ".png"))
            truth[i]["seg"] = (seg >= 128).astype(np.uint8)
    for fname, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                       ("train_test_split.txt", "split"), ("bounding_boxes.txt", "boxes"),
                       ("parts/part_locs.txt", "locs")):
        (root / fname).write_text("\n".join(lines[key]) + "\n")
    (root / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    (root / "parts" / "parts.txt").write_text("".join(f"{k + 1} {p}\n" for k, p in enumerate(CUB_PARTS)))
    return truth


VOC_XML = """<annotation>
  <folder>VOC2010</folder><filename>{id}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""
VOC_OBJ = """  <object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>
    <difficult>{difficult}</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>
"""


def write_voc(root, seed=0, same_size=False):
    """4 train + 2 val images with 1-2 boxes each (one difficult); returns {id: (hw, [(cls, diff, box)])}. Image
    widths differ (22..27 px) unless ``same_size`` (all 20 x 24)."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    objects = {
        "2010_000001": [("dog", 0, (3, 4, 14, 12)), ("person", 0, (10, 2, 20, 18))],
        "2010_000002": [("cat", 0, (1, 1, 8, 8))],
        "2010_000003": [("bird", 1, (1, 1, 20, 20)), ("dog", 0, (5, 5, 12, 11))],  # larger box is difficult
        "2010_000004": [("car", 0, (2, 3, 15, 9))],
        "2010_000005": [("dog", 0, (4, 4, 16, 16))],
        "2010_000006": [("cat", 0, (2, 2, 9, 14))],
    }
    truth = {}
    for k, (image_id, objs) in enumerate(objects.items()):
        h, w = 20, 24 if same_size else 22 + k
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        body = "".join(VOC_OBJ.format(name=n, difficult=d, xmin=b[0], ymin=b[1], xmax=b[2], ymax=b[3])
                       for n, d, b in objs)
        (root / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, w=w, h=h, objects=body))
        truth[image_id] = ((h, w), objs)
    ids = list(objects)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    return truth


def write_pascal_part(root, seed=0):
    """3 images with Pascal-Part .mat annotations (scipy.io.savemat, the published anno struct); returns masks."""
    import scipy.io

    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations_Part").mkdir()
    truth = {}
    for k in range(3):
        image_id = f"2008_00000{k}"
        h, w = 12, 14
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        dog = np.zeros((h, w), np.uint8)
        dog[2:10, 1:8] = 1
        head, lfleg, rfleg = (np.zeros((h, w), np.uint8) for _ in range(3))
        head[2:4, 1:4] = 1
        lfleg[8:10, 1:3] = 1
        rfleg[8:10, 5:8] = 1
        person = np.zeros((h, w), np.uint8)
        person[0:12, 8:14 - k] = 1  # 12 * (6 - k) pixels: larger than the dog (56) in images 0 and 1
        phead = np.zeros((h, w), np.uint8)
        phead[0:2, 8:11] = 1
        parts_dtype = [("part_name", "O"), ("mask", "O")]
        dog_parts = np.array([("head", head), ("lfleg", lfleg), ("rfleg", rfleg)], dtype=parts_dtype)
        person_parts = np.array([("head", phead)], dtype=parts_dtype)
        objs = np.array([("dog", 12, dog, dog_parts.reshape(1, -1)),
                         ("person", 15, person, person_parts.reshape(1, -1))],
                        dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]).reshape(1, -1)
        anno = np.array([(image_id, objs)], dtype=[("imname", "O"), ("objects", "O")])
        scipy.io.savemat(root / "Annotations_Part" / f"{image_id}.mat", {"anno": anno})
        obj = np.where(dog > 0, 12, np.where(person > 0, 15, 0))
        truth[image_id] = dict(object=obj, parts={"head": head | phead, "lfleg": lfleg, "rfleg": rfleg},
                               label=14 if 12 * (6 - k) > 56 else 11)
    return truth


# ------------------------------------------------------------------------------------------------ Broden
def write_broden_hard(root, n=6, ih=16, sh=8, seed=0, n_train=4):
    """A Broden folder (joinseg layout) with the hard cases: overlapping part planes, multi-label texture cells,
    ``ring`` shared by object and part (one global number, listed in c_object.csv and c_part.csv), a label number
    needing the G channel. Images ``0..n_train-1`` are train, the rest val. Returns every plane as global numbers at
    (sh, sw) and every image-level number list."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = [(1, "red", "color(6)", 0.5), (2, "blue", "color(6)", 0.4), (3, "ring", "object(3);part(4)", 0.2),
              (300, "disc", "object(6)", 0.3), (4, "head", "part(6)", 0.1), (5, "leg", "part(5)", 0.1),
              (6, "beach", "scene(3)", 0.0), (7, "forest", "scene(3)", 0.0), (8, "striped", "texture(4)", 0.0),
              (9, "dotted", "texture(3)", 0.0)]
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               [(num, nm, cat, 1, cov, "") for num, nm, cat, cov in labels])
    cats = ["color", "object", "part", "scene", "texture"]
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], [(c, 0, 0, 0, 0) for c in cats])
    # per-category coverage: ring covers more as an object (0.3) than as a part (0.1)
    c_rows = {"color": [(1, 1, "red", 6, 0.5), (2, 2, "blue", 6, 0.4)],
              "object": [(1, 3, "ring", 3, 0.3), (2, 300, "disc", 6, 0.3)],
              "part": [(1, 3, "ring", 4, 0.1), (2, 4, "head", 6, 0.1), (3, 5, "leg", 5, 0.1)],
              "scene": [(1, 6, "beach", 3, 0.0), (2, 7, "forest", 3, 0.0)],
              "texture": [(1, 8, "striped", 4, 0.0), (2, 9, "dotted", 3, 0.0)]}
    for c, rows in c_rows.items():
        _write_csv(root / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"], rows)
    (root / "images" / "ade").mkdir(parents=True)
    index, truth = [], []
    for i in range(n):
        stem = f"ade/im{i}"
        Image.fromarray(rng.integers(0, 256, (ih, ih, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg")
        color = rng.choice([0, 1, 2], (sh, sh))
        obj = np.zeros((sh, sh), int)
        obj[1:6, 1:7] = 300 if i % 2 else 3
        part1, part2 = np.zeros((sh, sh), int), np.zeros((sh, sh), int)
        part1[2:4, 1:4] = 4
        part2[2:6, 2:6] = 5  # overlaps part1 on [2:4, 2:4]
        part2[6:8, 0:2] = 3  # "ring" as a part
        planes = {"color": [color], "object": [obj] if i != 0 else [], "part": [part1, part2] if i != 1 else [part1]}
        cols = {}
        for c, pls in planes.items():
            names = []
            for k, pl in enumerate(pls):
                name = f"{stem}_{c}_{k}.png"
                Image.fromarray(encode(pl)).save(root / "images" / name)
                names.append(name)
            cols[c] = ";".join(names)
        texture = [8, 9] if i % 3 == 0 else ([9] if i % 3 == 1 else [])
        scene = [6] if i % 2 else [7]
        truth.append(dict(planes=planes, texture=texture, scene=scene))
        index.append([cols["part"], f"{stem}.jpg", "train" if i < n_train else "val", ih, ih, sh, sh, cols["color"],
                      cols["object"], ";".join(map(str, scene)), ";".join(map(str, texture))])
    _write_csv(root / "index.csv", ["part", "image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene",
                                    "texture"], index)
    return truth
