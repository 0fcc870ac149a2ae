"""Unsupervised Interpretable Basis Extraction (UIBE).

Doumanoglou, Asteriadis, Zarpalas, *Unsupervised Interpretable Basis Extraction for Concept-Based Visual
Explanations*, IEEE TAI 2023 (arXiv 2303.10523); spec ``uibe_and_metrics.md`` §2.

Every spatial position ("pixel") of a layer's feature map is a vector ``x_p ∈ R^D``. UIBE learns ``I ≤ D``
orthonormal directions ``Q`` (an undercomplete rotation), one shared margin ``M`` and one shared bias ``b`` so that

    x̃_p = (x_p − μ) / s                       per-channel standardisation over the training pixels
    y_p = σ(Qᵀ x̃_p / M − b) ∈ [0, 1]^I         each column of Q with the threshold b·M is a concept detector

becomes sparse (one detector per pixel) and binary, without concept labels. Losses (logs base 2, means over a
pixel mini-batch; ``q_p = y_p / ‖y_p‖₁``):

    L^s  = E_p[H(q_p)]                         sparsity (one-hot-ness)
    L^ma = E_p[−Σ_i q_{p,i} log₂ y_{p,i}]       maximum activation (the winning detector goes to 1)
    L^mm = 1 / M                               maximum margin (keeps the sigmoid from saturating)
    L^ic = E_i[ReLU(ν − E_p[y_{p,i}^γ]) / ν]    inactive-classifier penalty (CBE 2024, not UIBE; off by default)

Reconstructed details (the UIBE paper body is not accessible; spec §2.2–2.6, marked [I]/[U] there): the
``Q / M`` parameterisation, per-channel z-scoring, the loss weights (2.6, 2.8, 0.6) and Adam at lr 1e-3 per 4096
pixels with linear scaling and ReduceLROnPlateau(0.5, patience 10, cooldown 10) come from the successor (EDDP) and
are config fields. **Orthonormality** is kept exactly by a QR retraction, ``Q = qr(A).Q · sign(diag(R))`` of a free
``A ∈ R^{D×I}``: unlike Cayley/exponential maps it needs no D×D matrix for an undercomplete basis, costs
O(D·I²) per step (small next to the pixel matmul) and cannot drift, because Q is recomputed from A each step.
``orthonormalization="polar"`` [jinterp addition] avoids LAPACK (matmuls only, for accelerators where QR is a slow
solver call): ``A`` itself is kept on the Stiefel manifold by a polar retraction after every update (Newton–Schulz,
:func:`polar_factor`), and the loss reads ``Q = A(3I − AᵀA)/2``, one Newton–Schulz step, whose value is ``A`` to
O(‖AᵀA − I‖²) and whose derivative at an orthonormal ``A`` is exactly the polar map's,
``dQ = (I − AAᵀ)dA + A·skew(AᵀdA)`` (a ``custom_vjp`` applies its adjoint, :func:`polar_on_manifold`). Same
manifold and objective as QR, different coordinates, so the trajectory differs while the optimum is the same
(``tests/methods/basis/test_uibe.py`` checks both on a planted problem).

Hot path: one epoch is a ``lax.scan`` over pixel mini-batches inside one jit (no Python loop over steps).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.core.config import check_field_types
from jinterp.errors import ConfigError, ShapeError

LN2 = math.log(2.0)
ORTHONORMALIZATIONS = ("qr", "polar")
# The polar retraction after each step stops at max|aᵀa − I| ≤ 1e-5 (2 Newton–Schulz iterations after a typical
# step at D = 512; 1e-6 took 4, near float32's floor there); the returned basis is polished to 1e-6.
RETRACTION_TOL = 1e-5


@dataclasses.dataclass(frozen=True)
class UIBEConfig:
    """UIBE hyper-parameters. ``num_directions = 0`` means ``round(0.98 · D)`` (spec §2.2)."""

    num_directions: int = 0
    lambda_sparsity: float = 2.6
    lambda_max_activation: float = 2.8
    lambda_margin: float = 0.6
    lambda_inactive: float = 0.0        # 5.0 = CBE-style; 0 = UIBE proper
    inactive_tau: float = 0.9
    inactive_gamma: float = 1.1
    lr: float = 1e-3                    # per reference_batch pixels; scaled linearly with batch_size
    reference_batch: int = 4096
    batch_size: int = 4096
    epochs: int = 800
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    plateau_cooldown: int = 10
    init: str = "haar"                  # "haar" (random orthonormal) or "pca" (top-I principal directions)
    orthonormalization: str = "qr"      # "qr" (LAPACK retraction of a free A) or "polar" (Newton–Schulz, matmuls)
    # "channel": per-channel z-score (spec's reading of "standardisation"); "global": centre per channel, divide
    # by one scalar std — keeps orthogonal directions orthogonal, which per-channel scaling does not.
    standardization: str = "channel"
    margin_init: float = 1.0            # M₀
    bias_init: float = 2.0              # b₀: few detectors fire at the start
    restarts: int = 1                   # inits trained at once (vmap); the lowest final loss wins [jinterp addition]
    seed: int = 0

    def __post_init__(self) -> None:
        # Built on its own through the Python API too: a wrongly typed field is a one-line ConfigError here.
        check_field_types(self)

    @classmethod
    def paper(cls) -> UIBEConfig:
        return cls()

    @classmethod
    def tiny(cls) -> UIBEConfig:
        return cls(batch_size=1024, epochs=40, plateau_patience=5, plateau_cooldown=2)

    def validate(self, dim: int | None = None) -> int:
        """Raises ConfigError on bad settings; with ``dim`` (the layer's channels) returns the number of
        directions."""
        if self.num_directions < 0:
            raise ConfigError(f"num_directions must be >= 0 (0 = 0.98·D), got {self.num_directions}")
        if dim is None:
            dim = max(self.num_directions, 1)
        n = self.num_directions or max(1, round(0.98 * dim))
        if n > dim:
            raise ConfigError(f"num_directions={n} exceeds the layer's {dim} channels; an orthonormal basis of "
                              f"R^{dim} has at most {dim} directions. Lower num_directions or pick a wider layer.")
        if self.standardization not in ("channel", "global"):
            raise ConfigError(f"standardization must be 'channel' or 'global', got {self.standardization!r}")
        if self.orthonormalization not in ORTHONORMALIZATIONS:
            raise ConfigError(f"orthonormalization must be one of {ORTHONORMALIZATIONS}, got "
                              f"{self.orthonormalization!r}")
        if self.init not in ("haar", "pca"):
            raise ConfigError(f"init must be 'haar' or 'pca', got {self.init!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.restarts < 1:
            raise ConfigError("batch_size, epochs and restarts must be positive")
        if self.lr <= 0 or self.margin_init <= 0:
            raise ConfigError("lr and margin_init must be positive")
        return n


class UIBEParams(NamedTuple):
    """Free parameters: ``a (D, I)`` (orthonormalised by QR), ``m`` (M = softplus(m)), ``b`` (shared bias)."""

    a: jax.Array
    m: jax.Array
    b: jax.Array


class Standardizer(NamedTuple):
    mean: jax.Array   # (D,)
    std: jax.Array    # (D,)


class UIBEResult(NamedTuple):
    """A learned basis: ``basis (D, I)`` orthonormal, ``margin`` M, ``bias`` b, the standardiser, loss history."""

    params: UIBEParams
    standardizer: Standardizer
    basis: np.ndarray
    margin: float
    bias: float
    history: np.ndarray   # (epochs, 4): total, L^s, L^ma, L^mm per epoch (means)


def orthonormalize(a: jax.Array, method: str = "qr") -> jax.Array:
    """Onto the Stiefel manifold: ``(D, I)`` with ``QᵀQ = I``. ``"qr"``: the QR factor, sign-fixed so it is
    unique; ``"polar"``: the polar factor ``A(AᵀA)^(-1/2)`` (the nearest orthonormal matrix), :func:`polar_factor`."""
    if method == "polar":
        return polar_factor(a)
    q, r = jnp.linalg.qr(a)
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
    return q * signs[None, :]


def _gram(x: jax.Array) -> jax.Array:
    return jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST)


def newton_schulz_step(x: jax.Array, gram: jax.Array | None = None) -> jax.Array:
    """One Newton–Schulz polar step ``X(3I − XᵀX)/2`` of ``(D, I)``: squares the distance of XᵀX from I (for
    singular values in (0, √3)); two matmuls."""
    g = _gram(x) if gram is None else gram
    return 1.5 * x - 0.5 * jnp.matmul(x, g, precision=jax.lax.Precision.HIGHEST)


@jax.custom_vjp
def polar_on_manifold(a: jax.Array) -> jax.Array:
    """``Q`` for an orthonormal ``(D, I)`` ``a`` (the polar parametrization's loss): one Newton–Schulz step, so Q is
    ``a`` to O(‖aᵀa − I‖²), with the polar map's exact vector-Jacobian product at an orthonormal point,
    ``ḡ ↦ ḡ − a·sym(aᵀḡ)`` (the adjoint of ``dQ = dA − A·sym(AᵀdA)``): two matmuls in the backward, where autodiff
    through the step takes four."""
    return newton_schulz_step(a)


def _polar_fwd(a):
    return newton_schulz_step(a), a


def _polar_bwd(a, g):
    ag = jnp.matmul(a.T, g, precision=jax.lax.Precision.HIGHEST)
    return (g - jnp.matmul(a, 0.5 * (ag + ag.T), precision=jax.lax.Precision.HIGHEST),)


polar_on_manifold.defvjp(_polar_fwd, _polar_bwd)


def polar_factor(a: jax.Array, tol: float = 1e-6, max_iters: int = 100) -> jax.Array:
    """Polar factor of a full-rank ``(D, I)`` (``I ≤ D``) by Newton–Schulz iteration, matmuls only.

    Pre-scaled by ``1/sqrt(‖AᵀA‖_∞)`` only where that bound on σ_max² exceeds 2.9 (convergence needs σ_max < √3),
    so a near-orthonormal A (the retraction after a small step) converges quadratically from where it is: two or
    three iterations. Stops when ``max|XᵀX − I| ≤ tol``. Forward only (a ``while_loop``; gradients go through
    :func:`newton_schulz_step`).
    """
    eye = jnp.eye(a.shape[1], dtype=a.dtype)
    g = _gram(a)
    bound = jnp.max(jnp.sum(jnp.abs(g), 1))
    scale = jnp.where(bound > 2.9, jax.lax.rsqrt(bound), 1.0)
    x, g = a * scale, g * scale**2

    def cond(c):
        _, g, i = c
        return (jnp.max(jnp.abs(g - eye)) > tol) & (i < max_iters)

    def body(c):
        x, g, i = c
        x = newton_schulz_step(x, g)
        return x, _gram(x), i + 1

    return jax.lax.while_loop(cond, body, (x, g, 0))[0]


def margin(params: UIBEParams) -> jax.Array:
    return jax.nn.softplus(params.m) + 1e-6


def detector_logits(params: UIBEParams, x: jax.Array, method: str = "qr") -> jax.Array:
    """``(..., D)`` standardised features -> ``(..., I)`` pre-sigmoid detector outputs ``Qᵀx / M − b``.

    ``method="polar"`` expects ``params.a`` orthonormal (kept so by :func:`retract`): Q is one Newton–Schulz step."""
    q = polar_on_manifold(params.a) if method == "polar" else orthonormalize(params.a)
    return jnp.matmul(x, q, precision=jax.lax.Precision.HIGHEST) / margin(params) - params.b


def losses(params: UIBEParams, x: jax.Array, cfg: UIBEConfig) -> tuple[jax.Array, jax.Array]:
    """Weighted objective and the vector (total, L^s, L^ma, L^mm) for a ``(B, D)`` standardised pixel batch."""
    logits = detector_logits(params, x, cfg.orthonormalization).astype(jnp.float32)
    log_y = jax.nn.log_sigmoid(logits)
    y = jnp.exp(log_y)
    q = y / (jnp.sum(y, -1, keepdims=True) + 1e-12)
    log_q = jnp.log(jnp.clip(q, 1e-12, 1.0))
    l_s = jnp.mean(-jnp.sum(q * log_q, -1)) / LN2
    l_ma = jnp.mean(-jnp.sum(q * log_y, -1)) / LN2
    l_mm = 1.0 / margin(params)
    total = cfg.lambda_sparsity * l_s + cfg.lambda_max_activation * l_ma + cfg.lambda_margin * l_mm
    if cfg.lambda_inactive:
        nu = cfg.inactive_tau / logits.shape[-1]
        usage = jnp.mean(y ** cfg.inactive_gamma, 0)
        total = total + cfg.lambda_inactive * jnp.mean(jax.nn.relu(nu - usage) / nu)
    return total, jnp.stack([total, l_s, l_ma, l_mm])


def standardizer(pixels: np.ndarray, mode: str = "channel") -> Standardizer:
    """Mean and std over ``(P, D)`` pixels, per channel or (``mode="global"``) one scalar std for all channels.

    Constant channels get std 1 (no division by zero).
    """
    x = np.asarray(pixels, np.float64)
    std = x.std(0) if mode == "channel" else np.full(x.shape[1], np.sqrt(x.var(0).sum() / x.shape[1]))
    return Standardizer(jnp.asarray(x.mean(0), jnp.float32), jnp.asarray(np.where(std > 1e-12, std, 1.0), jnp.float32))


def standardize(s: Standardizer, x: jax.Array) -> jax.Array:
    return (x - s.mean) / s.std


def init_params(key: jax.Array, x: np.ndarray, num_directions: int, cfg: UIBEConfig) -> UIBEParams:
    d = x.shape[-1]
    if cfg.init == "pca":
        cov = np.cov(np.asarray(x, np.float64), rowvar=False)
        _, vecs = np.linalg.eigh(cov)
        a = jnp.asarray(vecs[:, ::-1][:, :num_directions], jnp.float32)
    else:
        a = jax.random.normal(key, (d, num_directions), jnp.float32)
    m = jnp.asarray(math.log(math.expm1(cfg.margin_init)), jnp.float32)   # softplus⁻¹(M₀)
    return UIBEParams(orthonormalize(a, cfg.orthonormalization), m, jnp.asarray(cfg.bias_init, jnp.float32))


def retract(params: UIBEParams, cfg: UIBEConfig) -> UIBEParams:
    """After an update: ``"polar"`` puts ``a`` back on the Stiefel manifold (its polar factor, no gradient);
    ``"qr"`` leaves ``a`` free (Q is recomputed from it by QR)."""
    if cfg.orthonormalization != "polar":
        return params
    return params._replace(a=polar_factor(jax.lax.stop_gradient(params.a), tol=RETRACTION_TOL))


def train_step(params: UIBEParams, opt_state, x: jax.Array, cfg: UIBEConfig, tx: optax.GradientTransformation):
    """One step on a standardised ``(B, D)`` batch: loss, gradient, optimizer update, retraction.
    Returns ``(params, opt_state, (total, L^s, L^ma, L^mm))``."""
    (loss, parts), grads = jax.value_and_grad(losses, has_aux=True)(params, x, cfg)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    return retract(optax.apply_updates(params, updates), cfg), opt_state, parts


def make_optimizer(cfg: UIBEConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    lr = cfg.lr * cfg.batch_size / cfg.reference_batch
    return optax.chain(
        optax.adam(lr),
        # The plateau is judged on the epoch-mean loss: accumulate one epoch of step losses per decision.
        optax.contrib.reduce_on_plateau(factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                                        cooldown=cfg.plateau_cooldown, accumulation_size=steps_per_epoch),
    )


@functools.partial(jax.jit, static_argnames=("cfg", "tx", "steps"), donate_argnums=(0, 1))
def _epoch(params, opt_state, x, std: Standardizer, key, cfg: UIBEConfig, tx, steps: int):
    """One epoch for all restarts at once (params stacked on a leading axis): one shuffle shared by the restarts,
    a scan over ``steps`` mini-batches, each step vmapped over the restarts."""
    order = jax.random.permutation(key, x.shape[0])[: steps * cfg.batch_size].reshape(steps, cfg.batch_size)

    def step(carry, idx):
        p, s = carry
        p, s, parts = jax.vmap(functools.partial(train_step, cfg=cfg, tx=tx), in_axes=(0, 0, None))(
            p, s, standardize(std, x[idx]))
        return (p, s), parts

    (params, opt_state), parts = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state, parts.mean(0)


def fit(pixels: np.ndarray, cfg: UIBEConfig = UIBEConfig(), key: jax.Array | None = None) -> UIBEResult:
    """Learn a UIBE basis from ``(P, D)`` pixel features (flatten ``(N, h, w, D)`` maps first).

    Deterministic given ``cfg.seed`` (or ``key``): the epoch-``e`` shuffle key is ``fold_in(key, e)``.
    """
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 2:
        raise ShapeError(f"UIBE takes pixel features (P, D); got shape {pixels.shape}. "
                         "Reshape feature maps with feats.reshape(-1, feats.shape[-1]).")
    if not np.all(np.isfinite(pixels)):
        raise ShapeError("pixel features contain NaN or Inf; check the backbone's input and weights.")
    n_dirs = cfg.validate(pixels.shape[1])
    if pixels.shape[0] < cfg.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=pixels.shape[0])
    key = jax.random.key(cfg.seed) if key is None else key
    std = standardizer(pixels, cfg.standardization)
    xt = np.asarray(standardize(std, pixels))
    init_key = jax.random.fold_in(key, 2**31 - 1)
    inits = [init_params(jax.random.fold_in(init_key, r), xt, n_dirs, cfg) for r in range(cfg.restarts)]
    params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *inits)
    steps = pixels.shape[0] // cfg.batch_size
    tx = make_optimizer(cfg, steps)
    opt_state = jax.vmap(tx.init)(params)
    x = jnp.asarray(pixels)
    history = []
    for epoch in range(cfg.epochs):  # one jitted call per epoch; the steps inside are a scan
        params, opt_state, parts = _epoch(params, opt_state, x, std, jax.random.fold_in(key, epoch), cfg, tx, steps)
        history.append(parts)
    history = np.asarray(jnp.stack(history))          # (epochs, restarts, 4)
    best = int(np.argmin(history[-1, :, 0]))
    params = jax.tree_util.tree_map(lambda a: a[best], params)
    return UIBEResult(params, std, np.asarray(orthonormalize(params.a, cfg.orthonormalization)),
                      float(margin(params)), float(params.b), history[:, best])


def project(result: UIBEResult, feats: jax.Array) -> jax.Array:
    """Coordinates of features ``(..., D)`` in the learned basis: ``(..., I)`` = ``Qᵀ x̃``.

    A detector fires where its coordinate exceeds ``result.bias · result.margin`` (its own decision rule,
    ``y > 0.5``); use that as the dissection threshold (:func:`detector_thresholds`).
    """
    return jnp.matmul(standardize(result.standardizer, jnp.asarray(feats, jnp.float32)), jnp.asarray(result.basis),
                      precision=jax.lax.Precision.HIGHEST)


def detector_thresholds(result: UIBEResult) -> np.ndarray:
    """Per-direction thresholds on :func:`project` coordinates: the shared ``b · M``."""
    return np.full(result.basis.shape[1], result.bias * result.margin, np.float32)


def random_rotation(key: jax.Array, dim: int, num_directions: int | None = None) -> np.ndarray:
    """A Haar-random ``(D, I)`` orthonormal basis (the random-rotation baseline of Network Dissection)."""
    return np.asarray(orthonormalize(jax.random.normal(key, (dim, num_directions or dim), jnp.float32)))
