"""PyTorch reference implementations of every jinterp backbone, written from the architecture definitions.

torchvision is not available to the tests, so these restate torchvision's VGG, AlexNet and ResNet, akamaster's
CIFAR ResNet (pytorch_resnet_cifar10/resnet.py) and ClaDec's ``Classifier``/``B2lock2`` (models.py), keeping
their module names and so their state_dict keys. Two harmless departures make every intermediate hookable:
ReLUs are not in-place, and the CIFAR ResNet's functional stem ReLU and average pool are modules named ``relu``
and ``avgpool`` (same math, no parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5, hidden=4096):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, hidden: int = 4096):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- akamaster/pytorch_resnet_cifar10 ------------------------------------------------------------------------


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:  # option A
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class _WidthAvgPool(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, x.size()[3])


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = _WidthAvgPool()
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.avgpool(out)
        return self.linear(out.view(out.size(0), -1))


# ---- ClaDec (JohnTailor/ClaDec models.py, usemp=False) -------------------------------------------------------


class B2lock2(nn.Module):
    def __init__(self, in_planes, planes, down=True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=2 if down else 1, padding=1, bias=False)
        self.bnF = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bnF(self.conv1(x)))


class Flatten(nn.Module):
    def forward(self, x):
        return x.view((x.size()[0], -1))


class ClaDecClassifier(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        chans = [in_channels, 32, 64, 128, 128, 256, 256, 512, 512]
        downs = [True, True, False, True, False, True, False, True]
        names = ["conv0", "conv1", "conv2a", "conv2", "conv3a", "conv3", "conv4a", "conv4"]
        for i, (name, down) in enumerate(zip(names, downs, strict=True)):
            setattr(self, name, B2lock2(chans[i], chans[i + 1], down))
        self.names = names
        self.flat = Flatten()
        self.dropout = nn.Dropout(0.5)
        self.pred = nn.Linear(512, num_classes)

    def forward(self, x):
        for name in self.names:
            x = getattr(self, name)(x)
        return self.pred(self.dropout(self.flat(x)))


# ---- jinterp's small ConvNet ---------------------------------------------------------------------------------


class ConvNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 6, widths=(32, 64, 128, 128)):
        super().__init__()
        self.n = len(widths)
        c = in_channels
        for i, w in enumerate(widths, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c, w, 3, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(w))
            setattr(self, f"relu{i}", nn.ReLU())
            if i < self.n:
                setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
            c = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        for i in range(1, self.n + 1):
            x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i < self.n:
                x = getattr(self, f"pool{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(arch: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """The reference module of a jinterp arch name (``kwargs``: ``hidden`` for VGG/AlexNet)."""
    if arch in ("vgg16", "vgg16_bn"):
        return VGG(arch == "vgg16_bn", num_classes, **kwargs)
    if arch == "alexnet":
        return AlexNet(num_classes, **kwargs)
    if arch == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)
    if arch == "resnet50":
        return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
    if arch.startswith("resnet"):
        return CifarResNet(int(arch[len("resnet"):]), num_classes)
    if arch == "vgg11_bn_cladec":
        return ClaDecClassifier(in_channels, num_classes)
    if arch == "convnet":
        return ConvNet(in_channels, num_classes)
    raise KeyError(arch)


RESIDUAL_BN = (".bn2", ".bn3", ".downsample.1")


@torch.no_grad()
def randomize(model: nn.Module, seed: int, calib: torch.Tensor) -> nn.Module:
    """Random weights whose activations stay O(1), and random (but plausible) BatchNorm running statistics.

    Conv/Linear weights are Kaiming-normal (ReLU gain) so deep stacks neither vanish nor explode, which would
    make an absolute tolerance meaningless; biases N(0, 0.1²). Each BN's running stats are the statistics of
    its eval-mode input on ``calib``, perturbed at random, and its affine weight/bias are random too, so
    eval-mode BN is a real test.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    bns = {m: name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    model.eval()

    def calibrate(m, args):
        # Statistics of the input this BN sees in eval mode, i.e. behind the upstream BNs already set: the
        # scale stays O(1) at every depth instead of drifting with each perturbation.
        x = args[0]
        c = m.num_features
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        m.running_mean.copy_(mean + 0.2 * var.sqrt() * torch.randn(c, generator=g))
        # Floored at a tenth of the layer's mean variance: a near-dead channel divided by a tiny running std
        # would amplify float32 round-off (in PyTorch as much as here) and swamp the comparison.
        var = var + 0.1 * var.mean() + 1e-3
        m.running_var.copy_(var * (0.7 + 0.6 * torch.rand(c, generator=g)))
        # BNs that end a residual branch get small weights, as in trained ResNets: the residual stream then
        # does not grow with depth (and with it the float32 round-off of both frameworks).
        residual = bns[m].startswith("layer") and bns[m].endswith(RESIDUAL_BN)
        low, high = (0.1, 0.3) if residual else (0.2, 0.6)
        m.weight.copy_(low + (high - low) * torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))

    handles = [m.register_forward_pre_hook(calibrate) for m in bns]
    try:
        if bns:
            model(calib)
    finally:
        for h in handles:
            h.remove()
    return model


def forward_with_features(model: nn.Module, x: torch.Tensor, names) -> tuple[torch.Tensor, dict]:
    """Run ``model`` under ``no_grad`` and capture the output of each named module, NCHW → NHWC numpy."""
    modules = dict(model.named_modules())
    captured, handles = {}, []
    for name in names:
        def hook(_, __, out, name=name):
            captured[name] = out.detach().clone()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    feats = {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).numpy() for k, v in captured.items()}
    return logits.numpy(), feats
