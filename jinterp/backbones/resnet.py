"""torchvision's ImageNet ResNets (v1.5: the stride of a bottleneck sits on its 3x3 conv).

Feature names: ``conv1``, ``bn1``, ``relu``, ``maxpool``, every block ``layer<s>.<b>`` followed by its stage
``layer<s>`` (the same array as the stage's last block), ``avgpool`` ``(N, 1, 1, C)`` and ``fc``.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jinterp.backbones._common import basic_branch, check_images
from jinterp.nn import ops
from jinterp.nn.layers import BatchNorm2d, Conv2d, Linear


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 conv + BN ``downsample`` shortcut when the shape changes."""

    planes: int
    stride: int = 1
    downsample: bool = False
    expansion = 1  # class constant (not a dataclass field: no annotation)

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = basic_branch(x, self.planes, self.stride, train)
        if self.downsample:
            x = Conv2d(self.planes, 1, self.stride, use_bias=False, name="downsample_0")(x)
            x = BatchNorm2d(name="downsample_1")(x, train)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (strided) → 1x1 (4x planes) convs with BN; 1x1 conv + BN shortcut when the shape changes."""

    planes: int
    stride: int = 1
    downsample: bool = False
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = Conv2d(self.planes, 1, use_bias=False, name="conv1")(x)
        out = nn.relu(BatchNorm2d(name="bn1")(out, train))
        out = Conv2d(self.planes, 3, self.stride, padding=1, use_bias=False, name="conv2")(out)
        out = nn.relu(BatchNorm2d(name="bn2")(out, train))
        out = Conv2d(self.planes * 4, 1, use_bias=False, name="conv3")(out)
        out = BatchNorm2d(name="bn3")(out, train)
        if self.downsample:
            x = Conv2d(self.planes * 4, 1, self.stride, use_bias=False, name="downsample_0")(x)
            x = BatchNorm2d(name="downsample_1")(x, train)
        return nn.relu(out + x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision ``ResNet``. Input ``(N, H, W, 3)`` ImageNet-normalized (H, W >= 32); logits ``(N, classes)``.

    ``block`` is ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152); ``layers`` the number
    of blocks per stage.
    """

    block: str = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_images(x, "resnet", min_size=32)
        block = BLOCKS[self.block]
        feats: dict[str, jax.Array] = {}
        x = Conv2d(64, 7, 2, padding=3, use_bias=False, name="conv1")(x)  # explicit 3: not XLA's "SAME"
        feats["conv1"] = x
        x = BatchNorm2d(name="bn1")(x, train)
        feats["bn1"] = x
        x = nn.relu(x)
        feats["relu"] = x
        x = ops.max_pool2d(x, 3, 2, padding=1)
        feats["maxpool"] = x
        inplanes = 64
        for s, (planes, n) in enumerate(zip((64, 128, 256, 512), self.layers, strict=True)):
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                down = b == 0 and (stride != 1 or inplanes != planes * block.expansion)
                x = block(planes, stride, down, name=f"layer{s + 1}_{b}")(x, train)
                feats[f"layer{s + 1}.{b}"] = x
                inplanes = planes * block.expansion
            feats[f"layer{s + 1}"] = x
        x = ops.adaptive_avg_pool2d(x, 1)
        feats["avgpool"] = x
        x = Linear(self.num_classes, name="fc")(ops.flatten_nchw(x))
        feats["fc"] = x
        return x, feats
