"""PyTorch-semantics optimizers and learning-rate schedules: the one implementation every jinterp trainer uses.

The papers' public code trains with ``torch.optim``; these optax transformations compute what it computes, in
the same order of floating-point operations (``torch/optim/{sgd,adam,adamw}.py``, single-tensor path):

* :func:`torch_sgd` — ``g += wd·p`` (coupled L2), ``buf = momentum·buf + g`` (the first step sets ``buf = g``,
  which the zero-initialised buffer reproduces), Nesterov ``g + momentum·buf``, ``p -= lr·step``.
* :func:`torch_adam` — ``g += wd·p``, ``m = b1·m + (1-b1)·g``, ``v = b2·v + (1-b2)·g²``,
  ``p -= (lr / (1-b1^t)) · m / (sqrt(v) / sqrt(1-b2^t) + eps)`` (not optax's ``m̂ / (sqrt(v̂) + eps)``, which
  rounds differently). One difference remains: the bias corrections ``1 - b^t`` are computed in float32 here
  (torch: float64 on the host), e.g. ``1 - 0.999`` is off by 1.3e-5 relative, so an early Adam step differs from
  torch's by up to ~1e-5 of the lr; kept so that every trainer's results stay bitwise what they were.
* :func:`torch_adamw` — the same Adam step after the decoupled decay ``p *= 1 - lr·wd``.

``weight_decay`` applies where ``decay_mask`` (a bool pytree, or a function of the params returning one) is
True; every parameter when it is None (PyTorch's default; :func:`kernels_only` is the usual mask otherwise).
``learning_rate`` is a float or an optax schedule of this optimizer's own step count (0 at the first update).
``update(..., lr=x)`` overrides it for one step with a scalar or a pytree like the params (PyTorch param groups
with their own lr), so host-side schedules such as a per-path MultiStepLR can drive it.

Schedules: :func:`multistep_lr` (``torch.optim.lr_scheduler.MultiStepLR`` after ``n`` scheduler steps) and
:func:`piecewise_lr` (the same boundaries in optimizer steps, as an optax schedule). Configuration-driven
optimizers (``OptimConfig``) are built by :func:`jinterp.core.train.make_optimizer` from these.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree] | None


class TorchSGDState(NamedTuple):
    """count: int32 updates applied so far; momentum_buffer: like the params (absent without momentum)."""

    count: jax.Array
    momentum_buffer: PyTree


class TorchAdamState(NamedTuple):
    """count: int32 updates applied so far (torch's ``step`` before the update); exp_avg, exp_avg_sq: like params."""

    count: jax.Array
    exp_avg: PyTree
    exp_avg_sq: PyTree


def kernels_only(params: PyTree) -> PyTree:
    """Decay mask: True for params with ndim > 1 (kernels), False for biases and BatchNorm scales/offsets."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


# --------------------------------------------------------------------------------------------------- helpers
def _lr_tree(learning_rate: optax.ScalarOrSchedule, count: jax.Array, params_like: PyTree, lr: Any) -> PyTree:
    """Per-leaf learning rates: ``lr`` (a scalar or a pytree like the params) if given, else the schedule at count."""
    if lr is None:
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
    leaves = jax.tree.leaves(lr)
    if len(leaves) == 1 and not isinstance(lr, Mapping | Sequence):
        return jax.tree.map(lambda _: lr, params_like)
    if jax.tree.structure(lr) != jax.tree.structure(params_like):
        raise ValueError("lr must be a scalar or a pytree with the params' structure (one lr per parameter)")
    return lr


def _mask_tree(decay_mask: Mask, params: PyTree) -> PyTree:
    if decay_mask is None:
        return jax.tree.map(lambda _: True, params)
    return decay_mask(params) if callable(decay_mask) else decay_mask


def _coupled_decay(grads: PyTree, params: PyTree, weight_decay: float, decay_mask: Mask) -> PyTree:
    """``g + wd·p`` where the mask is True (``torch.optim``'s ``weight_decay`` for SGD and Adam)."""
    if not weight_decay:
        return grads
    if params is None:
        raise ValueError("weight_decay needs the params: call update(grads, state, params)")
    mask = _mask_tree(decay_mask, params)
    return jax.tree.map(lambda g, p, m: g + weight_decay * p if m else g, grads, params, mask)


# ------------------------------------------------------------------------------------------------------- SGD
def torch_sgd(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.0, weight_decay: float = 0.0, *,
              nesterov: bool = False, decay_mask: Mask = None) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.SGD(lr, momentum, weight_decay, nesterov=...)`` (no dampening) as an optax transformation."""

    def init(params):
        buf = jax.tree.map(jnp.zeros_like, params) if momentum else None
        return TorchSGDState(jnp.zeros((), jnp.int32), buf)

    def update(grads, state, params=None, *, lr=None, **_):
        lrs = _lr_tree(learning_rate, state.count, grads, lr)
        grads = _coupled_decay(grads, params, weight_decay, decay_mask)
        buf = state.momentum_buffer
        if momentum:
            buf = jax.tree.map(lambda g, b: g + momentum * b, grads, buf)
            step = jax.tree.map(lambda g, b: g + momentum * b, grads, buf) if nesterov else buf
        else:
            step = grads
        updates = jax.tree.map(lambda s, r: -(jnp.asarray(r, s.dtype) * s), step, lrs)
        return updates, TorchSGDState(state.count + 1, buf)

    return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------------------------------------ Adam
def _torch_adam(learning_rate, b1, b2, eps, weight_decay, decay_mask, decoupled):
    def init(params):
        return TorchAdamState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params),
                              jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None, *, lr=None, **_):
        lrs = _lr_tree(learning_rate, state.count, grads, lr)
        if not decoupled:
            grads = _coupled_decay(grads, params, weight_decay, decay_mask)
        t = state.count + 1
        m = jax.tree.map(lambda m_, g: b1 * m_ + (1 - b1) * g, state.exp_avg, grads)
        v = jax.tree.map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, state.exp_avg_sq, grads)
        tf = t.astype(jnp.float32)
        bc1, bc2 = 1 - b1 ** tf, 1 - b2 ** tf

        def step(m_, v_, r):
            r = jnp.asarray(r, m_.dtype)
            return -(r / bc1 * m_ / (jnp.sqrt(v_) / jnp.sqrt(bc2) + eps))

        updates = jax.tree.map(step, m, v, lrs)
        if decoupled and weight_decay:
            if params is None:
                raise ValueError("weight_decay needs the params: call update(grads, state, params)")
            mask = _mask_tree(decay_mask, params)
            updates = jax.tree.map(lambda u, p, r, k: u - jnp.asarray(r, p.dtype) * weight_decay * p if k else u,
                                   updates, params, lrs, mask)
        return updates, TorchAdamState(t, m, v)

    return optax.GradientTransformationExtraArgs(init, update)


def torch_adam(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8, *, decay_mask: Mask = None) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay)``: L2 added to the gradient (not AdamW)."""
    return _torch_adam(learning_rate, b1, b2, eps, weight_decay, decay_mask, decoupled=False)


def torch_adamw(learning_rate: optax.ScalarOrSchedule, weight_decay: float = 0.01, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8, *,
                decay_mask: Mask = None) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.AdamW``: ``p *= 1 - lr·wd`` (decoupled), then the Adam step. As an additive update
    ``-lr·wd·p - step`` (equal to torch's in exact arithmetic; the rounding of the two products differs)."""
    return _torch_adam(learning_rate, b1, b2, eps, weight_decay, decay_mask, decoupled=True)


# ------------------------------------------------------------------------------------------------- schedules
def multistep_lr(lr: float, milestones: Sequence[int], gamma: float, steps_done: int) -> float:
    """``MultiStepLR`` after ``steps_done`` scheduler steps: ``lr · gamma ** #{milestones <= steps_done}``
    (host float; torch's ``bisect_right`` over the sorted milestones)."""
    return lr * gamma ** bisect.bisect_right(sorted(milestones), steps_done)


def piecewise_lr(lr: float, boundaries: Sequence[int], factor: float) -> optax.Schedule:
    """``lr`` multiplied by ``factor`` once at every boundary (optimizer steps): MultiStepLR in steps."""
    bounds = {int(b): factor for b in boundaries}
    return optax.piecewise_constant_schedule(lr, bounds) if bounds else optax.constant_schedule(lr)


__all__ = ["TorchAdamState", "TorchSGDState", "kernels_only", "multistep_lr", "piecewise_lr", "torch_adam",
           "torch_adamw", "torch_sgd"]
