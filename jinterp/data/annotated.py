"""Shared helpers of the annotated-set readers (CUB, VOC, Pascal-Part, Broden): line-numbered text tables, images
that load as RGB, box crops. Every problem is a one-line jinterp error naming the file (and line)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jinterp.errors import DataError, MissingFileError, ShapeError


def require(path: Path, kind: str, what: str) -> Path:
    """``path`` if it exists, else a MissingFileError saying what belongs there."""
    if not path.exists():
        raise MissingFileError(f"{kind}: {path} is missing; {what}")
    return path


def read_table(path: Path, kind: str, columns: list[tuple[str, type]]) -> list[tuple]:
    """A whitespace-separated text table (CUB's ``*.txt``): one row per non-empty line, typed by ``columns``.

    The last column may be ``str`` and then takes the rest of the line (CUB part names hold spaces).
    Returns ``[(line_number, value, ...), ...]``; a malformed line is a DataError naming file and line.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n = len(columns)
            fields = line.split(None, n - 1) if columns[-1][1] is str else line.split()
            if len(fields) != n:
                raise DataError(f"{kind}: {path} line {lineno}: expected {n} fields "
                                f"({' '.join(c for c, _ in columns)}), got {line.strip()!r}")
            try:
                rows.append((lineno, *(t(v.strip()) for (_, t), v in zip(columns, fields, strict=True))))
            except ValueError:
                raise DataError(f"{kind}: {path} line {lineno}: cannot parse {line.strip()!r} as "
                                f"{' '.join(c for c, _ in columns)}") from None
    return rows


def load_rgb(path: Path, kind: str) -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)``; grayscale / CMYK / palette images are converted to RGB."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise MissingFileError(f"{kind}: image {path} is missing; restore it from the original archive")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"{kind}: {path}: cannot decode image ({e}); the file is corrupt or truncated") from e


def box_window(box, h: int, w: int) -> tuple[int, int, int, int]:
    """Integer crop window ``(x0, y0, x1, y1)`` covering the float box ``(x, y, bw, bh)`` (pixel ``j`` spans
    ``[j, j+1)``), clipped to the image; never empty."""
    x, y, bw, bh = box
    x0, y0 = min(max(int(math.floor(x)), 0), w - 1), min(max(int(math.floor(y)), 0), h - 1)
    x1, y1 = max(min(int(math.ceil(x + bw)), w), x0 + 1), max(min(int(math.ceil(y + bh)), h), y0 + 1)
    return x0, y0, x1, y1


def same_size(images: list[np.ndarray], kind: str, root: Path) -> None:
    shapes = sorted({im.shape[:2] for im in images})
    if len(shapes) > 1:
        raise ShapeError(f"{kind}: images under {root} have several sizes ({shapes[:3]}...); pick one with the "
                         f"size option, e.g. {kind}:{root}:size=224")
