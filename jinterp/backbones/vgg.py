"""VGG backbones: torchvision's VGG-16 (with and without BatchNorm) and ClaDec's VGG-11-like classifier.

Feature names follow the PyTorch module paths: ``features.<i>`` (every conv, BN, ReLU and pool of
torchvision's ``features`` Sequential), ``avgpool`` and ``classifier.<i>`` for VGG-16; ``conv0`` … ``conv4``,
``flat`` and ``pred`` for the ClaDec classifier (``models.py::Classifier`` of JohnTailor/ClaDec).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jinterp.backbones._common import check_images
from jinterp.nn import ops
from jinterp.nn.layers import BatchNorm2d, Conv2d, Linear

# torchvision's configuration "D"; an int is a 3x3 conv (padding 1) with that many channels, "M" a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """torchvision ``VGG``: ``features`` → ``AdaptiveAvgPool2d((7, 7))`` → 3-layer MLP classifier.

    Input ``(N, H, W, 3)`` with H, W >= 32, ImageNet-normalized; logits ``(N, num_classes)``. ``hidden`` is
    the width of the two hidden FC layers (torchvision: 4096; smaller widths keep tests light).
    """

    cfg: tuple = VGG16_CFG
    batch_norm: bool = False
    num_classes: int = 1000
    dropout: float = 0.5
    hidden: int = 4096

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_images(x, "vgg", min_size=32)
        feats: dict[str, jax.Array] = {}
        i = 0  # index in torchvision's ``features`` Sequential
        for v in self.cfg:
            if v == "M":
                x = ops.max_pool2d(x, 2, 2)
                feats[f"features.{i}"] = x
                i += 1
                continue
            x = Conv2d(v, 3, padding=1, name=f"features_{i}")(x)
            feats[f"features.{i}"] = x
            i += 1
            if self.batch_norm:
                x = BatchNorm2d(name=f"features_{i}")(x, train)
                feats[f"features.{i}"] = x
                i += 1
            x = nn.relu(x)
            feats[f"features.{i}"] = x
            i += 1
        # Identity at 224 px; at other sizes PyTorch's adaptive bins, so the 25088-wide fc6 always fits.
        x = ops.adaptive_avg_pool2d(x, 7)
        feats["avgpool"] = x
        x = ops.flatten_nchw(x)  # C·H·W order, as torch.flatten on NCHW
        for j in (0, 3):
            x = Linear(self.hidden, name=f"classifier_{j}")(x)
            feats[f"classifier.{j}"] = x
            x = nn.relu(x)
            feats[f"classifier.{j + 1}"] = x
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            feats[f"classifier.{j + 2}"] = x
        x = Linear(self.num_classes, name="classifier_6")(x)
        feats["classifier.6"] = x
        return x, feats


# (name, out channels, stride) of ClaDec's eight ``B2lock2`` blocks (usemp=False: stride-2 convs downsample).
CLADEC_BLOCKS = (
    ("conv0", 32, 2), ("conv1", 64, 2), ("conv2a", 128, 1), ("conv2", 128, 2),
    ("conv3a", 256, 1), ("conv3", 256, 2), ("conv4a", 512, 1), ("conv4", 512, 2),
)


class _ClaDecBlock(nn.Module):
    """``B2lock2``: 3x3 conv (padding 1, no bias) → BatchNorm2d → ReLU; torch names ``conv1``, ``bnF``."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv2d(self.features, 3, self.stride, padding=1, use_bias=False, name="conv1")(x)
        x = BatchNorm2d(name="bnF")(x, train)
        return nn.relu(x)


class ClaDecVGG(nn.Module):
    """ClaDec's classifier (spec A.3.1): eight conv blocks, flatten, Dropout(0.5), Linear(512 → classes).

    Input ``(N, 32, 32, C)`` with C = 1 (Fashion-MNIST upsampled to 32) or 3 (CIFAR), in [0, 1] without
    mean/std normalization. ``flat`` is the (N, 512) pre-dropout code (the activation ClaDec's layInd -1
    explains at the official code's HEAD); ``pred`` the logits.
    """

    num_classes: int = 10
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_images(x, "vgg11_bn_cladec", min_size=32)
        feats: dict[str, jax.Array] = {}
        for name, width, stride in CLADEC_BLOCKS:
            x = _ClaDecBlock(width, stride, name=name)(x, train)
            feats[name] = x
        x = ops.flatten_nchw(x)
        feats["flat"] = x
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.num_classes, name="pred")(x)
        feats["pred"] = x
        return x, feats
