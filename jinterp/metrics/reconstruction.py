"""Reconstruction metrics: how close decoded images are to the originals (ClaDec, RefAE, any auto-encoder).

All functions take reconstructions and originals of the same shape ``(..., H, W, C)`` as float in [0, 1] or
uint8 in [0, 255] (converted to [0, 1]); a leading model axis is fine. Two normalisations are in use:

* :func:`mse` — the mean over every element, ``torch.nn.MSELoss()`` (ClaDec's official code, ~0.01 on
  Fashion-MNIST);
* :func:`sse_per_image` — the sum of squared errors over one image's pixels and channels, averaged over images
  (the third-party Keras reimplementation's reconstruction loss, ~20 on Fashion-MNIST).

They differ by the factor ``H·W·C``, so a loss weight α tuned for one is not the same trade-off for the other.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jinterp.errors import ShapeError


def as_unit(images) -> jnp.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]; floats are cast to float32 unchanged."""
    x = jnp.asarray(images)
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def _pair(xhat, x) -> tuple[jnp.ndarray, jnp.ndarray]:
    xhat, x = as_unit(xhat), as_unit(x)
    if xhat.shape[-3:] != x.shape[-3:] or x.ndim < 3:
        raise ShapeError(f"reconstructions {tuple(xhat.shape)} and originals {tuple(x.shape)} must both end in "
                         "(H, W, C) with the same sizes")
    return xhat, x


def squared_error_per_image(xhat, x) -> jnp.ndarray:
    """``Σ_{h,w,c} (x̂ - x)²`` per image: shape ``broadcast(x̂, x).shape[:-3]``."""
    xhat, x = _pair(xhat, x)
    return jnp.sum(jnp.square(xhat - x), axis=(-3, -2, -1))


def mse(xhat, x, axis_models: bool = False) -> jnp.ndarray:
    """Mean squared error over all elements; with ``axis_models`` one value per leading model index."""
    xhat, x = _pair(xhat, x)
    d = jnp.square(xhat - x)
    if axis_models:
        return jnp.mean(d.reshape(d.shape[0], -1), axis=1)
    return jnp.mean(d)


def sse_per_image(xhat, x, axis_models: bool = False) -> jnp.ndarray:
    """Mean over images of the per-image sum of squared errors (Keras ClaDec's ``reconstruction_loss``)."""
    per = squared_error_per_image(xhat, x)
    if axis_models:
        return jnp.mean(per.reshape(per.shape[0], -1), axis=1)
    return jnp.mean(per)


def psnr(xhat, x, axis_models: bool = False) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB for a [0, 1] range: ``10·log10(1 / MSE)`` over the whole set."""
    return -10.0 * jnp.log10(jnp.maximum(mse(xhat, x, axis_models), 1e-12))


def to_uint8(x) -> np.ndarray:
    """[0, 1] float -> uint8 by rounding (how reconstructions are stored for the retrain protocol)."""
    return np.asarray(jnp.clip(jnp.round(jnp.asarray(x, jnp.float32) * 255.0), 0, 255).astype(jnp.uint8))


def summary(xhat, x) -> dict[str, float]:
    """``{"mse", "sse_per_image", "psnr"}`` as host floats."""
    return {"mse": float(mse(xhat, x)), "sse_per_image": float(sse_per_image(xhat, x)),
            "psnr": float(psnr(xhat, x))}
