"""Adversarial examples and a gate-based detector: a RECONSTRUCTED protocol, not the paper's (spec B.5.4 [INF]).

The CSG paper claims that class-specific filters help detect adversarial samples, but neither its protocol nor
code is public. This module implements the hypothesis the spec writes down, labelled as such everywhere:

* Attacks (untargeted, on the ungated network, in [0, 1] pixel space, L-inf ball of radius ``eps``):
  FGSM ``x + eps * sign(grad CE)``; PGD with ``steps`` of ``alpha * sign(grad)``, projection onto the ball and
  [0, 1], optional uniform random start. Batched (per-example gradients of a summed loss; eval mode keeps
  examples independent), jitted, PGD as a ``fori_loop``.
* Detector: an input's pooled activations ``a`` (K,) are compared with the *predicted* class's column of a
  filter-class profile ``P`` (K, C): ``score = 1 - sum_k a_k P[k, yhat] / sum_k a_k``, the share of activation
  mass on filters that do not belong to the predicted class (higher = more suspicious). For a CSG model ``P`` is
  the learned gate G; for a standard CNN (the baseline) and as a control for CSG, ``P`` is the empirical
  profile: class-mean pooled activations on training images, normalized per filter by its max over classes
  (the gate's own projection).
* Metric: ROC-AUC of the score, clean vs successfully attacked versions of correctly classified test images.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LogitsFn = Callable[[jax.Array], jax.Array]


def _loss_grad(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss(x):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), y).sum()

    return jax.grad(loss)(x)


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, eps: float) -> jax.Array:
    """One signed-gradient step of size ``eps`` (x in [0, 1]); clipped to [0, 1]."""
    return jnp.clip(x + eps * jnp.sign(_loss_grad(logits_fn, x, y)), 0.0, 1.0)


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, eps: float, alpha: float, steps: int,
        key: jax.Array | None = None) -> jax.Array:
    """L-inf PGD (Madry et al.): ``steps`` signed steps of ``alpha``, each followed by projection onto the
    ``eps``-ball around ``x`` and [0, 1]; uniform random start when ``key`` is given."""
    x0 = x
    if key is not None:
        x = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), 0.0, 1.0)

    def body(_, xa):
        xa = xa + alpha * jnp.sign(_loss_grad(logits_fn, xa, y))
        return jnp.clip(jnp.clip(xa, x0 - eps, x0 + eps), 0.0, 1.0)

    return jax.lax.fori_loop(0, steps, body, x)


def detector_score(pooled: jax.Array, pred: jax.Array, profile: jax.Array) -> jax.Array:
    """``1 - sum_k a_k P[k, pred] / sum_k a_k`` for pooled activations (N, K), predictions (N,), P (K, C)."""
    col = jnp.take(profile.T, pred, axis=0)                           # (N, K)
    a = jnp.maximum(pooled, 0.0)
    return 1.0 - jnp.sum(a * col, axis=1) / jnp.maximum(jnp.sum(a, axis=1), 1e-12)


def empirical_profile(pooled: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """(K, C) class-mean pooled activations, each filter divided by its max over classes (values in [0, 1])."""
    onehot = jax.nn.one_hot(labels, num_classes)
    mean = (onehot.T @ jnp.maximum(pooled, 0.0)) / jnp.maximum(onehot.sum(0)[:, None], 1)   # (C, K)
    prof = mean.T
    return prof / jnp.maximum(prof.max(axis=1, keepdims=True), 1e-12)


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal): the Mann-Whitney ROC-AUC (positives = adversarial)."""
    pos, neg = jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)
