"""torchvision's AlexNet (the "one weird trick" variant torchvision ships: 64-192-384-256-256 channels).

Feature names: ``features.0`` … ``features.12``, ``avgpool``, ``classifier.0`` … ``classifier.6``.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jinterp.backbones._common import check_images
from jinterp.nn import ops
from jinterp.nn.layers import Conv2d, Linear

# (features index, out channels, kernel, stride, padding, max-pool after the ReLU?)
ALEXNET_CONVS = (
    (0, 64, 11, 4, 2, True),
    (3, 192, 5, 1, 2, True),
    (6, 384, 3, 1, 1, False),
    (8, 256, 3, 1, 1, False),
    (10, 256, 3, 1, 1, True),
)


class AlexNet(nn.Module):
    """Input ``(N, H, W, 3)`` ImageNet-normalized, H, W >= 63; ``AdaptiveAvgPool2d((6, 6))``; 3 FC layers.

    ``hidden`` is the width of the two hidden FC layers (torchvision: 4096).
    """

    num_classes: int = 1000
    dropout: float = 0.5
    hidden: int = 4096

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_images(x, "alexnet", min_size=63)
        feats: dict[str, jax.Array] = {}
        for i, width, k, s, p, pool in ALEXNET_CONVS:
            x = Conv2d(width, k, s, padding=p, name=f"features_{i}")(x)
            feats[f"features.{i}"] = x
            x = nn.relu(x)
            feats[f"features.{i + 1}"] = x
            if pool:
                x = ops.max_pool2d(x, 3, 2)
                feats[f"features.{i + 2}"] = x
        x = ops.adaptive_avg_pool2d(x, 6)
        feats["avgpool"] = x
        x = ops.flatten_nchw(x)
        for j in (0, 3):  # Dropout → Linear → ReLU, twice
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            feats[f"classifier.{j}"] = x
            x = Linear(self.hidden, name=f"classifier_{j + 1}")(x)
            feats[f"classifier.{j + 1}"] = x
            x = nn.relu(x)
            feats[f"classifier.{j + 2}"] = x
        x = Linear(self.num_classes, name="classifier_6")(x)
        feats["classifier.6"] = x
        return x, feats
