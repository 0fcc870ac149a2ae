"""Feature normalization by the negative images' per-element std (``getRoughCNN.m``, spec §A2.4).

For a graph layer, ``std[h, w, c]`` is the population std (``E[x²] − E[x]²``, accumulated in float64) of the
pre-ReLU output over the negative images; a positive image's map becomes ``x / std`` where ``x > 0`` and −1
elsewhere (only ``max(·, 0)`` is used later). The released code's 8-bit storage of the maps is skipped. Elements
with zero std (a dead unit on every negative) are divided by the smallest positive std of the layer instead of 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from jinterp.errors import DataError


def negative_std(batches: Iterable[np.ndarray]) -> np.ndarray:
    """Per-element population std over a stream of (B, H, W, C) batches of negative-image features."""
    s1 = s2 = None
    n = 0
    for x in batches:
        x = np.asarray(x, np.float64)
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 = (x * x).sum(0) if s2 is None else s2 + (x * x).sum(0)
        n += x.shape[0]
    if n == 0:
        raise DataError("negative_std: no negative images were given")
    var = np.maximum(s2 / n - (s1 / n) ** 2, 0.0)
    std = np.sqrt(var)
    pos = std[std > 0]
    floor = pos.min() if pos.size else 1.0
    return np.where(std > 0, std, floor).astype(np.float32)


def normalize(x: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``x / std`` where ``x > 0``, −1 elsewhere (float32)."""
    x = np.asarray(x, np.float32)
    return np.where(x > 0, x / std, np.float32(-1.0)).astype(np.float32)
