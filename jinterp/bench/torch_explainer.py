"""PyTorch twin of jinterp's explainer train step (``jinterp.methods.explainer``), for the benchmark.

Same math, NCHW: interpretable track (two 3x3 convs, ReLU, ICNN mask at the rounded activation centroid),
ordinary track, RMS track norms (batch statistics + EMA), p-branch, decoder (3x3 conv, stride 2 when the
target is half the size, 3x3 conv to the target channels, ReLU); loss = mean relative reconstruction error
+ λ Σ(−MI) (exact ICNN filter loss on both interpretable layers' pre-mask maps) − η mean log p; Adam; then the
release's β step. Weights come from a JAX variables tree (``from_jax``). No public PyTorch code of the
explainer exists, so this is the same reconstruction, written in PyTorch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _conv_w(k, device) -> torch.Tensor:
    return torch.tensor(np.asarray(k), device=device).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW


class TorchExplainer(torch.nn.Module):
    """Parameters and state (β, RMS running values) on ``device``."""

    def __init__(self, variables: dict, *, stride2: bool, momentum: float = 0.9, eps: float = 1e-6,
                 device: str = "cpu"):
        super().__init__()
        p = variables["params"]
        t = lambda a: torch.tensor(np.asarray(a, np.float32), device=device)  # noqa: E731
        self.stride2, self.momentum, self.eps = stride2, momentum, eps
        self.w = torch.nn.ParameterDict()
        for name in ("interp1", "interp2", "ordinary", "dec1", "dec_out"):
            self.w[name + "_w"] = torch.nn.Parameter(_conv_w(p[name]["kernel"], device))
            self.w[name + "_b"] = torch.nn.Parameter(t(p[name]["bias"]))
        self.w["p_w"] = torch.nn.Parameter(t(p["p_branch"]["kernel"]).T.contiguous())
        self.w["p_b"] = torch.nn.Parameter(t(p["p_branch"]["bias"]))
        self.beta1 = t(variables["icnn"]["beta1"])
        self.beta2 = t(variables["icnn"]["beta2"])
        self.rms_i = t(variables["batch_stats"]["norm_interp"]["rms"]).reshape(())
        self.rms_o = t(variables["batch_stats"]["norm_ordinary"]["rms"]).reshape(())

    def forward(self, f):
        out, aux = explainer_forward(self.w, self.beta1, self.beta2, f, stride2=self.stride2, eps=self.eps)
        with torch.no_grad():
            self.rms_i = self.momentum * self.rms_i + (1 - self.momentum) * aux["rms_i"].detach()
            self.rms_o = self.momentum * self.rms_o + (1 - self.momentum) * aux["rms_o"].detach()
        return out, aux


def explainer_forward(w, beta1, beta2, f, *, stride2: bool, eps: float = 1e-6, record: dict | None = None):
    """The explainer's training-mode forward as a pure function of the weights ``w`` (``<layer>_w`` OIHW,
    ``<layer>_b``, ``p_w``, ``p_b``) and β (so ``torch.func.vmap`` can map it over stacked models). Returns
    ``(out, aux)``; ``aux`` carries the maps, masks, ``p_logit`` and the batch RMS of each track (``rms_i``,
    ``rms_o``) for the caller's running averages. ``record``: a dict that receives, per conv (each is followed by
    a ReLU), ``{"x": input, "stride", "z": pre-activation, "a": ReLU output (its .grad kept)}``."""
    def relu_conv(x, name, stride=1):
        z = F.conv2d(x, w[name + "_w"], w[name + "_b"], stride=stride, padding=1)
        a = F.relu(z)
        if record is not None:
            if a.requires_grad:
                a.retain_grad()
            record[name] = {"x": x, "stride": stride, "z": z, "a": a}
        return a

    def norm(x):
        rms = torch.sqrt(x.square().mean(dim=(1, 2, 3)) + eps).mean()
        return x / (rms + eps), rms

    a1 = relu_conv(f, "interp1")
    m1 = mask(a1, beta1)
    y1 = F.relu(a1 * m1)
    a2 = relu_conv(y1, "interp2")
    m2 = mask(a2, beta2)
    y2 = F.relu(a2 * m2)
    o = relu_conv(f, "ordinary")
    (xi, rms_i), (xo, rms_o) = norm(y2), norm(o)
    p_logit = (f.mean(dim=(2, 3)) @ w["p_w"].T + w["p_b"])[:, 0]
    p = torch.sigmoid(p_logit)[:, None, None, None]
    x = p * xi + (1 - p) * xo
    x = relu_conv(x, "dec1", 2 if stride2 else 1)
    out = relu_conv(x, "dec_out")
    return out, {"a1": a1, "a2": a2, "mask1": m1, "mask2": m2, "p_logit": p_logit, "rms_i": rms_i, "rms_o": rms_o}


@torch.no_grad()
def location(x):
    """Rounded activation centroid per (image, channel): (B, C) rows and cols (NCHW input)."""
    b, c, h, w = x.shape
    total = x.sum(dim=(2, 3)).clamp_min(1e-9)
    r = (x.sum(dim=3) * torch.arange(h, dtype=x.dtype, device=x.device)).sum(-1) / total
    cc = (x.sum(dim=2) * torch.arange(w, dtype=x.dtype, device=x.device)).sum(-1) / total
    return torch.round(r).clamp(0, h - 1).long(), torch.round(cc).clamp(0, w - 1).long()


@torch.no_grad()
def mask(x, beta):
    b, c, h, w = x.shape
    r, cc = location(x)
    ry = torch.linspace(-1, 1, h, device=x.device) if h > 1 else torch.zeros(1, device=x.device)
    cx = torch.linspace(-1, 1, w, device=x.device) if w > 1 else torch.zeros(1, device=x.device)
    d = (ry[None, None, :, None] - ry[r][:, :, None, None]).abs() + (cx[None, None, None, :]
                                                                     - cx[cc][:, :, None, None]).abs()
    return torch.clamp(1 - beta.clamp(1e-3, 1e3)[None, :, None, None] * d, min=-1)


def templates(h, w, beta=4.0, device="cpu"):
    tau = 0.5 / (h * w)
    rr, cc = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    rr, cc = rr.reshape(-1), cc.reshape(-1)
    dist = (rr[None] - rr[:, None]).abs() / h + (cc[None] - cc[:, None]).abs() / w
    pos = tau * torch.clamp(1 - beta * dist, min=-1)
    return torch.cat([pos, torch.full((1, h * w), -tau, device=device)], 0)


def filter_loss_sum(x, t, log_prior):
    b, c, h, w = x.shape
    s = torch.einsum("bcp,mp->bcm", x.reshape(b, c, h * w), t)
    logq = s - torch.logsumexp(s, dim=0, keepdim=True)
    logpx = torch.logsumexp(logq + log_prior, dim=-1, keepdim=True)
    mi = (log_prior.exp() * (logq.exp() * (logq - logpx))).sum(dim=(0, 2))
    return -mi.sum()


def log_priors(p, device="cpu"):
    a = p / (1 + p)
    return torch.tensor([math.log(a / p)] * p + [math.log(1 - a)], device=device)


def explainer_loss(f, fp, out, aux, lam, eta, t, lp, *, filter_norm="filter", gain=16.0, floor_frac=0.5):
    """``rel + λ·Σ filter loss − η·mean log p`` of one explainer (a pure function: ``lam`` may be a mapped
    tensor). jinterp's default filter loss scales each filter's map to gain / max(batch mean, floor_frac·mean(f))
    before the MI (``icnn.scale_normalized``); ``filter_norm="none"`` is the paper's raw formula."""
    rel = ((fp - out).square().sum(dim=(1, 2, 3)) / fp.square().sum(dim=(1, 2, 3)).clamp_min(1e-12)).mean()
    maps = (aux["a1"], aux["a2"])
    if filter_norm == "filter":
        floor = floor_frac * f.detach().mean()
        maps = tuple(a * (gain / a.mean(dim=(0, 2, 3), keepdim=True).clamp_min(floor).clamp_min(1e-12))
                     for a in maps)
    filt = filter_loss_sum(maps[0], t, lp) + filter_loss_sum(maps[1], t, lp)
    logp = F.logsigmoid(aux["p_logit"]).mean()
    return rel + lam * filt - eta * logp


@torch.no_grad()
def beta_step(beta, x, m, rate=0.05, bounds=(0.5, 10.0)):
    """The release's β step toward ``clip(3 / (activation-weighted spread), 1.5, 3)`` (``icnn.update_beta``)."""
    b, c, h, w = x.shape
    r, cc = location(x)
    total = x.sum(dim=(2, 3)).clamp_min(1e-9)
    ar = lambda n: torch.arange(n, dtype=x.dtype, device=x.device)[None, None, :]  # noqa: E731
    dr2 = (ar(h) - r[..., None].to(x.dtype)) ** 2      # (B, C, H)
    dc2 = (ar(w) - cc[..., None].to(x.dtype)) ** 2
    sig = torch.sqrt(((x.sum(3) * dr2).sum(-1) + (x.sum(2) * dc2).sum(-1)).clamp_min(0) / total)
    s = (x * m).mean(dim=(2, 3))
    tgt = torch.clamp(3.0 / ((s * sig).sum(0) / s.sum(0)), 1.5, 3.0)
    beta = beta.clamp(*bounds)
    new = beta + rate * (tgt - beta)
    return torch.where(torch.isfinite(new), new, beta).clamp(*bounds)


class TorchStep:
    """``step(f, fp) -> loss``: one Adam step of the explainer + the β update (state kept inside)."""

    def __init__(self, variables, *, stride2, lam, eta, lr, h, w, beta_rate=0.05, bounds=(0.5, 10.0),
                 filter_norm="filter", gain=16.0, floor_frac=0.5, device="cpu"):
        self.model = TorchExplainer(variables, stride2=stride2, device=device)
        self.filter_norm, self.gain, self.floor_frac = filter_norm, gain, floor_frac
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, eps=1e-8)
        self.lam, self.eta, self.rate, self.bounds = lam, eta, beta_rate, bounds
        self.t = templates(h, w, device=device)
        self.lp = log_priors(h * w, device=device)

    def loss(self, f, fp):
        out, aux = self.model(f)
        return explainer_loss(f, fp, out, aux, self.lam, self.eta, self.t, self.lp, filter_norm=self.filter_norm,
                              gain=self.gain, floor_frac=self.floor_frac), aux

    def __call__(self, f, fp):
        self.opt.zero_grad(set_to_none=True)
        loss, aux = self.loss(f, fp)
        loss.backward()
        self.opt.step()
        self.model.beta1 = beta_step(self.model.beta1, aux["a1"], aux["mask1"], self.rate, self.bounds)
        self.model.beta2 = beta_step(self.model.beta2, aux["a2"], aux["mask2"], self.rate, self.bounds)
        return loss.detach()


def loop_step(steps: list[TorchStep], f, fp) -> list[torch.Tensor]:
    """N explainers trained the natural PyTorch way: a Python loop of :class:`TorchStep`, one model at a time."""
    return [step(f, fp) for step in steps]


class StackedExplainers:
    """N explainers as one ``torch.func`` ensemble (the documented model-ensembling recipe, as
    ``torch_cladec.StackedSweep``): weights and β stacked on a leading model axis, ``vmap`` of the pure forward
    and loss over (weights, β, λ, η) on the shared features, the sum of the N losses backpropagated once (the
    models share no weights, so each gets its own loss's gradient), one Adam over the stacked tensors (elementwise,
    so it equals N optimizers), the β step and the RMS running averages vmapped too."""

    def __init__(self, steps: list[TorchStep]):
        first = steps[0]
        self.stride2, self.eps, self.momentum = first.model.stride2, first.model.eps, first.model.momentum
        self.filter_norm, self.gain, self.floor_frac = first.filter_norm, first.gain, first.floor_frac
        self.rate, self.bounds, self.t, self.lp = first.rate, first.bounds, first.t, first.lp
        stack = lambda xs: torch.stack([x.detach() for x in xs]).contiguous()  # noqa: E731
        self.w = {k: stack([s.model.w[k] for s in steps]).requires_grad_(True) for k in first.model.w}
        self.beta1 = stack([s.model.beta1 for s in steps])
        self.beta2 = stack([s.model.beta2 for s in steps])
        self.rms_i = stack([s.model.rms_i for s in steps])
        self.rms_o = stack([s.model.rms_o for s in steps])
        device = self.beta1.device
        self.lam = torch.tensor([s.lam for s in steps], dtype=torch.float32, device=device)
        self.eta = torch.tensor([s.eta for s in steps], dtype=torch.float32, device=device)
        lr = first.opt.param_groups[0]["lr"]
        self.opt = torch.optim.Adam(list(self.w.values()), lr=lr, eps=1e-8)

    def losses(self, f, fp):
        """``((N,) losses, aux with a leading model axis)``."""
        from torch.func import vmap

        def one(w, beta1, beta2, lam, eta):
            out, aux = explainer_forward(w, beta1, beta2, f, stride2=self.stride2, eps=self.eps)
            loss = explainer_loss(f, fp, out, aux, lam, eta, self.t, self.lp, filter_norm=self.filter_norm,
                                  gain=self.gain, floor_frac=self.floor_frac)
            return loss, aux

        return vmap(one)(self.w, self.beta1, self.beta2, self.lam, self.eta)

    def step(self, f, fp):
        from torch.func import vmap

        self.opt.zero_grad(set_to_none=True)
        losses, aux = self.losses(f, fp)
        losses.sum().backward()
        self.opt.step()
        with torch.no_grad():
            step = vmap(lambda beta, x, m: beta_step(beta, x, m, self.rate, self.bounds))
            self.beta1 = step(self.beta1, aux["a1"].detach(), aux["mask1"])
            self.beta2 = step(self.beta2, aux["a2"].detach(), aux["mask2"])
            self.rms_i = self.momentum * self.rms_i + (1 - self.momentum) * aux["rms_i"].detach()
            self.rms_o = self.momentum * self.rms_o + (1 - self.momentum) * aux["rms_o"].detach()
        return losses.detach()


RELU_CONVS = ("interp1", "interp2", "ordinary", "dec1", "dec_out")


def tied_gate_allowance(variables, f, fp, *, stride2, lam, eta, h, w, margin=4.0):
    """How much each kernel-gradient entry may legitimately differ between two float32 implementations because a
    ReLU gate sits within float32 rounding of its kink: the gradient is discontinuous there, and which side a
    pre-activation of ~1e-6 lands on decides whether that pixel's term enters the kernel gradient.

    The loss and its gradients are evaluated in float64 (the reference point) and in float32 (NHWC inputs ``f``,
    ``fp``). For each conv (each is followed by a ReLU), the gates whose float64 pre-activation lies within
    ``margin`` × that layer's measured float32 forward error of zero are *tied*. The allowance of entry
    (i, j, c, o) is the sum over the tied pixels of output channel o of |x patch| · |∂L/∂(ReLU output)|
    (``conv2d_weight`` of the absolute input and the masked absolute output gradient): what opening or closing
    those gates adds to the entry. Only a layer's own gates count, not a flip's effect on the gradients reaching
    earlier layers, so a check built on it errs on the strict side. Returns ``{layer: {"allowance": HWIO float64,
    "tied": gate count, "threshold": the pre-activation margin}}``."""
    records, model64 = {}, None
    for dtype in (torch.float64, torch.float32):
        step = TorchStep(variables, stride2=stride2, lam=lam, eta=eta, lr=1e-3, h=h, w=w)
        m = step.model
        for k in m.w:
            m.w[k].data = m.w[k].data.to(dtype)
        m.beta1, m.beta2, step.t, step.lp = m.beta1.to(dtype), m.beta2.to(dtype), step.t.to(dtype), step.lp.to(dtype)
        ff, ffp = (torch.as_tensor(np.asarray(a)).permute(0, 3, 1, 2).contiguous().to(dtype) for a in (f, fp))
        rec = {}
        out, aux = explainer_forward(m.w, m.beta1, m.beta2, ff, stride2=stride2, eps=m.eps, record=rec)
        explainer_loss(ff, ffp, out, aux, lam, eta, step.t, step.lp).backward()
        records[dtype] = rec
        if dtype == torch.float64:
            model64 = m
    allowance = {}
    for n, r64 in records[torch.float64].items():
        z64, z32 = r64["z"].detach(), records[torch.float32][n]["z"].detach().double()
        threshold = margin * float((z32 - z64).abs().max())
        tied = (z64.abs() <= threshold).to(torch.float64)
        allow = torch.nn.grad.conv2d_weight(r64["x"].detach().abs(), model64.w[n + "_w"].shape,
                                            r64["a"].grad.detach().abs() * tied, stride=r64["stride"], padding=1)
        allowance[n] = {"allowance": allow.numpy().transpose(2, 3, 1, 0), "tied": int(tied.sum()),
                        "threshold": threshold}
    return allowance
