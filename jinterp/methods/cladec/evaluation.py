"""ClaDec's evaluation (spec A.5): reconstruct, score against the originals and through classifiers.

* :func:`decode` — reconstructions of K stacked decoders from cached activations, one jit, fixed batch shape.
* :func:`classifier_accuracy` — accuracy (and CE) of the frozen classifier on M sets of reconstructions.
* :func:`retrain` — the retrained-classifier protocol (A.5 item 3, reconstructed from the third-party Keras code;
  the paper's own protocol is unverified): M fresh classifiers of the classifier's architecture, one per
  reconstruction source, trained at once (``vmap`` over stacked params, each on its own reconstructed training
  split, same batches), tested on their reconstructed test split and on the original test images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp import backbones
from jinterp.core.train import make_classifier_loss
from jinterp.data import NORMALIZATIONS
from jinterp.methods.cladec import training

PyTree = Any


def _padded_batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _pad(a: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    if a.shape[axis] == size:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return np.pad(a, widths)


def batched(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int, axis: int = 0,
            out_axis: int = 0) -> np.ndarray:
    """``concat_b fn(*[a[b] for a in arrays])`` over batches of ``axis`` (last batch padded, then trimmed)."""
    n = arrays[0].shape[axis]
    outs = []
    for s, e in _padded_batches(n, batch_size):
        parts = [_pad(np.asarray(np.take(a, np.arange(s, e), axis=axis)), batch_size, axis) for a in arrays]
        out = np.asarray(fn(*parts))
        outs.append(np.take(out, np.arange(e - s), axis=out_axis))
    return np.concatenate(outs, axis=out_axis)


def decode(decoder: nn.Module, stacked_params: PyTree, acts: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """``(K, N, H, W, C)`` float32 reconstructions of K stacked decoders from activations ``(N, ...)``."""
    fn = jax.jit(jax.vmap(lambda p, a: decoder.apply({"params": p}, a), in_axes=(0, None)))
    return batched(lambda a: fn(stacked_params, jnp.asarray(a, jnp.float32)), [acts], batch_size, out_axis=1)


def make_classify(model: nn.Module, arch: str) -> Callable[[PyTree, jax.Array], jax.Array]:
    """``(variables, x̂ in [0, 1]) -> logits`` of a frozen backbone in eval mode (its own normalisation)."""

    def classify(variables, xhat):
        logits, _ = model.apply(variables, backbones.normalize(xhat, arch), train=False)
        return logits

    return classify


def make_encode(model: nn.Module, arch: str, layer: str) -> Callable[[PyTree, jax.Array], jax.Array]:
    """``(variables, x in [0, 1]) -> feats[layer]``: the frozen classifier's activation (eval mode)."""

    def encode(variables, x):
        _, feats = model.apply(variables, backbones.normalize(x, arch), train=False)
        return feats[layer]

    return encode


def classifier_accuracy(classify: Callable, cls_vars: PyTree, images: np.ndarray, labels: np.ndarray,
                        batch_size: int = 512) -> dict[str, np.ndarray]:
    """Frozen-classifier ``accuracy`` and mean ``ce`` on ``(M, N, H, W, C)`` images (float [0, 1] or uint8), one
    value per set M."""
    labels = np.asarray(labels, np.int32)

    @jax.jit
    def fn(x, y, valid):
        x = training.to_unit(x)
        logits = jax.vmap(lambda xi: classify(cls_vars, xi))(x).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[None])
        ok = (jnp.argmax(logits, -1) == y[None]).astype(jnp.float32)
        return jnp.stack([jnp.sum(ok * valid, -1), jnp.sum(ce * valid, -1)], 0)

    n = labels.shape[0]
    total = None
    for s, e in _padded_batches(n, batch_size):
        x = _pad(np.asarray(images[:, s:e]), batch_size, axis=1)
        y = _pad(labels[s:e], batch_size)
        valid = _pad(np.ones((e - s,), np.float32), batch_size)
        out = fn(jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid))
        total = out if total is None else total + out
    total = np.asarray(total)
    return {"accuracy": total[0] / n, "ce": total[1] / n}


# ------------------------------------------------------------------------------------------- retraining
@dataclasses.dataclass(frozen=True)
class RetrainSpec:
    """How the fresh classifiers are trained (defaults: the official classifier recipe, 10 epochs)."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    lr_decay: bool = True
    eval_batch_size: int = 512
    seed: int = 0


def retrain(model: nn.Module, arch: str, train_sets: np.ndarray, train_labels: np.ndarray, test_sets: np.ndarray,
            test_original: np.ndarray, test_labels: np.ndarray, spec: RetrainSpec, workdir: str | Path, *,
            progress: bool = True) -> dict[str, Any]:
    """Trains M fresh ``model``s at once, model m on ``train_sets[m]`` ``(M, N, H, W, C)`` uint8, and tests
    each on ``test_sets[m]`` and on ``test_original``. Returns ``{"acc_reconstructed", "acc_original"}`` (M,)
    plus timing. Same batches for every model; per-model init and dropout keys."""
    m = train_sets.shape[0]
    n = train_sets.shape[1]
    image_shape = tuple(train_sets.shape[2:])
    keys = jax.random.split(jax.random.fold_in(jax.random.key(spec.seed), 7), m)
    x0 = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(jax.vmap(lambda k: model.init(k, x0, train=False)))(keys)
    params = variables.pop("params") if isinstance(variables, dict) else dict(variables).pop("params")
    model_state = {k: v for k, v in dict(variables).items() if k != "params"}
    mean, std = NORMALIZATIONS[backbones.NORMALIZATION[arch]]
    loss_fn = make_classifier_loss(model, mean=mean, std=std, augment="none")
    spe, total = training.steps_for(n, spec.batch_size, spec.epochs)
    tx = training.torch_sgd(training.step_schedule(spec.lr, spec.epochs, spe, spec.lr_decay), spec.momentum,
                            spec.weight_decay)
    state = training.new_state(params, tx, jax.random.fold_in(jax.random.key(spec.seed), 8), model_state)

    def step(state, idx, data):
        images = jnp.take(data["image"], idx, axis=1)          # (M, B, H, W, C)
        labels = jnp.take(data["label"], idx, axis=0)
        rngs = jax.random.split(jax.random.fold_in(state.rng, state.step), m)

        def one(p, s, x, r):
            return jax.value_and_grad(loss_fn, has_aux=True)(p, s, {"image": x, "label": labels}, r)

        (loss, (new_ms, aux)), grads = jax.vmap(one)(state.params, state.model_state, images, rngs)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": jnp.mean(loss), "grad_norm": jnp.max(jax.vmap(optax.tree.norm)(grads))}
        for k in range(m):
            metrics[f"accuracy/{k}"] = aux["accuracy"][k]
        return state.replace(step=state.step + 1, params=params, model_state=new_ms, opt_state=opt_state), metrics

    data = {"image": jnp.asarray(train_sets), "label": jnp.asarray(train_labels, jnp.int32)}
    fit = training.fit(state, jax.jit(step, donate_argnums=(0,)), (data,), n=n, batch_size=spec.batch_size,
                       steps=total, seed=spec.seed + 3, workdir=workdir, desc="retrain", log_every=max(spe, 1),
                       progress=progress)
    del data
    final = fit.state
    variables = {"params": final.params, **final.model_state}

    @jax.jit
    def correct(v, x, y, valid):
        def one(vi, xi):
            xi = backbones.normalize(xi, arch)
            logits, _ = model.apply(vi, xi, train=False)
            return jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32) * valid)

        return jax.vmap(one)(v, x)

    def accuracy(sets: np.ndarray, shared: bool) -> np.ndarray:
        nt = test_labels.shape[0]
        total = np.zeros((m,), np.float64)
        for s, e in _padded_batches(nt, spec.eval_batch_size):
            valid = _pad(np.ones((e - s,), np.float32), spec.eval_batch_size)
            y = _pad(np.asarray(test_labels[s:e], np.int32), spec.eval_batch_size)
            if shared:
                x = np.broadcast_to(_pad(sets[s:e], spec.eval_batch_size)[None], (m, spec.eval_batch_size,
                                                                                  *sets.shape[1:]))
            else:
                x = _pad(sets[:, s:e], spec.eval_batch_size, axis=1)
            total += np.asarray(correct(variables, jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid)))
        return total / nt

    return {"acc_reconstructed": accuracy(test_sets, False), "acc_original": accuracy(test_original, True),
            "train_time_s": fit.wall_time_s, "steps": total}

