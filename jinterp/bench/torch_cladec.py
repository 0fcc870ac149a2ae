"""PyTorch reference of ClaDec's decoder and train steps (the official ``cladec.py`` math), for parity tests and
the benchmark.

* :class:`ClaDecNet` — the official decoder (``channel_mult`` 64, ``nLay = round(log2(dim) - 2)``, dense entry
  for 1x1/flat activations, 3x3 conv entry otherwise, ConvTranspose2d(4, 2, 1) stack, sigmoid), with the
  image size a parameter instead of the hard-coded 32.
* :func:`to_flax` — its weights as jinterp ``Decoder`` params (NHWC layouts of :mod:`jinterp.nn`).
* :func:`cladec_step` / :func:`refae_step` — one optimizer step as the official loops do it (fp32, no AMP),
  with the *hygienic* option of skipping the CE term at α = 0 and not computing classifier weight gradients.
* :func:`classifier` — the ClaDec VGG-11-like classifier of ``tests/backbones/torch_reference.py`` (the module the
  backbone parity tests check against jinterp's ``vgg11_bn_cladec``).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jinterp.bench.harness import load_by_path

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "backbones" / "torch_reference.py"


def reference():
    """``tests/backbones/torch_reference.py`` as a module (loaded by path; test folders are not packages)."""
    return load_by_path(REFERENCE, "jinterp_bench_torch_reference")


class ClaDecNet(nn.Module):
    """``cladec.py::ClaDecNet``. ``in_shape`` is the per-example activation shape in NCHW order without N:
    ``(D,)`` or ``(C, S, S)``; ``n_fea`` the image channels."""

    def __init__(self, in_shape, n_fea: int, channel_mult: int = 64, image_size: int = 32):
        super().__init__()
        self.channel_mult = int(channel_mult)
        lin = len(in_shape) == 1
        dim = image_size if lin else image_size // int(in_shape[-1])
        self.input_dim = int(np.prod(in_shape))
        self.in_fea = 1 if lin else int(in_shape[-2])
        n_lay = int(np.round(np.log2(dim) - 2))
        if self.in_fea == 1:
            self.use_dense = True
            self.fc_output_dim = max(self.input_dim, self.channel_mult)
            self.fc = nn.Sequential(nn.Linear(self.input_dim, self.fc_output_dim), nn.ReLU(True))
        else:
            self.use_dense = False
            self.fc_output_dim = int(in_shape[0])
            self.fc = nn.Sequential(nn.Conv2d(self.fc_output_dim, self.fc_output_dim, 3, stride=1, padding=1),
                                    nn.ReLU(True))
        cm = self.channel_mult
        layers = [nn.ConvTranspose2d(self.fc_output_dim, cm * 2 ** n_lay, 4, stride=2, padding=1), nn.ReLU()]
        for j in range(n_lay, 0, -1):
            layers += [nn.ConvTranspose2d(cm * 2 ** j, cm * 2 ** (j - 1), 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(cm, n_fea, 4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)
        self.sig = nn.Sigmoid()

    def forward(self, x):
        if self.use_dense:
            x = self.fc(x.reshape(-1, self.input_dim)).view(-1, self.fc_output_dim, self.in_fea, self.in_fea)
        else:
            x = self.fc(x)
        return self.sig(self.deconv(x))


def to_flax(net: ClaDecNet, grad: bool = False) -> dict:
    """The module's weights (or, with ``grad``, their gradients) as jinterp ``Decoder`` params (``entry``,
    ``up<i>``, ``out``)."""
    def arr(t):
        t = t.grad if grad else t
        return np.array(t.detach().cpu().numpy(), np.float32, copy=True)  # not a view of the live weights

    entry = net.fc[0]
    if isinstance(entry, nn.Linear):
        params = {"entry": {"kernel": arr(entry.weight).T, "bias": arr(entry.bias)}}
    else:
        params = {"entry": {"kernel": arr(entry.weight).transpose(2, 3, 1, 0), "bias": arr(entry.bias)}}
    convs = [m for m in net.deconv if isinstance(m, nn.ConvTranspose2d)]
    for i, m in enumerate(convs):
        name = "out" if i == len(convs) - 1 else f"up{i}"
        params[name] = {"kernel": arr(m.weight).transpose(2, 3, 0, 1), "bias": arr(m.bias)}
    return params


def nhwc_to_nchw(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a, np.float32)
    return torch.from_numpy(a.transpose(0, 3, 1, 2).copy() if a.ndim == 4 else a.copy())


def classifier(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return reference().ClaDecClassifier(in_channels, num_classes)


def adam(params, lr: float = 3e-4, weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """The official decoder optimizer (``foreach=False``: the plain per-tensor loop, the documented algorithm)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=False)


def cladec_step(dec: nn.Module, opt: torch.optim.Optimizer, cls: nn.Module | None, x: torch.Tensor,
                y: torch.Tensor, act: torch.Tensor, alpha: float, *, use_ce: bool = True) -> torch.Tensor:
    """One ClaDec step: ``(1-α)·MSE(D(a), x) + α·CE(C(D(a)), y)`` with the classifier in eval mode.

    As released (``use_ce=True``, classifier params with ``requires_grad=True``) the CE term and the classifier's
    weight gradients are computed even at α = 0; the hygienic variant is ``use_ce=False`` and a classifier with
    ``requires_grad_(False)``. Returns the loss as a detached 0-d tensor on the model's device (no host sync: the
    benchmark times these steps on a GPU).
    """
    opt.zero_grad(set_to_none=True)
    out = dec(act)
    loss = (1 - alpha) * nn.functional.mse_loss(out, x)
    if use_ce:
        loss = loss + alpha * nn.functional.cross_entropy(cls(out), y)
    loss.backward()
    opt.step()
    return loss.detach()


class RefAE(nn.Module):
    """``cladec.py::RefAE``: a fresh classifier prefix (``children()[:cut]``) followed by the decoder."""

    def __init__(self, prefix: nn.Module, decoder: ClaDecNet):
        super().__init__()
        self.enc = prefix
        self.dec = decoder

    def forward(self, x):
        return self.dec(self.enc(x))


def cladec_prefix(cls: nn.Module, layer: str) -> nn.Module:
    """The reference classifier's blocks up to and including ``layer`` (``conv0`` … ``conv4``, ``flat``)."""
    out = []
    for name in cls.names:
        out.append(getattr(cls, name))
        if name == layer:
            return nn.Sequential(*out)
    if layer == "flat":
        return nn.Sequential(*out, cls.flat)
    raise KeyError(layer)


def refae_step(model: RefAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x), x)
    loss.backward()
    opt.step()
    return loss.detach()


def param_count(m: nn.Module) -> int:
    return int(sum(math.prod(p.shape) for p in m.parameters()))


def sweep_loop_step(nets: list[nn.Module], opts: list[torch.optim.Optimizer], cls: nn.Module, x: torch.Tensor,
                    y: torch.Tensor, act: torch.Tensor, alphas: list[float]) -> list[torch.Tensor]:
    """K decoders trained the natural PyTorch way: a Python loop of :func:`cladec_step`, one model at a time."""
    return [cladec_step(n, o, cls, x, y, act, a) for n, o, a in zip(nets, opts, alphas, strict=True)]


class StackedSweep:
    """K decoders as one ``torch.func`` ensemble: ``stack_module_state`` + ``vmap(functional_call)``, the documented
    PyTorch model-ensembling recipe. The sum of the K losses is backpropagated once (model k's gradient is then
    exactly its own loss's gradient: the models share no parameters), and one Adam steps the stacked tensors
    (Adam and weight decay are elementwise, so this equals K separate optimizers)."""

    def __init__(self, nets: list[nn.Module], cls: nn.Module, alphas: list[float], lr: float, wd: float):
        from torch.func import functional_call, stack_module_state

        self.params, self.buffers = stack_module_state(nets)
        self.base = copy.deepcopy(nets[0]).to("meta")
        device = next(iter(self.params.values())).device
        self.cls, self.alphas = cls, torch.tensor(alphas, dtype=torch.float32, device=device)
        self.functional_call = functional_call
        self.opt = adam(list(self.params.values()), lr, wd)

    def losses(self, x: torch.Tensor, y: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``(K,)`` per-model losses ``(1-α_k)·MSE + α_k·CE``."""
        from torch.func import vmap

        def one(p, b, alpha):
            out = self.functional_call(self.base, (p, b), (act,))
            return (1 - alpha) * nn.functional.mse_loss(out, x) + alpha * nn.functional.cross_entropy(
                self.cls(out), y)

        return vmap(one)(self.params, self.buffers, self.alphas)

    def step(self, x: torch.Tensor, y: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        losses = self.losses(x, y, act)
        losses.sum().backward()
        self.opt.step()
        return losses.detach()
