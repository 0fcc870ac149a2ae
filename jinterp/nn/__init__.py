"""Layers and ops with PyTorch semantics (NHWC); the one place convolutions are formulated."""

from jinterp.nn.layers import BatchNorm2d, Conv2d, ConvTranspose2d, Linear
from jinterp.nn.ops import (
    adaptive_avg_pool2d,
    avg_pool2d,
    conv2d,
    conv_transpose2d,
    flatten_nchw,
    max_pool2d,
)

__all__ = [
    "BatchNorm2d", "Conv2d", "ConvTranspose2d", "Linear",
    "adaptive_avg_pool2d", "avg_pool2d", "conv2d", "conv_transpose2d", "flatten_nchw", "max_pool2d",
]
