"""Small PyTorch CNNs of the families real models use, for the converter's parity tests (random weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VGGLike(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 16, 3, padding="same", dilation=2), nn.LeakyReLU(0.2), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16 * 2 * 2, 12), nn.Tanh(),
                                        nn.Linear(12, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.layer3 = nn.Sequential(BasicBlock(16, 24, 2))
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features):
        return self.conv(F.relu(self.norm(torch.cat(features, 1))))


class DenseNetLike(nn.Module):
    def __init__(self, num_classes: int = 3, growth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.dense = nn.ModuleList([DenseLayer(8 + i * growth, growth) for i in range(3)])
        self.transition = nn.Sequential(nn.BatchNorm2d(8 + 3 * growth), nn.ReLU(),
                                        nn.Conv2d(8 + 3 * growth, 10, 1, bias=False), nn.AvgPool2d(2, 2))
        self.head = nn.Linear(10, num_classes)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.dense:
            feats.append(layer(feats))
        x = self.transition(torch.cat(feats, dim=1))
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.head(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetLike(nn.Module):
    def __init__(self, num_classes: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()),
            InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3), InvertedResidual(12, 12, 1, 3),
            nn.Sequential(nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU()),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.mean([2, 3])
        return self.classifier(x)


class UpsampleNet(nn.Module):
    """F.interpolate (nearest and bilinear, with and without align_corners), a transposed conv, GELU/sigmoid
    gating, mul, permute, F.pad, slicing, a channel reduction and adaptive average pooling to a non-trivial
    size."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.enc = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.act = nn.GELU()
        self.up = nn.ConvTranspose2d(6, 6, 4, stride=2, padding=1)
        self.gate = nn.Conv2d(6, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(6 * 3 * 2, num_classes)

    def forward(self, x):
        y = self.act(self.enc(x))
        y = y + F.pad(y[:, :, 1:, ::1], (0, 0, 0, 1), mode="constant", value=0.5)  # slicing + padding in NCHW
        y = y + 0.1 * y.amax(1).unsqueeze(1) + F.pad(y, (1, 1, 2, 0), mode="replicate")[:, :, :-2, 1:-1]
        a = F.interpolate(y, scale_factor=2, mode="nearest")
        b = F.interpolate(y, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        c = F.interpolate(y, size=(13, 11), mode="bilinear", align_corners=True)
        c = F.interpolate(c, size=(x.shape[2], x.shape[3]), mode="nearest")
        z = (a + b + c) * torch.sigmoid(self.gate(self.up(y)))
        z = self.pool(z).permute(0, 2, 3, 1).contiguous()
        return self.fc(z.reshape(z.shape[0], -1))


FAMILIES = {"vgg": VGGLike, "resnet": ResNetLike, "densenet": DenseNetLike, "mobilenet": MobileNetLike,
            "upsample": UpsampleNet}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model
