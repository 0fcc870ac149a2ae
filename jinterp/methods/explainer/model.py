"""The explainer network (spec ``explainer_and_graph.md`` part C) and its pure, vmappable train step.

Zhang, Yang, Liu, Wu, Zhu, *Unsupervised Learning of Neural Networks to Explain Neural Networks*
(arXiv 1805.07468 / 1901.07538). No public code exists; the architecture below is the spec's recalled [R]
design with jinterp's [I] concrete choices, each a field of :class:`~jinterp.methods.explainer.config.
ExplainerConfig`:

    f (performer layer IN, post-ReLU)
      ├─ interpretable track: conv3x3 C→K, ReLU, ICNN mask ─ conv3x3 K→K, ReLU, ICNN mask ─ norm ─┐
      ├─ ordinary track:      conv3x3 C→K, ReLU ─────────────────────────────────────────── norm ─┤
      └─ p-branch:            global average pool → Dense(1) → sigmoid (bias +2) = p ∈ (0, 1)      │
    x_enc = p · interp + (1 − p) · ordinary  ──  decoder: conv3x3 K→D (+ stride-2 convs / 4x4 stride-2
    transposed convs to reach the target's spatial size, or adaptive average pooling for other ratios)
    + ReLU, conv3x3 D→C⁺ (+ ReLU when the target is non-negative)  =  f̂⁺ (performer layer OUT)

Norm layers [I]: each track is divided by an EMA (momentum 0.9) of its per-image RMS; in training the batch
mean of the per-image RMS is used (and differentiated, as BatchNorm's statistics are), in evaluation the EMA.
(The spec says "per-image L2 norm"; the RMS is the L2 norm / √(H·W·K), the same up to a constant that keeps
values O(1).)

Loss (spec C3): ``L = mean_I ‖f⁺_I − f̂⁺_I‖² / ‖f⁺_I‖² + λ Σ_filters Loss_filter − η mean_I log p_I`` with the
exact ICNN filter loss on both interpretable layers, by default on scale-normalized maps (``filter_norm="filter"``,
:func:`icnn.scale_normalized`: the raw loss is satisfied by inflating activations), or the release's surrogate
gradient (scaled by 1/B in ``faithful`` mode, as the release divides the batch-summed gradient); the performer is
frozen (its features are computed under ``stop_gradient`` from a separate variables tree that the step never
updates).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jinterp.core.train import TrainState
from jinterp.errors import ConfigError, LayerError, ShapeError
from jinterp.methods.explainer import icnn
from jinterp.nn import ops
from jinterp.nn.layers import Conv2d, ConvTranspose2d


class TrackNorm(nn.Module):
    """Divides by the mean per-image RMS (train: this batch's, updating an EMA; eval: the EMA)."""

    momentum: float = 0.9
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ema = self.variable("batch_stats", "rms", lambda: jnp.ones((), jnp.float32))
        if train:
            rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=(1, 2, 3)) + self.eps).mean()
            if not self.is_initializing():
                ema.value = self.momentum * ema.value + (1.0 - self.momentum) * jax.lax.stop_gradient(rms)
        else:
            rms = ema.value
        return x / (rms + self.eps)


def _log2_ratio(a: int, b: int) -> int | None:
    """k with a == b·2^k (k may be negative), else None."""
    if a <= 0 or b <= 0:
        return None
    r = a / b
    k = round(math.log2(r))
    return k if 2.0 ** k == r else None


class Explainer(nn.Module):
    """Input ``f (B, H, W, C)``; output ``(f̂⁺ (B, H⁺, W⁺, C⁺), aux)``.

    ``aux``: ``a1``, ``a2`` (post-ReLU maps of the two interpretable layers, before their masks), ``y1``, ``y2``
    (after the masks), ``mask1``, ``mask2``, ``p_logit``, ``p`` ``(B,)``. ICNN β per filter lives in the
    ``icnn`` collection (``beta1``, ``beta2``), its SGD velocity (release rule) in ``icnn_momentum``, both updated
    outside the optimizer (:func:`make_update`).
    """

    out_shape: tuple[int, int, int]
    filters: int = 512
    decoder_width: int = 0
    location: str = "centroid"
    beta_init: float = 2.0
    norm_momentum: float = 0.9
    norm_eps: float = 1e-6
    p_bias_init: float = 2.0
    out_relu: bool = True

    @nn.compact
    def __call__(self, f: jax.Array, train: bool = False):
        if f.ndim != 4:
            raise ShapeError(f"explainer input must be NHWC (B, H, W, C), got {tuple(f.shape)}")
        k = self.filters
        b1 = self.variable("icnn", "beta1", lambda: jnp.full((k,), self.beta_init, jnp.float32))
        b2 = self.variable("icnn", "beta2", lambda: jnp.full((k,), self.beta_init, jnp.float32))
        # β's SGD momentum (used by the release's β rule, make_update(beta_rule="released")).
        self.variable("icnn_momentum", "beta1", lambda: jnp.zeros((k,), jnp.float32))
        self.variable("icnn_momentum", "beta2", lambda: jnp.zeros((k,), jnp.float32))
        a1 = nn.relu(Conv2d(k, 3, padding=1, name="interp1")(f))
        y1, m1 = icnn.apply_mask(a1, b1.value, self.location)
        a2 = nn.relu(Conv2d(k, 3, padding=1, name="interp2")(y1))
        y2, m2 = icnn.apply_mask(a2, b2.value, self.location)
        o = nn.relu(Conv2d(k, 3, padding=1, name="ordinary")(f))
        xi = TrackNorm(self.norm_momentum, self.norm_eps, name="norm_interp")(y2, train)
        xo = TrackNorm(self.norm_momentum, self.norm_eps, name="norm_ordinary")(o, train)
        p_logit = nn.Dense(1, bias_init=nn.initializers.constant(self.p_bias_init), name="p_branch")(
            f.mean(axis=(1, 2)))[:, 0]
        p = jax.nn.sigmoid(p_logit)
        x = p[:, None, None, None] * xi + (1.0 - p[:, None, None, None]) * xo
        out = self.decode(x)
        aux = {"a1": a1, "a2": a2, "y1": y1, "y2": y2, "mask1": m1, "mask2": m2, "p_logit": p_logit, "p": p}
        return out, aux

    def decode(self, x: jax.Array) -> jax.Array:
        th, tw, tc = self.out_shape
        h, w = x.shape[1:3]
        d = self.decoder_width or self.filters
        kh, kw = _log2_ratio(h, th), _log2_ratio(w, tw)
        if kh is not None and kh == kw and kh >= 0:          # same size or downsample by 2^k
            x = nn.relu(Conv2d(d, 3, stride=2 if kh > 0 else 1, padding=1, name="dec1")(x))
            for i in range(1, kh):
                x = nn.relu(Conv2d(d, 3, stride=2, padding=1, name=f"dec_down{i}")(x))
        elif kh is not None and kh == kw:                    # upsample by 2^-k
            x = nn.relu(Conv2d(d, 3, padding=1, name="dec1")(x))
            for i in range(-kh):
                x = nn.relu(ConvTranspose2d(d, 4, 2, 1, name=f"dec_up{i}")(x))
        else:                                                # any other ratio: exact-bin average pooling
            x = nn.relu(Conv2d(d, 3, padding=1, name="dec1")(x))
            x = ops.adaptive_avg_pool2d(x, (th, tw))
        x = Conv2d(tc, 3, padding=1, name="dec_out")(x)
        return nn.relu(x) if self.out_relu else x


# ------------------------------------------------------------------------------------------------- loss/step
def relative_error(target: jax.Array, recon: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Per-image ``‖f⁺ − f̂⁺‖² / ‖f⁺‖²``, ``(B,)``."""
    axes = tuple(range(1, target.ndim))
    num = jnp.sum(jnp.square(target - recon), axis=axes)
    return num / jnp.maximum(jnp.sum(jnp.square(target), axis=axes), eps)


def kernel_correlation(kernel: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Mean squared cosine similarity between the filters of a conv kernel ``(kh, kw, C_in, K)`` over pairs, in
    ``[0, 1]``: a decorrelation penalty on the interpretable filters' weights (``diversity_term="weights"``, [I])."""
    k = kernel.shape[-1]
    if k < 2:
        return jnp.zeros((), jnp.float32)
    w = kernel.reshape(-1, k).astype(jnp.float32)
    unit = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), eps)
    gram = jnp.square(unit.T @ unit)
    return (gram.sum() - jnp.trace(gram)) / (k * (k - 1))


FILTER_NORMS = ("filter", "none")
DIVERSITY_TERMS = ("maps", "templates", "mean_maps", "weights")


def make_loss(model: Explainer, *, template_beta: float = 4.0, prior_alpha: float | None = None,
              loss_input: str = "unmasked", surrogate: bool = False, surrogate_coef: float = 1e-6,
              filter_norm: str = "filter", filter_gain: float = icnn.DEFAULT_GAIN, filter_floor: float = 0.5,
              surrogate_batch_mean: bool = False, filter_diversity: float = 0.0, diversity_term: str = "maps"):
    """``loss_fn(params, model_state, f, fplus, lam, eta, epoch) -> (loss, (new_model_state, aux, metrics))``.

    ``filter_norm``: ``"filter"`` (default) puts the exact loss on scale-normalized maps (gain ``filter_gain``),
    ``"none"`` on the raw maps (the paper's formula; satisfiable by scale). ``filter_floor``: the normalizer is
    at least ``filter_floor`` × the mean of the input features ``f`` (not differentiated), so fading the maps out
    does not satisfy the loss either (0: no floor). ``filter_diversity`` > 0 adds ``filter_diversity ·`` the
    overlap of both interpretable layers' filters (an optional remedy for every filter finding the same part, [I]):
    ``diversity_term="maps"`` :func:`icnn.filter_overlap` (per-image cosine of the maps), ``"templates"``
    :func:`icnn.template_collision` of the scale-normalized maps, ``"mean_maps"`` :func:`icnn.mean_map_overlap`,
    ``"weights"`` :func:`kernel_correlation` of the two interpretable conv kernels.
    ``surrogate_batch_mean`` (faithful
    mode) divides the release's per-image surrogate gradient by the batch size: the release adds it to the
    gradient of a batch-summed loss that SGD then divides by the batch size, while the other terms here are
    batch means. The logged ``filter`` value is always the exact loss of the maps the gradient acts on.
    """
    if filter_norm not in FILTER_NORMS:
        raise ConfigError(f"filter_norm must be one of {FILTER_NORMS}, got {filter_norm!r}")
    if diversity_term not in DIVERSITY_TERMS:
        raise ConfigError(f"diversity_term must be one of {DIVERSITY_TERMS}, got {diversity_term!r}")

    def diversity_fn(x, floor):
        if diversity_term == "templates":
            return icnn.template_collision(icnn.scale_normalized(x, filter_gain, floor=floor), template_beta)
        if diversity_term == "mean_maps":
            return icnn.mean_map_overlap(x)
        return icnn.filter_overlap(x)

    def filter_term(x, mask, epoch, floor=None):
        if surrogate:
            pos = jnp.ones((x.shape[0],), jnp.float32)
            coef = jnp.asarray(surrogate_coef, jnp.float32) / epoch
            if surrogate_batch_mean:
                coef = coef / x.shape[0]
            return icnn.surrogate_filter_loss(x, mask, pos, coef, template_beta, prior_alpha)
        if filter_norm == "filter":
            return jnp.sum(icnn.scale_invariant_filter_loss(x, filter_gain, template_beta, None, prior_alpha,
                                                            floor=floor))
        return jnp.sum(icnn.filter_loss(x, template_beta, None, prior_alpha))

    def loss_fn(params, model_state, f, fplus, lam, eta, epoch):
        variables = {"params": params, **model_state}
        (recon, aux), new_state = model.apply(variables, f, train=True, mutable=["batch_stats"])
        rec = relative_error(fplus, recon).mean()
        maps = ("a1", "a2") if loss_input == "unmasked" else ("y1", "y2")
        floor = filter_floor * jax.lax.stop_gradient(jnp.mean(f)) if filter_floor > 0 else None
        filt = (filter_term(aux[maps[0]], aux["mask1"], epoch, floor)
                + filter_term(aux[maps[1]], aux["mask2"], epoch, floor))
        logp = jax.nn.log_sigmoid(aux["p_logit"]).mean()
        loss = rec + lam * filt - eta * logp
        metrics = {"recon": rec, "filter": filt, "log_p": logp, "p_mean": aux["p"].mean()}
        if filter_diversity > 0 and diversity_term == "weights":
            overlap = kernel_correlation(params["interp1"]["kernel"]) + kernel_correlation(params["interp2"]["kernel"])
            loss = loss + filter_diversity * overlap
            metrics["overlap"] = overlap
        elif filter_diversity > 0:
            overlap = diversity_fn(aux[maps[0]], floor) + diversity_fn(aux[maps[1]], floor)
            loss = loss + filter_diversity * overlap
            metrics["overlap"] = overlap
        return loss, ({**model_state, **new_state}, aux, metrics)

    return loss_fn


def make_update(loss_fn: Callable, tx: optax.GradientTransformation, *, learn_beta: bool = True,
                beta_rate: float = 0.05, beta_scale: float = 3.0, beta_clip=(1.5, 3.0), beta_bounds=(0.5, 10.0),
                location: str = "centroid", steps_per_epoch: int = 1, beta_rule: str = "step"):
    """``update(state, f, fplus, lam, eta) -> (state, metrics)`` for one explainer: a pure function (vmap it
    over stacked states and (lam, eta) for a sweep). The optimizer updates ``params``; β moves toward the
    release's target either by the direct step ``beta_rate·(target − β)`` (``beta_rule="step"``,
    :func:`icnn.update_beta`) or as the release's SGD takes it (``"released"``: divided by the batch size, with
    momentum 0.9, :func:`icnn.update_beta_released`); BatchNorm-like statistics come back from the loss."""
    if beta_rule not in ("step", "released"):
        raise ConfigError(f"beta_rule must be 'step' or 'released', got {beta_rule!r}")

    def update(state: TrainState, f, fplus, lam, eta):
        epoch = (1 + state.step // max(steps_per_epoch, 1)).astype(jnp.float32)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (model_state, aux, metrics)), grads = grad_fn(state.params, state.model_state, f, fplus, lam,
                                                              eta, epoch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if learn_beta:
            betas, velocity = dict(model_state["icnn"]), dict(model_state["icnn_momentum"])
            for i in (1, 2):
                tgt = icnn.beta_target(aux[f"a{i}"], aux[f"mask{i}"], location, beta_scale, beta_clip)
                if beta_rule == "released":
                    betas[f"beta{i}"], velocity[f"beta{i}"] = icnn.update_beta_released(
                        betas[f"beta{i}"], velocity[f"beta{i}"], tgt, f.shape[0], bounds=beta_bounds)
                else:
                    betas[f"beta{i}"] = icnn.update_beta(betas[f"beta{i}"], tgt, beta_rate, beta_bounds)
            model_state = {**model_state, "icnn": betas, "icnn_momentum": velocity}
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return state.replace(step=state.step + 1, params=params, model_state=model_state,
                             opt_state=opt_state), metrics

    return update


# -------------------------------------------------------------------------------------------- the performer
def performer_features(performer: nn.Module, arch: str, layers: tuple[str, ...]):
    """``feats(perf_vars, images_uint8) -> tuple of NHWC maps`` (eval mode, no gradient into the performer)."""
    from jinterp import backbones

    def feats(perf_vars, images):
        x = backbones.normalize(images, arch)
        _, fs = performer.apply(jax.lax.stop_gradient(perf_vars), x, train=False)
        return tuple(jax.lax.stop_gradient(fs[name]) for name in layers)

    return feats


def injection(performer: nn.Module, arch: str, target: str) -> tuple[str, Callable[[jax.Array], jax.Array]]:
    """How to feed a replacement of layer ``target`` into the performer: ``(module name, transform)``; the
    output of that top-level submodule is replaced by ``transform(recon)``.

    Supported: any top-level module output (``conv4``, ``bn4``, ``layer2.2`` …), a CIFAR-ResNet stage
    (``layer2`` = its last block), a ReLU after a BatchNorm (``relu4`` -> ``bn4``, ResNet ``relu`` -> ``bn1``;
    exact because reconstructions are non-negative, ``relu(r) = r``) and a convnet 2x2 max pool (``pool3`` ->
    ``bn3`` fed the 2x nearest upsampling of ``r``: ``maxpool(relu(up(r))) = r`` for ``r ≥ 0``).
    """
    ident = lambda r: r
    if arch == "convnet":
        if target.startswith("relu"):
            return "bn" + target[4:], ident
        if target.startswith("pool"):
            return "bn" + target[4:], lambda r: jnp.repeat(jnp.repeat(r, 2, axis=1), 2, axis=2)
        if target.startswith(("conv", "bn")) or target == "fc":
            return target, ident
    if arch.startswith("resnet") and arch[6:].isdigit() and int(arch[6:]) in (20, 32, 44, 56, 110):
        n = (int(arch[6:]) - 2) // 6
        if target == "relu":
            return "bn1", ident
        if target in ("layer1", "layer2", "layer3"):
            return f"{target}_{n - 1}", ident
        if target.startswith("layer") or target in ("conv1", "bn1", "linear"):
            return target.replace(".", "_"), ident
    raise LayerError(f"cannot feed a reconstruction of {arch} layer {target!r} back into the performer; supported "
                     "targets: convnet conv*/bn*/relu*/pool*, CIFAR ResNet relu/layer<s>/layer<s>.<b>")


def replaced_logits(performer: nn.Module, arch: str, target: str):
    """``logits(perf_vars, images_uint8, recon) -> logits`` with layer ``target`` replaced by ``recon``."""
    from jinterp import backbones

    name, transform = injection(performer, arch, target)

    def logits(perf_vars, images, recon):
        def interceptor(next_fun, args, kwargs, ctx):
            if ctx.method_name == "__call__" and ctx.module.path == (name,):
                out = next_fun(*args, **kwargs)
                new = transform(recon).astype(out.dtype)
                if new.shape != out.shape:
                    raise ShapeError(f"replacement for {target} has shape {new.shape} but {name} outputs "
                                     f"{out.shape}")
                return new
            return next_fun(*args, **kwargs)

        x = backbones.normalize(images, arch)
        with nn.intercept_methods(interceptor):
            out, _ = performer.apply(perf_vars, x, train=False)
        return out

    return logits


def init_explainer(model: Explainer, key: jax.Array, in_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Variables ``{"params", "batch_stats", "icnn"}`` for inputs of shape ``(H, W, C)`` (compiled once per
    module and shape)."""
    return dict(_compiled_init(model, tuple(int(d) for d in in_shape))(key))


@functools.lru_cache(maxsize=32)
def _compiled_init(model: Explainer, in_shape: tuple[int, int, int]):
    return jax.jit(lambda k: model.init(k, jnp.zeros((2, *in_shape), jnp.float32), train=True))
