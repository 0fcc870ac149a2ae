"""A small ConvNet for 28-64 px inputs: fast on CPU, for synthparts, tests and demos.

Four blocks ``conv<i>`` (3x3, padding 1, no bias) → ``bn<i>`` → ``relu<i>``, a 2x2 max-pool ``pool<i>`` after
each block but the last, global average pool ``avgpool`` ``(N, 1, 1, C)`` and ``fc``. These names are also
the keys of the matching PyTorch module (``conv1.weight``, ``bn1.running_mean``, ``fc.weight`` …).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jinterp.backbones._common import check_images
from jinterp.nn import ops
from jinterp.nn.layers import BatchNorm2d, Conv2d, Linear


class ConvNet(nn.Module):
    """Input ``(N, H, W, C)`` in [0, 1] (no mean/std), H, W >= 8; logits ``(N, num_classes)``."""

    num_classes: int = 6
    widths: tuple[int, ...] = (32, 64, 128, 128)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_images(x, "convnet", min_size=2 ** (len(self.widths) - 1))
        feats: dict[str, jax.Array] = {}
        for i, width in enumerate(self.widths, start=1):
            x = Conv2d(width, 3, padding=1, use_bias=False, name=f"conv{i}")(x)
            feats[f"conv{i}"] = x
            x = BatchNorm2d(name=f"bn{i}")(x, train)
            feats[f"bn{i}"] = x
            x = nn.relu(x)
            feats[f"relu{i}"] = x
            if i < len(self.widths):
                x = ops.max_pool2d(x, 2, 2)
                feats[f"pool{i}"] = x
        x = ops.adaptive_avg_pool2d(x, 1)
        feats["avgpool"] = x
        x = Linear(self.num_classes, name="fc")(ops.flatten_nchw(x))
        feats["fc"] = x
        return x, feats
