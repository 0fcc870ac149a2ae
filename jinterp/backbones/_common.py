"""Helpers shared by the backbone modules."""

from __future__ import annotations

import jax

from jinterp.errors import ShapeError


def check_images(x: jax.Array, arch: str, min_size: int = 1) -> None:
    """Raise ``ShapeError`` unless ``x`` is an NHWC batch with spatial size >= ``min_size``.

    Checked at trace time (shapes are static), so it costs nothing inside ``jit``.
    """
    if x.ndim != 4:
        raise ShapeError(
            f"{arch}: expected images of shape (N, H, W, C) (NHWC), got shape {tuple(x.shape)}; "
            "add a batch axis with x[None] or a channel axis with x[..., None]")
    if min(x.shape[1:3]) < min_size:
        raise ShapeError(
            f"{arch}: images of {x.shape[1]}x{x.shape[2]} px are too small; this architecture needs at "
            f"least {min_size}x{min_size}")
