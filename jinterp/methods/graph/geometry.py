"""Static per-layer geometry of the explanatory graph and the released code's rounding/window helpers."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


def mround(x):
    """MATLAB/C ``round``: half away from zero (``jnp.round`` rounds half to even)."""
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def mround_np(x):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@dataclasses.dataclass(frozen=True)
class LayerGeom:
    """Everything static about one graph layer (hashable: a jit static argument).

    Attributes:
      h, w, c: map size and filters; k: nodes per filter; s: candidate positions per axis (min(S, H, W)).
      r_max: the largest window half-size, ``round(max_range·H/2)``; max_range, deform_ratio: window rule.
      map_sigma: evidence kernel std in cells (``map_delta·H``); init_sigma: ``init_delta·H``.
      sigma_min, sigma_max: bounds of σ; tau: background weight; faithful: released-code quirks on.
      stride, center: image pixels per cell and the 1-based pixel center of cell 1 (``x2p_.m``).
    """

    h: int
    w: int
    c: int
    k: int
    s: int
    r_max: int
    max_range: float
    deform_ratio: float
    map_sigma: float
    init_sigma: float
    sigma_min: float
    sigma_max: float
    tau: float
    faithful: bool
    stride: float
    center: float

    @property
    def num_nodes(self) -> int:
        return self.c * self.k

    @property
    def window(self) -> int:
        return 2 * self.r_max + 1


def nodes_per_filter(h: int, w: int, density: float) -> int:
    """K = ceil(H·W·density) (``initializeModel.m``)."""
    return int(math.ceil(h * w * density - 1e-9))


def layer_geom(cfg, i: int, map_shape: tuple[int, int, int], image_size: int) -> LayerGeom:
    """Geometry of graph layer ``i`` (bottom = 0) of ``cfg`` (a GraphConfig) for an (H, W, C) map."""
    h, w, c = (int(v) for v in map_shape)
    stride = float(cfg.strides[i]) if cfg.strides else image_size / h
    center = float(cfg.centers[i]) if cfg.centers else (stride + 1.0) / 2.0
    smin, smax = cfg.sigma_bounds(i, h)
    return LayerGeom(h=h, w=w, c=c, k=nodes_per_filter(h, w, cfg.density[i]), s=min(cfg.candidates, h, w),
                     r_max=int(mround_np(cfg.max_range * h / 2)), max_range=cfg.max_range,
                     deform_ratio=cfg.deform_ratio, map_sigma=cfg.map_delta * h, init_sigma=cfg.init_delta * h,
                     sigma_min=smin, sigma_max=smax, tau=cfg.tau, faithful=cfg.faithful, stride=stride,
                     center=center)


def half_range(geom: LayerGeom, sigma):
    """Window half-size per node ``round(min(max_range·H/2, deform_ratio·σ))`` (``getBasicSettings.m``), int32."""
    return mround(jnp.minimum(geom.max_range * geom.h / 2, sigma * geom.deform_ratio)).astype(jnp.int32)


def candidate_offsets(geom: LayerGeom, r):
    """Bin centers of ``linspace(-R, R, S+1)``: (..., S) offsets for half-sizes ``r`` (...)."""
    r = jnp.asarray(r, jnp.float32)[..., None]
    j = jnp.arange(geom.s, dtype=jnp.float32)
    return -r + (2 * j + 1) * r / geom.s


def to_pixels(cells, geom: LayerGeom):
    """0-based (h, w) cells -> jinterp's continuous pixel frame (1-based ``x2p`` value minus 0.5)."""
    return geom.center + jnp.asarray(cells) * geom.stride - 0.5
