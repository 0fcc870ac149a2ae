"""Interpretable-CNN (ICNN) filter loss and mask layer (spec ``explainer_and_graph.md`` part B).

Zhang, Wu, Zhu, *Interpretable Convolutional Neural Networks*, CVPR 2018 (arXiv 1710.00935). Every
"part" filter of an interpretable conv-layer should fire at one location per image. All arrays are NHWC:
``x`` is a post-ReLU feature map ``(B, H, W, C)``, one ``H x W`` map per filter ``c``.

**Templates** (paper, [R] in the spec). For every grid position ``μ`` a positive template
``T_μ(a, b) = τ · max(1 − β (|a − μ_a|/H + |b − μ_b|/W), −1)`` and one negative template ``T⁻ = −τ``, with
``τ = 0.5 / (H·W)`` and ``β = 4`` (for square maps ``|a−μ_a|/n + |b−μ_b|/n = ‖[a,b] − μ‖₁/n``, the paper's form;
the per-axis form for rectangular maps is a jinterp choice). Priors ``p(T_μ) = α/(HW)``, ``p(T⁻) = 1 − α``,
``α = HW/(1 + HW)`` (so all ``HW + 1`` templates are equally likely). ``p(x|T) = exp(tr(x·T)) / Z_T`` with
``Z_T`` summed over the maps of that filter in the batch (the batch stands for the training set).

**Exact filter loss** (the default): ``Loss_c = −MI(X; T) = −Σ_T p(T) Σ_x p(x|T) log(p(x|T)/p(x))``, computed
in log space (log-sum-exp over the batch for ``Z_T`` and over templates for ``p(x)``), so it is finite for any
finite input and any β. It lies in ``[−log(HW + 1), 0]``. :func:`filter_loss`.

**Scale-invariant loss** (jinterp's default for the explainer, :func:`scale_normalized`): the MI grows with the
activations' magnitude (``tr(x·T)`` is linear in ``x``), so a network can satisfy the loss by inflating a map
that peaks at the same cell in every image (issue #20: RMS 0.04 → 3206, per-filter MI 2.85 → 0.0007 nats once
rescaled). Dividing each filter's map by its mean over the batch and positions (times a fixed ``gain``) before the
MI makes ``Loss(c·x) = Loss(x)``; only where and in which images a filter fires can lower it. Not in the paper
(whose τ = 0.5/n² assumes VGG-scale activations) nor in the release; ``faithful=True`` keeps the raw maps.

**Mask** (released code, [V] ICNN-m ``getMu``/``getMask``): the part location ``μ̂`` is the activation-weighted
centroid rounded to the grid (``location="centroid"``, the code's choice) or the argmax (``"argmax"``, the
paper's wording; disabled in the code); coordinates are normalized to ``[−1, 1]`` per axis and
``mask = max(1 − β_c (|Δrow| + |Δcol|), −1)``; the layer outputs ``max(x ⊙ mask, 0)``. The location is not
differentiated (it is rounded). :func:`apply_mask`.

**Released surrogate gradient** (``surrogate=True``, [V] ICNN-m ``our_vl_simplenn`` / ICNN-py ``conv_mask``):
the code never evaluates the MI; it adds a hand-made term to ``∂L/∂x``. :func:`surrogate_grad` transcribes
it; :func:`surrogate_filter_loss` is a ``jax.custom_vjp`` whose value is the exact loss (for logging) and
whose gradient is the surrogate.

**Learned β** (mask sharpness, [V] ICNN-m): per filter, init 2.0, driven toward ``clip(3/σ̄, 1.5, 3)`` where
``σ̄`` is the strength-weighted mean (strength = spatial mean of ``x ⊙ mask``) over images of the
activation's spatial std around its rounded centroid (grid units). The release implements this as the
gradient ``−10⁴ (target − β)`` with learning-rate multiplier 0.05 under SGD at lr 1e−4, i.e. the step
``β ← β + 0.05·(target − β)``; jinterp applies exactly that step outside the optimizer
(:func:`update_beta`, ``rate`` a config field) and clamps β to a finite range (ICNN-py issue #14: NaN β).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jinterp.errors import ConfigError, ShapeError

ALPHA_C = 0.5  # the release's α in the surrogate gradient (``alpha = 0.5``)
_TINY = 1e-9   # the release's lower bound on Σx for the centroid


def _check_maps(x: jax.Array, what: str = "x") -> tuple[int, int, int, int]:
    if x.ndim != 4:
        raise ShapeError(f"{what} must be NHWC feature maps (B, H, W, C), got shape {tuple(x.shape)}")
    return tuple(int(d) for d in x.shape)  # type: ignore[return-value]


def logsumexp(v: jax.Array, axis: int, keepdims: bool = False) -> jax.Array:
    """``log Σ exp(v)`` with the max shifted out, robust under XLA's recomputation.

    ``jax.nn.logsumexp`` can return ±inf under ``jit`` for inputs of magnitude ~1e10: XLA may recompute ``v``
    in two fusions with different rounding, so ``v − max(v)`` is not ≤ 0 and ``exp`` overflows. Here the
    shifted exponent is clamped to ≤ 0 and the sum to ≥ 1 (the max term alone contributes 1), which changes
    nothing in exact arithmetic. The clamps are ``where``s, not ``minimum``/``maximum``: those split the gradient
    at a tie, and the max term always ties (``v − m = 0``, and ``s = 1`` when the rest underflows), which halved
    (or quartered) the max term's gradient, so ``∂/∂v`` did not sum to 1 (bug found by the PyTorch bench twin).
    """
    m = jax.lax.stop_gradient(jnp.max(v, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    shifted = v - m
    s = jnp.sum(jnp.exp(jnp.where(shifted > 0.0, 0.0, shifted)), axis=axis, keepdims=True)
    out = m + jnp.log(jnp.where(s < 1.0, 1.0, s))
    return out if keepdims else jnp.squeeze(out, axis=axis)


# ------------------------------------------------------------------------------------------------ templates
def templates(h: int, w: int, beta: float | jax.Array = 4.0, tau: float | None = None) -> jax.Array:
    """The ``HW + 1`` ICNN templates flattened: ``(HW + 1, HW)`` (rows: ``T_μ`` for μ in row-major order,
    then ``T⁻``); with a per-filter ``beta`` of shape ``(C,)`` the result is ``(C, HW + 1, HW)``."""
    tau = 0.5 / (h * w) if tau is None else tau
    rows = jnp.arange(h, dtype=jnp.float32)
    cols = jnp.arange(w, dtype=jnp.float32)
    pr, pc = jnp.meshgrid(rows, cols, indexing="ij")
    pr, pc = pr.reshape(-1), pc.reshape(-1)
    # dist[μ, p] = |p_r − μ_r|/H + |p_c − μ_c|/W
    dist = jnp.abs(pr[None, :] - pr[:, None]) / h + jnp.abs(pc[None, :] - pc[:, None]) / w
    beta = jnp.asarray(beta, jnp.float32)
    if beta.ndim == 0:
        pos = tau * jnp.maximum(1.0 - beta * dist, -1.0)
        return jnp.concatenate([pos, jnp.full((1, h * w), -tau, jnp.float32)], axis=0)
    pos = tau * jnp.maximum(1.0 - beta[:, None, None] * dist[None], -1.0)
    neg = jnp.full((beta.shape[0], 1, h * w), -tau, jnp.float32)
    return jnp.concatenate([pos, neg], axis=1)


def log_priors(num_positions: int, alpha: float | None = None) -> jax.Array:
    """``log p(T)`` for the ``num_positions`` positive templates and the negative one, ``(P + 1,)``."""
    alpha = num_positions / (1.0 + num_positions) if alpha is None else alpha
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"ICNN template prior alpha must be in (0, 1), got {alpha}")
    return jnp.concatenate([jnp.full((num_positions,), math.log(alpha / num_positions), jnp.float32),
                            jnp.array([math.log(1.0 - alpha)], jnp.float32)])


# ------------------------------------------------------------------------------------------------ exact loss
def template_scores(x: jax.Array, beta: float | jax.Array = 4.0, tau: float | None = None) -> jax.Array:
    """``tr(x·T)`` for every image, filter and template: ``(B, C, HW + 1)``."""
    b, h, w, c = _check_maps(x)
    flat = x.reshape(b, h * w, c).astype(jnp.float32)
    t = templates(h, w, beta, tau)
    if t.ndim == 2:
        return jnp.einsum("bpc,mp->bcm", flat, t)
    return jnp.einsum("bpc,cmp->bcm", flat, t)


def filter_mi(x: jax.Array, beta: float | jax.Array = 4.0, tau: float | None = None,
              alpha: float | None = None) -> jax.Array:
    """Mutual information ``MI(X; T)`` (nats) of each filter over the batch, ``(C,)``; in ``[0, log(HW+1)]``."""
    b, h, w, _ = _check_maps(x)
    s = template_scores(x, beta, tau)                                   # (B, C, M)
    logq = s - logsumexp(s, axis=0, keepdims=True)               # log p(x_b | T_m)
    lp = log_priors(h * w, alpha)                                       # (M,)
    logpx = logsumexp(logq + lp, axis=-1, keepdims=True)         # log p(x_b)
    q = jnp.exp(logq)
    return jnp.einsum("m,bcm->c", jnp.exp(lp), q * (logq - logpx))


def filter_loss(x: jax.Array, beta: float | jax.Array = 4.0, tau: float | None = None,
                alpha: float | None = None) -> jax.Array:
    """Exact ICNN filter loss per filter, ``−MI(X; T)``, ``(C,)``; sum it over filters for the total."""
    return -filter_mi(x, beta, tau, alpha)


DEFAULT_GAIN = 16.0  # mean activation of a normalized map: see scale_normalized


def scale_normalized(x: jax.Array, gain: float = DEFAULT_GAIN, eps: float = 1e-12,
                     floor: float | jax.Array | None = None) -> jax.Array:
    """``gain · x_c / max(mean_{b,h,w}(x_c), floor)`` per filter, ``(B, H, W, C)`` (differentiated; a dead filter
    stays 0).

    Without ``floor`` the loss is invariant to any rescaling, so nothing stops the maps from shrinking until the
    filters die (measured on the tiny explainer: every interpretable filter dead after 150 steps). With a
    ``floor`` (e.g. a fraction of the input features' mean) it is invariant above it and shrinking below it
    lowers the MI, so the loss can be met neither by inflating nor by fading activations.

    ``gain`` fixes the scale the templates see [I]. At 16, on 8×8 maps of 32 images, a bump at a random cell per
    image scores MI ≈ 2.6 nats (of log 65 = 4.17), the same bump at one cell in every image ≈ 0.005 and uniform
    noise ≈ 0.04, so the loss rewards one part per image at varying places, and nothing else.
    """
    _check_maps(x)
    mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
    if floor is not None:
        mean = jnp.maximum(mean, floor)
    return x * (gain / jnp.maximum(mean, eps))


def scale_invariant_filter_loss(x: jax.Array, gain: float = DEFAULT_GAIN, beta: float | jax.Array = 4.0,
                                tau: float | None = None, alpha: float | None = None,
                                floor: float | jax.Array | None = None) -> jax.Array:
    """``−MI`` of the scale-normalized maps (:func:`scale_normalized`), ``(C,)``; invariant to ``x → c·x``
    (above ``floor`` when one is given)."""
    return filter_loss(scale_normalized(x, gain, floor=floor), beta, tau, alpha)


def filter_overlap(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Mean pairwise cosine similarity of the filters' spatial maps within each image, a scalar in ``[0, 1]``
    for non-negative maps (1: every filter has the same map, 0: disjoint supports); dead maps count 0.

    The ICNN loss is per filter, so it has no term against every filter finding the same part (issue #20: all
    interpretable filters peaked on one cell in 98–99 % of images). Penalizing this overlap is jinterp's optional
    remedy [I] (``filter_diversity`` in the explainer config); neither paper has it.
    """
    b, h, w, c = _check_maps(x)
    if c < 2:
        return jnp.zeros((), jnp.float32)
    flat = x.reshape(b, h * w, c).astype(jnp.float32)
    unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), eps)
    gram = jnp.einsum("bpc,bpd->bcd", unit, unit)
    off = gram.sum((1, 2)) - jnp.trace(gram, axis1=1, axis2=2)
    return jnp.mean(off) / (c * (c - 1))


def template_collision(x: jax.Array, beta: float | jax.Array = 4.0, tau: float | None = None) -> jax.Array:
    """How often two filters pick the same part template in an image, a scalar in ``[0, 1]``.

    Per image ``b`` and filter ``c`` the assignment ``q_c(μ | b) = softmax_μ tr(x_bc·T_μ)`` over the ``HW`` positive
    templates (the template that explains the map best, softened); the collision is ``Σ_μ q_c(μ) q_d(μ)`` averaged
    over ordered pairs ``c ≠ d`` and images: 1 when every filter picks the same position with certainty, 0 when
    their certain picks differ (``1/HW`` when every assignment is uniform). Pass scale-normalized maps
    (:func:`scale_normalized`): the softmax's sharpness follows the maps' magnitude. Penalizing it is a
    template-level diversity option [I] (``diversity_term="templates"`` in the explainer config; neither paper has
    it); measured in experiments/README.md, it spreads the filters less than :func:`filter_overlap` at equal cost.
    ``x (B, H, W, C)``.
    """
    b, h, w, c = _check_maps(x)
    if c < 2:
        return jnp.zeros((), jnp.float32)
    s = template_scores(x, beta, tau)[..., : h * w]                    # (B, C, HW): positive templates only
    q = jax.nn.softmax(s, axis=-1)
    gram = jnp.einsum("bcm,bdm->bcd", q, q)
    off = gram.sum((1, 2)) - jnp.trace(gram, axis1=1, axis2=2)
    return jnp.mean(off) / (c * (c - 1))


def mean_map_overlap(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Mean pairwise cosine similarity of the filters' batch-mean maps, a scalar in ``[0, 1]`` for non-negative
    maps: 1 when every filter fires, on average, in the same places. ``x (B, H, W, C)``; [I] (a remedy option,
    ``diversity_term="mean_maps"``)."""
    b, h, w, c = _check_maps(x)
    if c < 2:
        return jnp.zeros((), jnp.float32)
    m = jnp.mean(x.astype(jnp.float32), axis=0).reshape(h * w, c)
    unit = m / jnp.maximum(jnp.linalg.norm(m, axis=0, keepdims=True), eps)
    gram = unit.T @ unit
    return (gram.sum() - jnp.trace(gram)) / (c * (c - 1))


# ---------------------------------------------------------------------------------------------- mask layer
def part_location(x: jax.Array, method: str = "centroid") -> jax.Array:
    """Part location per image and filter, ``(B, C, 2)`` int32 grid indices ``(row, col)`` (not differentiated).

    ``centroid``: activation-weighted mean position, rounded (half to even, as ``torch.round``) and clipped to
    the grid; an all-zero map gives ``(0, 0)`` like the release (``Σx`` floored at 1e−9). ``argmax``: the
    position of the largest response (first one on ties).
    """
    b, h, w, c = _check_maps(x)
    x = jax.lax.stop_gradient(x.astype(jnp.float32))
    if method == "argmax":
        idx = jnp.argmax(x.reshape(b, h * w, c), axis=1)
        return jnp.stack([idx // w, idx % w], axis=-1).astype(jnp.int32)
    if method != "centroid":
        raise ConfigError(f"unknown ICNN part location {method!r}; choose centroid or argmax")
    total = jnp.maximum(x.sum(axis=(1, 2)), _TINY)                      # (B, C)
    r = jnp.einsum("bhwc,h->bc", x, jnp.arange(h, dtype=jnp.float32)) / total
    col = jnp.einsum("bhwc,w->bc", x, jnp.arange(w, dtype=jnp.float32)) / total
    r = jnp.clip(jnp.round(r), 0, h - 1)
    col = jnp.clip(jnp.round(col), 0, w - 1)
    return jnp.stack([r, col], axis=-1).astype(jnp.int32)


def _norm_coords(n: int) -> jax.Array:
    return jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32) if n > 1 else jnp.zeros((1,), jnp.float32)


def safe_beta(beta: jax.Array, lo: float = 1e-3, hi: float = 1e3, fallback: float = 2.0) -> jax.Array:
    """β with NaN/Inf replaced by ``fallback`` and clamped to ``[lo, hi]`` (the NaN-β failure of ICNN-py #14)."""
    beta = jnp.asarray(beta, jnp.float32)
    return jnp.clip(jnp.where(jnp.isfinite(beta), beta, fallback), lo, hi)


def make_mask(loc: jax.Array, h: int, w: int, beta: jax.Array) -> jax.Array:
    """``max(1 − β_c (|Δrow| + |Δcol|), −1)`` in normalized coordinates; ``loc (B, C, 2)`` -> ``(B, H, W, C)``."""
    ry, cx = _norm_coords(h), _norm_coords(w)
    mu_r = ry[loc[..., 0]]                                              # (B, C)
    mu_c = cx[loc[..., 1]]
    d = jnp.abs(ry[None, :, None, None] - mu_r[:, None, None, :]) + jnp.abs(cx[None, None, :, None]
                                                                          - mu_c[:, None, None, :])
    return jnp.maximum(1.0 - safe_beta(beta) * d, -1.0)


def apply_mask(x: jax.Array, beta: jax.Array, method: str = "centroid",
               part_filters: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The mask layer: returns ``(max(x ⊙ mask, 0), mask)``; the mask is a constant for differentiation.

    ``part_filters`` (bool ``(C,)``, default all True) selects the filters that get a mask; the others get
    mask 1 (the release's non-part filters).
    """
    _, h, w, _ = _check_maps(x)
    mask = jax.lax.stop_gradient(make_mask(part_location(x, method), h, w, beta))
    if part_filters is not None:
        mask = jnp.where(part_filters, mask, 1.0)
    return jnp.maximum(x * mask, 0.0), mask


# -------------------------------------------------------------------------------------------------- learned β
def spatial_std(x: jax.Array, loc: jax.Array) -> jax.Array:
    """Activation-weighted RMS distance (grid units) from ``loc``, ``(B, C)``: the release's ``sqrtvar``."""
    b, h, w, c = _check_maps(x)
    x = x.astype(jnp.float32)
    total = jnp.maximum(x.sum(axis=(1, 2)), _TINY)
    rows = jnp.arange(h, dtype=jnp.float32)
    cols = jnp.arange(w, dtype=jnp.float32)
    dr2 = (rows[None, :, None] - loc[:, None, :, 0]) ** 2               # (B, H, C)
    dc2 = (cols[None, :, None] - loc[:, None, :, 1]) ** 2               # (B, W, C)
    m = jnp.einsum("bhwc,bhc->bc", x, dr2) + jnp.einsum("bhwc,bwc->bc", x, dc2)
    return jnp.sqrt(jnp.maximum(m, 0.0) / total)


def beta_target(x: jax.Array, mask: jax.Array, method: str = "centroid", scale: float = 3.0,
                clip: tuple[float, float] = (1.5, 3.0), weights: jax.Array | None = None) -> jax.Array:
    """``clip(scale / σ̄, lo, hi)`` per filter, ``(C,)``; ``σ̄ = Σ_i s_i σ_i / Σ_i s_i`` with ``s`` = spatial mean
    of ``x ⊙ mask`` (positive images: ``weights`` (B,) in {0, 1}, default all). NaN where undefined
    (no strength); :func:`update_beta` then keeps β."""
    x = jax.lax.stop_gradient(x.astype(jnp.float32))
    sig = spatial_std(x, part_location(x, method))
    s = jnp.mean(x * mask, axis=(1, 2))
    if weights is not None:
        s = s * weights[:, None]
    sbar = jnp.sum(s * sig, axis=0) / jnp.sum(s, axis=0)
    return jnp.clip(scale / sbar, clip[0], clip[1])


def update_beta(beta: jax.Array, target: jax.Array, rate: float = 0.05,
                bounds: tuple[float, float] = (0.5, 10.0)) -> jax.Array:
    """``β ← clamp(β + rate·(target − β))``; filters with a non-finite target or β keep a finite β."""
    beta = safe_beta(beta, *bounds)
    new = beta + rate * (target - beta)
    return jnp.clip(jnp.where(jnp.isfinite(new), new, beta), *bounds)


RELEASED_BETA = {"lr": 1e-4, "lr_mult": 0.05, "grad_scale": 1e4, "momentum": 0.9}


def update_beta_released(beta: jax.Array, velocity: jax.Array, target: jax.Array, batch_size: int, *,
                         lr: float = RELEASED_BETA["lr"], lr_mult: float = RELEASED_BETA["lr_mult"],
                         grad_scale: float = RELEASED_BETA["grad_scale"], momentum: float = RELEASED_BETA["momentum"],
                         bounds: tuple[float, float] = (0.5, 10.0)) -> tuple[jax.Array, jax.Array]:
    """The release's β step as MatConvNet's simplenn SGD takes it: returns ``(β, velocity)``.

    ``g = −grad_scale·(target − β)`` (ICNN-m ``our_vl_simplenn``), ``v ← momentum·v − g / batch_size``
    (``cnn_train``: the layer gradient of the batch-summed loss divided by the batch size; β's weight decay is
    taken as 0 [I]), ``β ← β + lr·lr_mult·v``. At batch 32 that is ~1/32 of :func:`update_beta`'s step, carried
    by momentum 0.9. Non-finite targets leave β and the velocity as they are; β is clamped to ``bounds``.
    """
    beta = safe_beta(beta, *bounds)
    ok = jnp.isfinite(target)
    g = -grad_scale * (jnp.where(ok, target, beta) - beta)
    v = jnp.where(ok, momentum * velocity - g / batch_size, velocity)
    new = beta + lr * lr_mult * v
    return jnp.clip(jnp.where(jnp.isfinite(new), new, beta), *bounds), v


# ----------------------------------------------------------------------------------- released surrogate gradient
def _logmeanexp(v: jax.Array, axis: int = 0) -> jax.Array:
    return logsumexp(v, axis=axis) - math.log(v.shape[axis])


def _normalized_weights(v: jax.Array, sel: jax.Array, offset: jax.Array) -> jax.Array:
    """``w_i / mean_{i∈sel} w`` for ``w_i = exp(v_i)·(offset_i)``, computed with a max shift (exact, no
    overflow); 0 where the selection is empty or the mean is 0 (the release patches those NaN to 0)."""
    vmax = jnp.max(jnp.where(sel[:, None], v, -jnp.inf), axis=0, keepdims=True)
    vmax = jnp.where(jnp.isfinite(vmax), vmax, 0.0)
    w = jnp.where(sel[:, None], jnp.exp(jnp.minimum(v - vmax, 0.0)) * offset, 0.0)
    n = jnp.maximum(jnp.sum(sel), 1)
    mean = jnp.sum(w, axis=0, keepdims=True) / n
    ok = mean != 0
    return jnp.where(ok, w / jnp.where(ok, mean, 1.0), 0.0)


def surrogate_grad(x: jax.Array, mask: jax.Array, positive: jax.Array, coef: float | jax.Array,
                   alpha: float = ALPHA_C) -> jax.Array:
    """The release's filter-loss gradient w.r.t. ``x`` (spec B2), ``(B, H, W, C)``.

    positive images ``i``: ``−mask_i · (w_i / mean_pos w) · coef``, ``w = exp(s/α)(s − L⁺ + α)``,
    ``s`` = spatial mean of ``x ⊙ mask``, ``L⁺ = α log mean_batch exp(mean(x ⊙ mask')/α)`` with ``mask'`` the
    mask reversed along the batch and channel axes; negative images: ``+(w⁻_i / mean_neg w⁻) · coef``
    uniformly, ``w⁻ = exp(−s⁻/α)(−s⁻ − L⁻ + α)``, ``s⁻`` = spatial mean of ``x``,
    ``L⁻ = α log mean_batch exp(−s⁻/α)``. Both batch means in ``L`` run over the whole batch, the normalizing
    means over the positive / negative images (as in the release). ``coef`` = ``1e−5 / (mag·epoch)`` there
    (mag 0.1). Log-sum-exp and a max shift replace the release's inf/NaN patching.
    """
    _check_maps(x)
    x = x.astype(jnp.float32)
    pos = jnp.asarray(positive).astype(bool)
    s = jnp.mean(x * mask, axis=(1, 2))                                 # (B, C)
    s_rev = jnp.mean(x * mask[::-1, :, :, ::-1], axis=(1, 2))
    lpos = alpha * _logmeanexp(s_rev / alpha, axis=0)                   # (C,)
    r_pos = _normalized_weights(s / alpha, pos, s - lpos[None] + alpha)
    s_neg = jnp.mean(x, axis=(1, 2))
    lneg = alpha * _logmeanexp(-s_neg / alpha, axis=0)
    r_neg = _normalized_weights(-s_neg / alpha, ~pos, -s_neg - lneg[None] + alpha)
    g = -mask * r_pos[:, None, None, :] + r_neg[:, None, None, :]
    return g * coef


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def surrogate_filter_loss(x: jax.Array, mask: jax.Array, positive: jax.Array, coef: jax.Array,
                          beta: float = 4.0, alpha: float | None = None, alpha_c: float = ALPHA_C) -> jax.Array:
    """Value: the exact total filter loss ``Σ_c −MI`` (for logging); gradient w.r.t. ``x``: the release's
    surrogate (:func:`surrogate_grad`) times the incoming cotangent. ``mask``, ``positive`` and ``coef``
    get zero gradients. ``beta``/``alpha`` are the template parameters of the logged value."""
    return jnp.sum(filter_loss(x, beta, None, alpha))


def _sfl_fwd(x, mask, positive, coef, beta, alpha, alpha_c):
    return surrogate_filter_loss(x, mask, positive, coef, beta, alpha, alpha_c), (x, mask, positive, coef)


def _sfl_bwd(beta, alpha, alpha_c, res, g):
    x, mask, positive, coef = res
    gx = (g * surrogate_grad(x, mask, positive, coef, alpha_c)).astype(x.dtype)
    return gx, jnp.zeros_like(mask), jnp.zeros_like(positive), jnp.zeros_like(coef)


surrogate_filter_loss.defvjp(_sfl_fwd, _sfl_bwd)
