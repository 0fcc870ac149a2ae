"""Write data in the Broden layout (joinseg's, as :mod:`jinterp.data.broden` reads it), e.g. synthparts at 224 px.

Used by the tests' fixture writers and by ``jinterp/bench/broden_scale.py`` (dissection of a Broden-format set
larger than RAM). :func:`write_synthparts_broden` lays synthparts out as Broden does:

    index.csv       image,split,ih,iw,sh,sw,color,object,part,texture  (pixel cells: one PNG each; texture: numbers)
    category.csv    color, object, part, texture
    label.csv       one global number per name: colors, then objects, then parts, then textures (not "plain")
    c_<cat>.csv     code -> global number per category
    images/synthparts/<split>_<i>.jpg and <split>_<i>_<cat>.png  masks at ``sh = size // 2`` (R + 256 G = number)

The masks are synthparts' own label maps nearest-downsampled by 2 (Broden stores segmentations at half size).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from jinterp.data import synthparts


def write_csv(path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(header)
        wr.writerows(rows)


def encode(num: np.ndarray) -> np.ndarray:
    """Global label numbers ``(H, W)`` -> Broden mask RGB ``(H, W, 3)`` uint8 (R + 256 * G; B unused)."""
    num = np.asarray(num)
    return np.stack([num % 256, num // 256, np.zeros_like(num)], -1).astype(np.uint8)


PIXEL_CATEGORIES = ("color", "object", "part")


def write_synthparts_broden(root: str | Path, n: int, *, size: int = 224, seed: int = 0, split: str = "train",
                            config: synthparts.SynthPartsConfig | None = None, chunk: int = 64,
                            jpeg_quality: int = 90) -> dict[str, dict[str, int]]:
    """Write synthparts images ``0..n-1`` of ``(seed, split)`` as a Broden folder at ``root``; generated ``chunk``
    images at a time, so memory stays ``O(chunk · size²)`` whatever ``n``.

    Returns ``{category: {name: global number}}`` (the label numbering written to label.csv).
    """
    root = Path(root)
    cfg = config or synthparts.SynthPartsConfig(size=size)
    names = synthparts.concepts(cfg)
    cat_names = {"color": names["color"][1:], "object": names["object"][1:], "part": names["part"][1:],
                 "texture": names["texture"][1:]}  # texture 0 ("plain") = no label
    number, next_num = {}, 1
    for c, nms in cat_names.items():
        number[c] = {}
        for nm in nms:
            number[c][nm] = next_num
            next_num += 1
    (root / "images" / "synthparts").mkdir(parents=True, exist_ok=True)
    write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
              [(c, min(number[c].values()), max(number[c].values()), len(number[c]), n) for c in number])
    write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
              [(num, nm, f"{c}({n})", n, 0.0, "") for c in number for nm, num in number[c].items()])
    for c in number:
        write_csv(root / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
                  [(code + 1, number[c][nm], nm, n, 0.0) for code, nm in enumerate(cat_names[c])])
    # a label value v >= 1 of synthparts' category c is global number lut[c][v] (0 stays 0)
    lut = {c: np.asarray([0, *(number[c][nm] for nm in cat_names[c])], np.int32) for c in PIXEL_CATEGORIES}
    sh = cfg.size // 2
    rows = []
    for start in range(0, n, chunk):
        out = synthparts.generate(min(chunk, n - start), seed=seed, start=start, split=split, config=cfg)
        for j in range(len(out["image"])):
            stem = f"synthparts/{split}_{start + j:07d}"
            Image.fromarray(out["image"][j]).save(root / "images" / f"{stem}.jpg", quality=jpeg_quality)
            cells = {}
            for c in PIXEL_CATEGORIES:
                half = lut[c][out[c][j, ::2, ::2]]  # nearest downsample by 2 (top-left pixel of each 2x2 cell)
                Image.fromarray(encode(half)).save(root / "images" / f"{stem}_{c}.png")
                cells[c] = f"{stem}_{c}.png"
            tex = int(out["texture"][j])
            texture = str(number["texture"][names["texture"][tex]]) if tex > 0 else ""
            rows.append([f"{stem}.jpg", split, cfg.size, cfg.size, sh, sh, cells["color"], cells["object"],
                         cells["part"], texture])
    write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "texture"],
              rows)
    return number
