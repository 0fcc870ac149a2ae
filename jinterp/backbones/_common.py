"""Helpers shared by the backbone modules."""

from __future__ import annotations

import flax.linen as nn
import jax

from jinterp.errors import ShapeError
from jinterp.nn.layers import BatchNorm2d, Conv2d


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


def basic_branch(x: jax.Array, planes: int, stride: int, train: bool) -> jax.Array:
    """The residual branch of a ResNet basic block: 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN.

    Called inside a block's ``nn.compact`` ``__call__``, so its layers are that block's submodules ``conv1``,
    ``bn1``, ``conv2``, ``bn2`` (the PyTorch names ``torch_import`` maps). Shared by torchvision's and
    akamaster's CIFAR ``BasicBlock``, which differ only in the shortcut.
    """
    out = Conv2d(planes, 3, stride, padding=1, use_bias=False, name="conv1")(x)
    out = nn.relu(BatchNorm2d(name="bn1")(out, train))
    out = Conv2d(planes, 3, 1, padding=1, use_bias=False, name="conv2")(out)
    return BatchNorm2d(name="bn2")(out, train)
