"""PyTorch twins of the interpretable-basis hot paths, for :mod:`jinterp.bench.basis`.

The same math as ``jinterp.methods.basis.uibe`` / ``ibd`` and ``jinterp.metrics.dissection``, written the way one
would in PyTorch (float32, autograd, ``torch.optim.Adam``, ``F.interpolate``), not a transcription of the JAX code:

* :class:`UIBEStep` — one UIBE optimisation step: QR-orthonormalised ``Q`` (sign-fixed), ``M = softplus(m)``,
  ``y = σ(Qᵀx̃/M − b)``, the losses L^s, L^ma, L^mm (and L^ic when weighted), backward, Adam update.
  :class:`UIBEPolarStep`: the same with ``orthonormalization="polar"`` (one Newton–Schulz step in the loss, a
  Newton–Schulz polar retraction of ``a`` after the update).
* :func:`tally_batch` — the dissection tally of one image batch: bilinear upsampling to the label resolution
  (``align_corners=False``, edges clamped: the same half-pixel-centred resize as ``jax.image.resize``), threshold
  ``≥ T``, each image's present concepts padded to ``max_labels``, intersections as a batched matmul,
  scatter-adds (``index_add_``) into the ``(U, L+1)`` / ``(U, G)`` / ``(L+1,)`` counters.
* :func:`tally_loop` — the NetDissect-Lite-style reference (``feature_operation.tally_job``): a Python loop over
  images and units, one resize and one ``bincount`` per (image, unit), skipping units whose map never reaches the
  threshold; jinterp's rules (``≥ T``, the paper's category rule, dead units never fire) so the counts agree.
* :func:`ibd_epoch` — one IBD epoch for all concepts at once: hard-negative (or random) selection from each
  concept's pool by ``topk``, a per-concept shuffle, then per mini-batch a batched ``(C, B, D)`` gather, masked
  MSE-on-sigmoid (or BCE) per concept, autograd and a plain SGD update.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------------------
# UIBE


def orthonormalize(a: torch.Tensor) -> torch.Tensor:
    """Reduced QR of ``(D, I)`` with the sign of ``diag(R)`` fixed positive: the unique orthonormal factor."""
    q, r = torch.linalg.qr(a)
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    return q * signs[None, :]


def uibe_losses(a, m, b, x, *, lambda_sparsity=2.6, lambda_max_activation=2.8, lambda_margin=0.6,
                lambda_inactive=0.0, inactive_tau=0.9, inactive_gamma=1.1, orthonormal=orthonormalize):
    """Weighted UIBE objective and ``(total, L^s, L^ma, L^mm)`` for a standardised ``(B, D)`` batch; ``Q =
    orthonormal(a)`` (QR; :func:`newton_schulz_step` for the polar parametrization)."""
    q = orthonormal(a)
    margin = F.softplus(m) + 1e-6
    logits = x @ q / margin - b
    log_y = F.logsigmoid(logits)
    y = log_y.exp()
    qn = y / (y.sum(-1, keepdim=True) + 1e-12)
    log_q = qn.clamp(1e-12, 1.0).log()
    l_s = (-(qn * log_q).sum(-1)).mean() / LN2
    l_ma = (-(qn * log_y).sum(-1)).mean() / LN2
    l_mm = 1.0 / margin
    total = lambda_sparsity * l_s + lambda_max_activation * l_ma + lambda_margin * l_mm
    if lambda_inactive:
        nu = inactive_tau / logits.shape[-1]
        usage = (y ** inactive_gamma).mean(0)
        total = total + lambda_inactive * (F.relu(nu - usage) / nu).mean()
    return total, torch.stack([total, l_s, l_ma, l_mm])


class UIBEStep:
    """One Adam step of UIBE on a raw pixel batch per call; parameters ``a, m, b`` live in the object."""

    def __init__(self, a: np.ndarray, m: float, b: float, mean: np.ndarray, std: np.ndarray, lr: float,
                 device: str = "cpu", **loss_kw):
        t = lambda v: torch.tensor(np.asarray(v, np.float32), device=device)  # noqa: E731
        self.a, self.m, self.b = (t(v).requires_grad_() for v in (a, m, b))
        self.mean, self.std = t(mean), t(std)
        self.opt = torch.optim.Adam([self.a, self.m, self.b], lr=lr)
        self.loss_kw = loss_kw

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        total, parts = uibe_losses(self.a, self.m, self.b, (xb - self.mean) / self.std, **self.loss_kw)
        total.backward()
        self.opt.step()
        return parts.detach()


# --------------------------------------------------------------------------------------------------------------
# Dissection tally


def present_labels(ids: torch.Tensor, max_labels: int) -> torch.Tensor:
    """``(B, K)`` non-negative ids -> ``(B, max_labels)`` the distinct nonzero ids of each row, ascending, 0-padded."""
    s, _ = torch.sort(ids, dim=1)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    first &= s > 0
    pos = torch.where(first, first.cumsum(1) - 1, max_labels)      # slot max_labels = discard
    out = torch.zeros((ids.shape[0], max_labels + 1), dtype=ids.dtype, device=ids.device)
    out.scatter_(1, pos.clamp(max=max_labels), torch.where(first, s, 0))
    return out[:, :max_labels]


def tally_batch(counters, acts, thresholds, dead, valid, pixel_labels, image_labels, category_of,
                max_labels: int, num_categories: int):
    """Adds one batch to ``counters = (intersection (U, L+1), activated (U, G), label_count (L+1,))`` in place.

    ``acts (B, h, w, U)`` float, ``pixel_labels (B, P, H, W)`` / ``image_labels (B, Q)`` global ids (0 = none),
    ``valid (B,)`` marks real images (a padded last batch), ``dead (U,)`` units that never fire.
    """
    inter_c, act_c, lab_c = counters
    b, _, h, w = pixel_labels.shape
    up = F.interpolate(acts.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
    on = (up >= thresholds[None, :, None, None]) & ~dead[None, :, None, None] & valid[:, None, None, None]
    on = on.reshape(b, on.shape[1], h * w).float()

    flat = pixel_labels.reshape(b, -1, h * w)
    present = present_labels(torch.cat([flat.reshape(b, -1), image_labels.to(flat.dtype)], 1), max_labels)
    present = torch.where(valid[:, None], present, 0)
    pix_hit = (flat[:, :, :, None] == present[:, None, None, :]).any(1)            # (B, S, C)
    img_hit = (image_labels[:, :, None] == present[:, None, :]).any(1)              # (B, C)
    onehot = ((pix_hit | img_hit[:, None, :]) & (present[:, None, :] > 0)).float()

    inter = torch.bmm(on, onehot)                                                   # (B, U, C)
    cat_present = torch.zeros((b, num_categories), device=acts.device)
    cat_present.scatter_reduce_(1, category_of[present], (present > 0).float(), reduce="amax")
    cols = present.reshape(-1)
    inter_c.index_add_(1, cols, inter.permute(1, 0, 2).reshape(inter.shape[1], -1))
    act_c += on.sum(2).T @ cat_present
    lab_c.index_add_(0, cols, onehot.sum(1).reshape(-1))
    return counters


def empty_counters(num_units: int, num_concepts: int, num_categories: int, device: str = "cpu"):
    return (torch.zeros((num_units, num_concepts + 1), device=device),
            torch.zeros((num_units, num_categories), device=device),
            torch.zeros((num_concepts + 1,), device=device))


def tally_loop(counters, acts: np.ndarray, thresholds: np.ndarray, dead: np.ndarray, pixel_labels: np.ndarray,
               image_labels: np.ndarray, category_of: np.ndarray, num_categories: int):
    """NetDissect-Lite's per-image, per-unit tally loop (NumPy), jinterp's counting rules; adds in place.

    Assumes a pixel carries a concept in at most one plane (true when planes are categories, as in synthparts).
    """
    inter_c, act_c, lab_c = counters
    n, hh, ww, units = acts.shape
    _, _, h, w = pixel_labels.shape
    rh = _bilinear_np(hh, h)
    rw = _bilinear_np(ww, w)
    for i in range(n):
        pixels = pixel_labels[i]
        scalars = [int(s) for s in image_labels[i] if s > 0]
        lab = np.bincount(pixels.ravel(), minlength=len(lab_c))
        lab[0] = 0
        lab_c += lab
        for s in scalars:
            lab_c[s] += h * w
        cats = np.zeros(num_categories, bool)
        cats[category_of[np.unique(pixels[pixels > 0])]] = True
        cats[category_of[scalars]] = True
        for u in range(units):
            fmap = acts[i, :, :, u]
            if dead[u] or fmap.max() < thresholds[u]:   # bilinear upsampling never exceeds the map's maximum
                continue
            mask = rh @ fmap @ rw.T
            idx = np.argwhere(mask >= thresholds[u])
            tally = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=len(lab_c))
            tally[0] = 0
            inter_c[u] += tally
            for s in scalars:
                inter_c[u, s] += len(idx)
            act_c[u] += len(idx) * cats
    return counters


def _bilinear_np(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` half-pixel-centred bilinear interpolation matrix, edges clamped (``align_corners=False``)."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    m = np.zeros((dst, src), np.float32)
    np.add.at(m, (np.arange(dst), lo), 1 - (pos - lo))
    np.add.at(m, (np.arange(dst), hi), pos - lo)
    return m


# --------------------------------------------------------------------------------------------------------------
# IBD


def negative_order(w, b, x, pool_idx, pool_mask, n_neg: int, hard: bool = True, rand=None) -> torch.Tensor:
    """``(C, n_neg)`` positions in each concept's pool: the highest-scoring negatives first (``hard``), else the
    top of ``rand`` (random negatives); masked pool slots rank last."""
    with torch.no_grad():
        if hard:
            rank = torch.gather((x @ w.T + b).T, 1, pool_idx)
        else:
            rank = torch.rand(pool_idx.shape, device=x.device) if rand is None else rand
        rank = rank.masked_fill(~pool_mask, -math.inf)
        return rank.topk(n_neg, dim=1).indices


def ibd_epoch(w, b, x, pos_idx, pos_mask, pool_idx, pool_mask, hard: bool, *, lr: float, batch_size: int,
              neg_ratio: int, n_neg: int, steps: int, loss: str = "mse", rand=None, perm=None, order=None):
    """One IBD epoch for every concept at once. ``w (C, D)`` (``nn.Linear`` layout), ``b (C,)``, ``x (P, D)``.

    ``rand (C, pool)`` (random negatives, epoch 0), ``order (C, n_neg)`` (the ranked negatives, see
    :func:`negative_order`) and ``perm (C, pos + n_neg)`` (the shuffle) may be passed to replay another
    framework's draws and tie order; by default they are computed here (``torch.rand``, ``topk``).
    Returns ``(w, b, mean loss per concept)``.
    """
    n_c = w.shape[0]
    n_pos = pos_mask.sum(1)
    if order is None:
        order = negative_order(w, b, x, pool_idx, pool_mask, n_neg, hard, rand)
    neg_idx = torch.gather(pool_idx, 1, order)
    want = torch.minimum(neg_ratio * n_pos, pool_mask.sum(1))
    neg_mask = torch.arange(n_neg, device=x.device)[None, :] < want[:, None]
    idx = torch.cat([pos_idx, neg_idx], 1)
    lab = torch.cat([torch.ones_like(pos_idx, dtype=torch.float32), torch.zeros_like(neg_idx, dtype=torch.float32)], 1)
    msk = torch.cat([pos_mask, neg_mask], 1).float()
    if perm is None:
        perm = torch.rand(idx.shape, device=x.device).argsort(1)
    idx, lab, msk = (torch.gather(t, 1, perm) for t in (idx, lab, msk))
    padn = steps * batch_size - idx.shape[1]
    idx, lab, msk = (F.pad(t, (0, padn)).reshape(n_c, steps, batch_size) for t in (idx, lab, msk))

    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    losses, counts = [], []
    for s in range(steps):
        xb, yb, mb = x[idx[:, s]], lab[:, s], msk[:, s]                         # (C, B, D), (C, B), (C, B)
        logit = torch.einsum("cbd,cd->cb", xb, w) + b[:, None]
        if loss == "mse":
            per = (torch.sigmoid(logit) - yb) ** 2
        else:
            per = -(yb * F.logsigmoid(logit) + (1 - yb) * F.logsigmoid(-logit))
        cnt = mb.sum(1)
        per_c = (per * mb).sum(1) / cnt.clamp(min=1.0)
        gw, gb = torch.autograd.grad(per_c.sum(), (w, b))                        # concepts are independent
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
        losses.append(per_c.detach())
        counts.append(cnt)
    losses, counts = torch.stack(losses), torch.stack(counts)
    mean_loss = (losses * counts).sum(0) / counts.sum(0).clamp(min=1.0)
    return w.detach(), b.detach(), mean_loss


# --------------------------------------------------------------------------------------------------------------
# UIBE, orthonormalization="polar"


def newton_schulz_step(x: torch.Tensor) -> torch.Tensor:
    """``X(3I − XᵀX)/2``: one Newton–Schulz polar step of ``(D, I)``."""
    return 1.5 * x - 0.5 * x @ (x.T @ x)


@torch.no_grad()
def polar_factor(a: torch.Tensor, tol: float = 1e-6, max_iters: int = 100) -> torch.Tensor:
    """Polar factor by Newton–Schulz until ``max|XᵀX − I| ≤ tol`` (pre-scaled only where σ_max may reach √3)."""
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    bound = float((a.T @ a).abs().sum(1).max())
    x = a / math.sqrt(bound) if bound > 2.9 else a
    for _ in range(max_iters):
        g = x.T @ x
        if float((g - eye).abs().max()) <= tol:
            break
        x = 1.5 * x - 0.5 * x @ g
    return x


class UIBEPolarStep(UIBEStep):
    """:class:`UIBEStep` with the polar parametrization: ``a`` is orthonormal, retracted after each Adam step."""

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        total, parts = uibe_losses(self.a, self.m, self.b, (xb - self.mean) / self.std,
                                   orthonormal=newton_schulz_step, **self.loss_kw)
        total.backward()
        self.opt.step()
        with torch.no_grad():
            self.a.copy_(polar_factor(self.a))
        return parts.detach()
