"""PyTorch reference of the released CSG train steps (hyliang96/CSGCNN ``train.py`` + ``resnet_std.py``) on the
akamaster CIFAR ResNet-20 of ``tests/backbones/torch_reference.py``, mapped as the released code maps ResNet-152:
the gate on the last stage (``layer3``, K = 64), the standard optimizer on the top two stages + head
(``layer2``, ``layer3``, ``linear``; Adam 1e-5), the gated optimizer on the top stage + head + G (Adam 1e-3).

``official=True`` is the released construction: the gated map is a zeros tensor filled sample by sample in a
Python loop, and the gated step backpropagates into every ``requires_grad`` parameter (layer2 too, which its
optimizer never updates). ``official=False`` is the hygienic version: one broadcast multiply, and layer2's
``requires_grad`` switched off during gated steps (the same gradients JAX computes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorchCSG:
    def __init__(self, model: nn.Module, num_classes: int, *, lam: float = 1e-3, ratio: float = 0.2,
                 std_lr: float = 1e-5, csg_lr: float = 1e-3, gate: torch.Tensor | None = None):
        self.model = model.train()
        k = model.linear.in_features
        if gate is None:
            gate = torch.full((k, num_classes), 0.5, device=model.linear.weight.device)
        self.gate = nn.Parameter(gate.clone())
        self.lam, self.ratio = lam, ratio
        for m in (model.conv1, model.bn1, model.layer1):
            for p in m.parameters():
                p.requires_grad_(False)
        std_params = [p for m in (model.layer2, model.layer3, model.linear) for p in m.parameters()]
        csg_params = [p for m in (model.layer3, model.linear) for p in m.parameters()] + [self.gate]
        self.opt_std = torch.optim.Adam(std_params, lr=std_lr)
        self.opt_csg = torch.optim.Adam(csg_params, lr=csg_lr)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        out = m.relu(m.bn1(m.conv1(x)))
        return m.layer3(m.layer2(m.layer1(out)))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(a, a.size(3))
        return self.model.linear(out.view(out.size(0), -1))

    def gated(self, a: torch.Tensor, y: torch.Tensor, official: bool) -> torch.Tensor:
        if official:
            out = torch.zeros_like(a)
            for i in range(a.size(0)):
                out[i] = a[i] * self.gate[:, y[i]].view(-1, 1, 1)
            return out
        return a * self.gate.t()[y][:, :, None, None]

    def csg_loss(self, x, y, official: bool = False) -> torch.Tensor:
        logits = self.head(self.gated(self.features(x), y, official))
        k, c = self.gate.shape
        reg = torch.relu(self.gate.abs().sum() - self.ratio * k * c)
        return F.cross_entropy(logits, y) + self.lam * reg

    def csg_step(self, x, y, official: bool = False) -> torch.Tensor:
        for p in self.model.layer2.parameters():
            p.requires_grad_(official)
        self.opt_csg.zero_grad()
        loss = self.csg_loss(x, y, official)
        loss.backward()
        self.opt_csg.step()
        with torch.no_grad():
            self.gate.copy_((self.gate / self.gate.max(dim=1, keepdim=True)[0]).clamp(0, 1))
        for p in self.model.layer2.parameters():
            p.requires_grad_(True)
        return loss.detach()

    def std_step(self, x, y) -> torch.Tensor:
        self.opt_std.zero_grad()
        loss = F.cross_entropy(self.head(self.features(x)), y)
        loss.backward()
        self.opt_std.step()
        return loss.detach()
