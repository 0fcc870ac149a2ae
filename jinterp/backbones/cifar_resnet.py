"""CIFAR ResNets of He et al. (2016, section 4.2) as implemented by akamaster/pytorch_resnet_cifar10.

Depth 6n+2 (20, 32, 44, 56, 110): a 3x3 conv to 16 channels, three stages of n basic blocks with 16, 32, 64
channels (stride 2 at the first block of stages 2 and 3), global average pool, ``linear``. Shortcut
"option A": when the shape changes, take every second pixel and zero-pad the channels (no parameters).

Feature names: ``conv1``, ``bn1``, ``relu``, ``layer<s>.<b>`` then ``layer<s>``, ``avgpool`` ``(N, 1, 1, 64)``,
``linear``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jinterp.backbones._common import basic_branch, check_images
from jinterp.errors import ConfigError
from jinterp.nn import ops
from jinterp.nn.layers import BatchNorm2d, Conv2d, Linear


def shortcut_a(x: jax.Array, planes: int) -> jax.Array:
    """Option-A shortcut: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`` in NHWC.

    (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C + 2 * (planes // 4)).
    """
    x = x[:, ::2, ::2, :]
    pad = planes // 4
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


class CifarBasicBlock(nn.Module):
    """akamaster ``BasicBlock`` with option-A shortcut."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = basic_branch(x, self.planes, self.stride, train)
        # akamaster's condition; its lambda subsamples whenever it applies (only at stride 2 in practice).
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = shortcut_a(x, self.planes)
        return nn.relu(out + x)


class CifarResNet(nn.Module):
    """Input ``(N, H, W, 3)``: RGB in [0, 1] normalized with ImageNet mean/std (akamaster's preprocessing)."""

    depth: int = 20
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        if (self.depth - 2) % 6 or self.depth < 8:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {self.depth}")
        check_images(x, f"resnet{self.depth}", min_size=4)
        n = (self.depth - 2) // 6
        feats: dict[str, jax.Array] = {}
        x = Conv2d(16, 3, 1, padding=1, use_bias=False, name="conv1")(x)
        feats["conv1"] = x
        x = BatchNorm2d(name="bn1")(x, train)
        feats["bn1"] = x
        x = nn.relu(x)
        feats["relu"] = x
        for s, planes in enumerate((16, 32, 64)):
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                x = CifarBasicBlock(planes, stride, name=f"layer{s + 1}_{b}")(x, train)
                feats[f"layer{s + 1}.{b}"] = x
            feats[f"layer{s + 1}"] = x
        # F.avg_pool2d(out, out.size()[3]): a square window as wide as the map (global mean at 32 px).
        x = ops.avg_pool2d(x, x.shape[2])
        feats["avgpool"] = x
        x = Linear(self.num_classes, name="linear")(ops.flatten_nchw(x))
        feats["linear"] = x
        return x, feats
