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

``trainer="augmented_lagrangian"`` (spec §2.4, "alt. formulation"; reported more stable by the successor):
minimise λ_s·L^s subject to L^ma ≤ 0.8, L^mm ≤ 8 (M ≥ 1/8) and, when ``lambda_inactive > 0``, L^ic ≤ 0.1. The update
scheme is not published; jinterp uses the standard one for inequality constraints [I] (:func:`al_losses`): the
Powell–Hestenes–Rockafellar penalty ρ/2·max(0, g_j + μ_j/ρ)² with fixed ρ, and μ_j ← max(0, μ_j + ρ·ḡ_j) on the mean
constraint value ḡ of the last ``al_update_every`` steps (0 = once an epoch, the outer AL iteration). The multipliers
live in the train state carried by the jitted epoch scan. Its own lr, ``al_lr`` (see the field).

Hot path: one epoch is a ``lax.scan`` over pixel mini-batches inside one jit (no Python loop over steps). Inside a
step, L^s and L^ma come from :func:`activation_losses` (one pass over the ``(B, I)`` logits for the value, one for a
hand-written gradient) and the projection ``x̃Q/M − b`` from :func:`_affine_projection` (M's gradient from the
``(D, I)`` product): the same math as the formulas above, to float32 rounding, with far fewer passes over the batch
than autodiff of the textbook form left XLA:CPU (experiments/README.md, "UIBE without LAPACK QR").
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
TRAINERS = ("weighted", "augmented_lagrangian")
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
    # "weighted": minimise the λ-weighted sum (spec §2.4 table); "augmented_lagrangian": minimise λ_s·L^s subject to
    # L^ma ≤ al_max_activation_bound, L^mm ≤ al_margin_bound (M ≥ 1/bound) and, when lambda_inactive > 0,
    # L^ic ≤ al_inactive_bound (spec §2.4 "alt. formulation"), see :func:`al_losses`.
    trainer: str = "weighted"
    al_max_activation_bound: float = 0.8
    al_margin_bound: float = 8.0
    al_inactive_bound: float = 0.1
    al_rho: float = 10.0                # penalty parameter ρ (fixed) [I]
    # Adam lr of the augmented-Lagrangian trainer, per reference_batch pixels (scaled like lr) [I]. The spec's 5e-5
    # is for 20000 epochs; at our 10–100 epochs 1.0 is what reaches the constraints (experiments/README.md,
    # "Interpretable basis": on synthparts 0.01 is still infeasible after 30 epochs, μ_ma = 256; planted: cos ≥ 0.986
    # over 4 seeds, where 0.01–0.3 end at 0.55–0.97).
    al_lr: float = 1.0
    al_update_every: int = 0            # steps per multiplier update, on the mean of g over them; 0 = once an epoch

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
        if self.trainer not in TRAINERS:
            raise ConfigError(f"trainer must be one of {TRAINERS}, got {self.trainer!r}")
        if self.al_rho <= 0 or self.al_lr <= 0:
            raise ConfigError(f"al_rho (the augmented-Lagrangian penalty) and al_lr must be positive, got "
                              f"{self.al_rho}, {self.al_lr}")
        if self.al_update_every < 0:
            raise ConfigError(f"al_update_every must be >= 0 steps (0 = once an epoch), got {self.al_update_every}")
        if self.al_max_activation_bound <= 0 or self.al_margin_bound <= 0 or self.al_inactive_bound <= 0:
            raise ConfigError("al_max_activation_bound, al_margin_bound and al_inactive_bound must be positive "
                              f"(got {self.al_max_activation_bound}, {self.al_margin_bound}, "
                              f"{self.al_inactive_bound}): the constraints L ≤ bound need a reachable bound")
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
    history: np.ndarray   # (epochs, 4): total (weighted sum, or L_A), L^s, L^ma, L^mm per epoch (means)
    multipliers: np.ndarray | None = None   # (3,) final μ for (L^ma, L^mm, L^ic); trainer="augmented_lagrangian"


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
    z = _affine_projection(x.reshape(-1, x.shape[-1]), q, margin(params), params.b)
    return z.reshape(*x.shape[:-1], q.shape[1])


@jax.custom_vjp
def _affine_projection(x: jax.Array, q: jax.Array, m: jax.Array, b: jax.Array) -> jax.Array:
    """``(B, D) x``, ``(D, I) q``, scalars ``m``, ``b`` -> ``(B, I)`` ``x q / m − b``.

    Its VJP does the one ``(B, D)ᵀ(B, I)`` product autodiff does, but takes the margin's gradient from the ``(D, I)``
    result, ``∂/∂m = −⟨q, xᵀḡ⟩ / m²`` (= −Σ ḡ ⊙ xq / m², without a pass over the ``(B, I)`` batch), and scales by
    1/m after the product, on ``(D, I)`` instead of ``(B, I)``."""
    return jnp.matmul(x, q, precision=jax.lax.Precision.HIGHEST) / m - b


def _affine_projection_fwd(x, q, m, b):
    return _affine_projection(x, q, m, b), (x, q, m)


def _affine_projection_bwd(res, g):
    x, q, m = res
    xt_g = jnp.matmul(x.T, g, precision=jax.lax.Precision.HIGHEST)          # (D, I)
    g_x = jnp.matmul(g, q.T, precision=jax.lax.Precision.HIGHEST) / m       # unused by training (x is data): DCE'd
    return g_x, xt_g / m, -jnp.sum(xt_g * q) / (m * m), -jnp.sum(g)


_affine_projection.defvjp(_affine_projection_fwd, _affine_projection_bwd)


# L^s and L^ma of a (B, I) logit batch z, written so one pass over z gives both and one pass gives the gradient
# (autodiff of the textbook form left XLA:CPU ~15 materialised (B, I) intermediates in the backward: 70–110 ms of a
# ~160 ms step at D = 512; this form: ~10 ms, experiments/README.md "UIBE without LAPACK QR"). Per pixel, with
# y = σ(z), S = Σ_i y_i + 1e-12, q = y / S:
#   −Σ q log q = (Σy / S)·log S − Σ y log y / S          −Σ q log y = −Σ y log y / S
# (log q = log y − log S), so the forward needs only the row sums Σy and Σ y log y. For cotangents c_s, c_ma of
# the two row terms, h = −(c_s (log q + 1) + c_ma log y) = ∂/∂q and ⟨h, q⟩ = c_s (L^s_row − Σq) + c_ma L^ma_row,
#   ∂/∂z = (1 − y) ⊙ q ⊙ (h − ⟨h, q⟩ − c_ma)
# (the quotient rule through q, then dy/dz = y(1 − y) and d log y/dz = 1 − y): elementwise in z given the saved
# row scalars. The reference form clips q at 1e-12 inside the log; here log q = log y − log S needs no clip (it is
# finite wherever log σ is), and the two differ only in pixels' terms with q < 1e-12 (by < 3e-11 each).


def _log_sigmoid_parts(z: jax.Array):
    """``(log σ(z), σ(z), σ(−z))`` from one ``exp`` and one ``log``, stable for either sign of z.

    ``log σ(z) = min(z, 0) − log(1 + e^{−|z|})``, the log taken of the ``r = 1/(1 + e^{−|z|})`` the sigmoids need
    anyway: ``log`` where ``log1p`` would be exact for tiny ``e^{−|z|}``, because XLA:CPU's ``log1p`` costs ~3x a
    ``log`` (5 ms vs 1.8 ms on the (4096, 500) batch). The error is < 1.2e-7 absolute in log σ (for z > 16 it gives
    0 for −e^{−z}), below float32's resolution of the losses it feeds."""
    e = jnp.exp(-jnp.abs(z))
    r = 1.0 / (1.0 + e)
    log_y = jnp.minimum(z, 0.0) + jnp.log(r)
    pos = z >= 0
    return log_y, jnp.where(pos, r, e * r), jnp.where(pos, e * r, r)


def _activation_row_terms(z: jax.Array):
    """``(B, I)`` logits -> per-pixel ``(−Σ q log q, −Σ q log y, S)``, each ``(B,)``, in nats."""
    log_y, y, _ = _log_sigmoid_parts(z)
    sum_y = jnp.sum(y, -1)
    y_log_y = jnp.sum(y * log_y, -1)
    s = sum_y + 1e-12
    return (sum_y / s) * jnp.log(s) - y_log_y / s, -y_log_y / s, s


@jax.custom_vjp
def activation_losses(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(B, I)`` detector logits -> ``(L^s, L^ma)``: the batch means of −Σ_i q_i log₂ q_i and −Σ_i q_i log₂ y_i with
    ``y = σ(z)``, ``q = y / (Σ_i y_i + 1e-12)``. Value and gradient in one pass each (the formulas above this
    function); equal to the textbook form to float32 rounding (``tests/methods/basis/test_uibe.py``)."""
    l_s, l_ma, _ = _activation_row_terms(z)
    return jnp.mean(l_s) / LN2, jnp.mean(l_ma) / LN2


def _activation_losses_fwd(z):
    l_s, l_ma, s = _activation_row_terms(z)
    return (jnp.mean(l_s) / LN2, jnp.mean(l_ma) / LN2), (z, l_s, l_ma, s)


def _activation_losses_bwd(res, cotangents):
    z, l_s, l_ma, s = res
    scale = 1.0 / (z.shape[0] * LN2)                      # the batch mean, and nats -> bits
    c_s, c_ma = cotangents[0] * scale, cotangents[1] * scale
    log_y, y, one_minus_y = _log_sigmoid_parts(z)
    h_dot_q = c_s * (l_s - (s - 1e-12) / s) + c_ma * l_ma   # ⟨h, q⟩ per pixel, (B,)
    log_s = jnp.log(s)[:, None]
    h = -(c_s * (log_y - log_s + 1.0) + c_ma * log_y)
    return (one_minus_y * (y / s[:, None]) * (h - h_dot_q[:, None] - c_ma),)


activation_losses.defvjp(_activation_losses_fwd, _activation_losses_bwd)


def loss_terms(params: UIBEParams, x: jax.Array, cfg: UIBEConfig) -> jax.Array:
    """``(4,)`` = (L^s, L^ma, L^mm, L^ic) for a ``(B, D)`` standardised pixel batch (L^ic is E_p over the batch).

    With ``lambda_inactive == 0`` L^ic is in neither objective and is returned without a gradient: autodiff would
    otherwise compute its zero-weighted backward (a power and a reduction over the whole batch, ~10 % of the D = 512
    step; XLA cannot drop 0·x)."""
    logits = detector_logits(params, x, cfg.orthonormalization).astype(jnp.float32)
    l_s, l_ma = activation_losses(logits)
    l_mm = 1.0 / margin(params)
    nu = cfg.inactive_tau / logits.shape[-1]
    l_ic = jnp.mean(jax.nn.relu(nu - jnp.mean(jax.nn.sigmoid(logits) ** cfg.inactive_gamma, 0)) / nu)
    if not cfg.lambda_inactive:
        l_ic = jax.lax.stop_gradient(l_ic)
    return jnp.stack([l_s, l_ma, l_mm, l_ic])


def losses(params: UIBEParams, x: jax.Array, cfg: UIBEConfig) -> tuple[jax.Array, jax.Array]:
    """Weighted objective and the vector (total, L^s, L^ma, L^mm) for a ``(B, D)`` standardised pixel batch."""
    l_s, l_ma, l_mm, l_ic = loss_terms(params, x, cfg)
    total = cfg.lambda_sparsity * l_s + cfg.lambda_max_activation * l_ma + cfg.lambda_margin * l_mm
    if cfg.lambda_inactive:
        total = total + cfg.lambda_inactive * l_ic
    return total, jnp.stack([total, l_s, l_ma, l_mm])


# ---------------------------------------------------------------------------------------------------------------
# Augmented-Lagrangian trainer (spec §2.4, "alt. formulation"): minimise λ_s·L^s subject to g_j ≤ 0 with
#   g = (L^ma − 0.8, L^mm − 8, L^ic − 0.1)            (the L^ic constraint only when lambda_inactive > 0)
# The successor reports this formulation more stable than the weighted sum; its exact update scheme is not public,
# so the standard one for inequality constraints is used [I] (Powell–Hestenes–Rockafellar; Nocedal & Wright §17.4):
#   L_A = λ_s·L^s + Σ_j ρ/2·[max(0, g_j + μ_j/ρ)² − (μ_j/ρ)²]      μ_j ≥ 0, ρ fixed
#   μ_j ← max(0, μ_j + ρ·ḡ_j)                                          every al_update_every steps
# where ḡ is the mean of the mini-batch constraint values since the last update (0 = once an epoch, the epoch mean:
# the outer AL iteration after an approximate inner minimisation; per-step updates on one batch's g are noisier).
# The multipliers and the running sum of g are part of the train state carried by the jitted epoch scan.


class ALState(NamedTuple):
    """Augmented-Lagrangian state: ``multipliers (3,)`` μ for (L^ma, L^mm, L^ic), ``g_sum (3,)`` the constraint
    values summed since the last update, ``count`` steps summed."""

    multipliers: jax.Array
    g_sum: jax.Array
    count: jax.Array


def al_init() -> ALState:
    return ALState(jnp.zeros(3, jnp.float32), jnp.zeros(3, jnp.float32), jnp.zeros((), jnp.int32))


def constraint_values(terms: jax.Array, cfg: UIBEConfig) -> jax.Array:
    """``(3,)`` g = (L^ma − bound, L^mm − bound, L^ic − bound) from :func:`loss_terms`; satisfied where g ≤ 0.
    Without L^ic (``lambda_inactive == 0``) its entry is 0: never violated, its multiplier stays 0."""
    bounds = jnp.asarray([cfg.al_max_activation_bound, cfg.al_margin_bound, cfg.al_inactive_bound], jnp.float32)
    g = terms[1:] - bounds
    return g.at[2].set(jnp.where(cfg.lambda_inactive > 0, g[2], 0.0))


def al_losses(params: UIBEParams, x: jax.Array, multipliers: jax.Array, cfg: UIBEConfig):
    """Augmented Lagrangian for a ``(B, D)`` batch and multipliers ``(3,)``: ``(L_A, ((L_A, L^s, L^ma, L^mm), g))``."""
    terms = loss_terms(params, x, cfg)
    g = constraint_values(terms, cfg)
    rho = cfg.al_rho
    penalty = 0.5 * rho * jnp.sum(jnp.maximum(0.0, g + multipliers / rho) ** 2 - (multipliers / rho) ** 2)
    total = cfg.lambda_sparsity * terms[0] + penalty
    return total, (jnp.stack([total, terms[0], terms[1], terms[2]]), g)


def update_multipliers(state: ALState, g: jax.Array, cfg: UIBEConfig, steps_per_update: int) -> ALState:
    """Adds one step's constraint values; after ``steps_per_update`` of them, μ ← max(0, μ + ρ·mean g) and the sum
    restarts. Jit-friendly (no Python branch on values)."""
    g_sum, count = state.g_sum + g, state.count + 1
    due = count >= steps_per_update
    mult = jnp.where(due, jnp.maximum(0.0, state.multipliers + cfg.al_rho * g_sum / count), state.multipliers)
    return ALState(mult, jnp.where(due, 0.0, g_sum), jnp.where(due, 0, count))


def al_train_step(params: UIBEParams, opt_state, al_state: ALState, x: jax.Array, cfg: UIBEConfig,
                  tx: optax.GradientTransformation, steps_per_update: int):
    """One augmented-Lagrangian step: gradient of L_A at the current μ, optimizer update, retraction, then the
    multiplier bookkeeping. Returns ``(params, opt_state, al_state, (L_A, L^s, L^ma, L^mm))``."""
    (loss, (parts, g)), grads = jax.value_and_grad(al_losses, has_aux=True)(params, x, al_state.multipliers, cfg)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    params = retract(optax.apply_updates(params, updates), cfg)
    return params, opt_state, update_multipliers(al_state, g, cfg, steps_per_update), parts


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
    lr = (cfg.al_lr if cfg.trainer == "augmented_lagrangian" else cfg.lr) * cfg.batch_size / cfg.reference_batch
    return optax.chain(
        optax.adam(lr),
        # The plateau is judged on the epoch-mean loss: accumulate one epoch of step losses per decision.
        optax.contrib.reduce_on_plateau(factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                                        cooldown=cfg.plateau_cooldown, accumulation_size=steps_per_epoch),
    )


@functools.partial(jax.jit, static_argnames=("cfg", "tx", "steps"), donate_argnums=(0, 1, 2))
def _epoch(params, opt_state, al_state, x, std: Standardizer, key, cfg: UIBEConfig, tx, steps: int):
    """One epoch for all restarts at once (params, optimizer and AL state stacked on a leading axis): one shuffle
    shared by the restarts, a scan over ``steps`` mini-batches, each step vmapped over the restarts. ``al_state`` is
    carried unchanged by the weighted trainer."""
    order = jax.random.permutation(key, x.shape[0])[: steps * cfg.batch_size].reshape(steps, cfg.batch_size)
    if cfg.trainer == "augmented_lagrangian":
        step_fn = functools.partial(al_train_step, cfg=cfg, tx=tx, steps_per_update=cfg.al_update_every or steps)
    else:
        def step_fn(p, s, a, xb):
            p, s, parts = train_step(p, s, xb, cfg, tx)
            return p, s, a, parts

    def step(carry, idx):
        p, s, a = carry
        p, s, a, parts = jax.vmap(step_fn, in_axes=(0, 0, 0, None))(p, s, a, standardize(std, x[idx]))
        return (p, s, a), parts

    (params, opt_state, al_state), parts = jax.lax.scan(step, (params, opt_state, al_state), order)
    return params, opt_state, al_state, parts.mean(0)


def fit(pixels: np.ndarray, cfg: UIBEConfig = UIBEConfig(), key: jax.Array | None = None) -> UIBEResult:
    """Learn a UIBE basis from ``(P, D)`` pixel features (flatten ``(N, h, w, D)`` maps first).

    Deterministic given ``cfg.seed`` (or ``key``): the epoch-``e`` shuffle key is ``fold_in(key, e)``. Not checkpointed
    mid-fit (``jinterp basis`` reruns the whole fit when its ``bases`` stage is recomputed), so the train state
    (params, optimizer, AL multipliers) only has to be carried, not saved. With restarts, the lowest final epoch-mean
    objective wins (the weighted sum, or L_A for the AL trainer).
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
    al_state = jax.vmap(lambda _: al_init())(jnp.arange(cfg.restarts))
    x = jnp.asarray(pixels)
    history = []
    for epoch in range(cfg.epochs):  # one jitted call per epoch; the steps inside are a scan
        params, opt_state, al_state, parts = _epoch(params, opt_state, al_state, x, std,
                                                    jax.random.fold_in(key, epoch), cfg, tx, steps)
        history.append(parts)
    history = np.asarray(jnp.stack(history))          # (epochs, restarts, 4)
    best = int(np.argmin(history[-1, :, 0]))
    params = jax.tree_util.tree_map(lambda a: a[best], params)
    multipliers = np.asarray(al_state.multipliers[best]) if cfg.trainer == "augmented_lagrangian" else None
    return UIBEResult(params, std, np.asarray(orthonormalize(params.a, cfg.orthonormalization)),
                      float(margin(params)), float(params.b), history[:, best], multipliers)


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
