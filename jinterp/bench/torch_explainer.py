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

    def conv(self, x, name, stride=1):
        return F.conv2d(x, self.w[name + "_w"], self.w[name + "_b"], stride=stride, padding=1)

    def norm(self, x, attr):
        rms = torch.sqrt(x.square().mean(dim=(1, 2, 3)) + self.eps).mean()
        with torch.no_grad():
            setattr(self, attr, self.momentum * getattr(self, attr) + (1 - self.momentum) * rms.detach())
        return x / (rms + self.eps)

    def forward(self, f):
        a1 = F.relu(self.conv(f, "interp1"))
        m1 = mask(a1, self.beta1)
        y1 = F.relu(a1 * m1)
        a2 = F.relu(self.conv(y1, "interp2"))
        m2 = mask(a2, self.beta2)
        y2 = F.relu(a2 * m2)
        o = F.relu(self.conv(f, "ordinary"))
        xi, xo = self.norm(y2, "rms_i"), self.norm(o, "rms_o")
        p_logit = (f.mean(dim=(2, 3)) @ self.w["p_w"].T + self.w["p_b"])[:, 0]
        p = torch.sigmoid(p_logit)[:, None, None, None]
        x = p * xi + (1 - p) * xo
        x = F.relu(self.conv(x, "dec1", 2 if self.stride2 else 1))
        out = F.relu(self.conv(x, "dec_out"))
        return out, {"a1": a1, "a2": a2, "mask1": m1, "mask2": m2, "p_logit": p_logit}


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


class TorchStep:
    """``step(f, fp) -> loss``: one Adam step of the explainer + the β update (state kept inside)."""

    def __init__(self, variables, *, stride2, lam, eta, lr, h, w, beta_rate=0.05, bounds=(0.5, 10.0),
                 filter_norm="filter", gain=16.0, floor_frac=0.5, device="cpu"):
        self.model = TorchExplainer(variables, stride2=stride2, device=device)
        # jinterp's default loss: each filter's map scaled to gain / max(batch mean, floor_frac * mean(f)) before
        # the MI (icnn.scale_normalized); "none" is the paper's raw formula.
        self.filter_norm, self.gain, self.floor_frac = filter_norm, gain, floor_frac
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, eps=1e-8)
        self.lam, self.eta, self.rate, self.bounds = lam, eta, beta_rate, bounds
        self.t = templates(h, w, device=device)
        self.lp = log_priors(h * w, device=device)

    def loss(self, f, fp):
        out, aux = self.model(f)
        rel = ((fp - out).square().sum(dim=(1, 2, 3)) / fp.square().sum(dim=(1, 2, 3)).clamp_min(1e-12)).mean()
        maps = (aux["a1"], aux["a2"])
        if self.filter_norm == "filter":
            floor = self.floor_frac * f.detach().mean()
            maps = tuple(a * (self.gain / a.mean(dim=(0, 2, 3), keepdim=True).clamp_min(floor).clamp_min(1e-12))
                         for a in maps)
        filt = filter_loss_sum(maps[0], self.t, self.lp) + filter_loss_sum(maps[1], self.t, self.lp)
        logp = F.logsigmoid(aux["p_logit"]).mean()
        return rel + self.lam * filt - self.eta * logp, aux

    def __call__(self, f, fp):
        self.opt.zero_grad(set_to_none=True)
        loss, aux = self.loss(f, fp)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.model.beta1 = self.beta_step(self.model.beta1, aux["a1"], aux["mask1"])
            self.model.beta2 = self.beta_step(self.model.beta2, aux["a2"], aux["mask2"])
        return loss.detach()

    def beta_step(self, beta, x, m):
        b, c, h, w = x.shape
        r, cc = location(x)
        total = x.sum(dim=(2, 3)).clamp_min(1e-9)
        ar = lambda n: torch.arange(n, dtype=x.dtype, device=x.device)[None, None, :]  # noqa: E731
        dr2 = (ar(h) - r[..., None].to(x.dtype)) ** 2      # (B, C, H)
        dc2 = (ar(w) - cc[..., None].to(x.dtype)) ** 2
        sig = torch.sqrt(((x.sum(3) * dr2).sum(-1) + (x.sum(2) * dc2).sum(-1)).clamp_min(0) / total)
        s = (x * m).mean(dim=(2, 3))
        tgt = torch.clamp(3.0 / ((s * sig).sum(0) / s.sum(0)), 1.5, 3.0)
        beta = beta.clamp(*self.bounds)
        new = beta + self.rate * (tgt - beta)
        return torch.where(torch.isfinite(new), new, beta).clamp(*self.bounds)
