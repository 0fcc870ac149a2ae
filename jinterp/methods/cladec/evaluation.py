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
import functools
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
    fn = _decode_fn(decoder)
    return batched(lambda a: fn(stacked_params, jnp.asarray(a, jnp.float32)), [acts], batch_size, out_axis=1)


@functools.lru_cache(maxsize=16)
def _decode_fn(decoder: nn.Module) -> Callable:
    return jax.jit(jax.vmap(lambda p, a: decoder.apply({"params": p}, a), in_axes=(0, None)))


@functools.lru_cache(maxsize=16)
def make_classify(model: nn.Module, arch: str) -> Callable[[PyTree, jax.Array], jax.Array]:
    """``(variables, x̂ in [0, 1]) -> logits`` of a frozen backbone in eval mode (its own normalisation).
    Cached, so jitted consumers keyed on it compile once per (model, arch)."""

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


@functools.lru_cache(maxsize=16)
def _accuracy_fn(classify: Callable) -> Callable:
    def fn(cls_vars, x, y, valid):
        x = training.to_unit(x)
        logits = jax.vmap(lambda xi: classify(cls_vars, xi))(x).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[None])
        ok = (jnp.argmax(logits, -1) == y[None]).astype(jnp.float32)
        return jnp.stack([jnp.sum(ok * valid, -1), jnp.sum(ce * valid, -1)], 0)

    return jax.jit(fn)


def classifier_accuracy(classify: Callable, cls_vars: PyTree, images: np.ndarray, labels: np.ndarray,
                        batch_size: int = 512) -> dict[str, np.ndarray]:
    """Frozen-classifier ``accuracy`` and mean ``ce`` on ``(M, N, H, W, C)`` images (float [0, 1] or uint8), one
    value per set M."""
    labels = np.asarray(labels, np.int32)
    fn = _accuracy_fn(classify)
    n = labels.shape[0]
    total = None
    for s, e in _padded_batches(n, batch_size):
        x = _pad(np.asarray(images[:, s:e]), batch_size, axis=1)
        y = _pad(labels[s:e], batch_size)
        valid = _pad(np.ones((e - s,), np.float32), batch_size)
        out = fn(cls_vars, jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid))
        total = out if total is None else total + out
    total = np.asarray(total)
    return {"accuracy": total[0] / n, "ce": total[1] / n}


# ------------------------------------------------------------------------------------------- retraining
@dataclasses.dataclass(frozen=True)
class RetrainSpec:
    """How the fresh classifiers are trained (defaults: the official classifier recipe, 10 epochs).

    ``stack``: ``vmap`` trains the M classifiers as one stacked model; ``sequential`` one after the other with
    the same compiled step; ``auto`` = sequential on CPU, vmap elsewhere. Measured on the 2-core CPU (5 ConvNets,
    batch 64, 32 px): vmap 1.7-2.1 s per step vs 0.15-0.22 s for five single steps — XLA:CPU runs convolutions
    whose kernels are batched by vmap as grouped convolutions, on a slow generic path.
    """

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    lr_decay: bool = True
    eval_batch_size: int = 512
    seed: int = 0
    stack: str = "auto"


@functools.lru_cache(maxsize=8)
def _retrain_program(model: nn.Module, arch: str, spec: RetrainSpec, steps_per_epoch: int,
                     m_count: int) -> tuple[optax.GradientTransformation, Callable, Callable]:
    """``(tx, jitted step, jitted correct-count)`` of the retrain protocol; ``m_count`` > 0: vmapped over that
    many stacked models, 0: one model (sequential). Cached, so every layer of a run reuses the compiled step."""
    mean, std = NORMALIZATIONS[backbones.NORMALIZATION.get(arch, arch)]  # an arch, or a scheme (a user model's)
    loss_fn = make_classifier_loss(model, mean=mean, std=std, augment="none")
    tx = training.torch_sgd(training.step_schedule(spec.lr, spec.epochs, steps_per_epoch, spec.lr_decay),
                            spec.momentum, spec.weight_decay)

    def grads_one(params, model_state, images, labels, rng):
        (loss, (new_ms, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, {"image": images, "label": labels}, rng)
        return loss, new_ms, aux["accuracy"], grads

    def correct_one(variables, x, y, valid):
        logits, _ = model.apply(variables, backbones.normalize(x, arch), train=False)
        return jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32) * valid)

    def update(state, loss, new_ms, grads, metrics):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             model_state=new_ms, opt_state=opt_state), metrics

    if m_count:
        def step(state, idx, data):
            images = jnp.take(data["image"], idx, axis=1)          # (M, B, H, W, C)
            labels = jnp.take(data["label"], idx, axis=0)
            # per-model key fold_in(fold_in(loop key, step), model), as in the sequential path
            rngs = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(state.rng, state.step), i))(
                jnp.arange(m_count))
            loss, new_ms, acc, grads = jax.vmap(grads_one, in_axes=(0, 0, 0, None, 0))(
                state.params, state.model_state, images, labels, rngs)
            metrics = {"loss": jnp.mean(loss), "grad_norm": jnp.max(jax.vmap(optax.tree.norm)(grads))}
            metrics.update({f"accuracy/{k}": acc[k] for k in range(m_count)})
            return update(state, loss, new_ms, grads, metrics)

        correct = jax.vmap(correct_one, in_axes=(0, 0, None, None))
    else:
        def step(state, idx, data):
            images = jnp.take(data["image"], idx, axis=0)
            labels = jnp.take(data["label"], idx, axis=0)
            rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), data["model"])
            loss, new_ms, acc, grads = grads_one(state.params, state.model_state, images, labels, rng)
            return update(state, loss, new_ms, grads, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                                                       "accuracy": acc})

        correct = correct_one
    return tx, jax.jit(step, donate_argnums=(0,)), jax.jit(correct)


def retrain(model: nn.Module, arch: str, train_sets: np.ndarray, train_labels: np.ndarray, test_sets: np.ndarray,
            test_original: np.ndarray, test_labels: np.ndarray, spec: RetrainSpec, workdir: str | Path, *,
            progress: bool = True) -> dict[str, Any]:
    """Trains M fresh ``model``s, model m on ``train_sets[m]`` ``(M, N, H, W, C)`` uint8, and tests each on
    ``test_sets[m]`` and on ``test_original``. Returns ``{"acc_reconstructed", "acc_original"}`` (M,) plus
    timing. Same batches for every model; per-model init and dropout keys (``fold_in`` of the model index)."""
    m_count, n = train_sets.shape[0], train_sets.shape[1]
    image_shape = tuple(train_sets.shape[2:])
    stack = spec.stack if spec.stack != "auto" else ("sequential" if jax.default_backend() == "cpu" else "vmap")
    root = jax.random.fold_in(jax.random.key(spec.seed), 7)
    keys = [jax.random.fold_in(root, i) for i in range(m_count)]
    loop_key = jax.random.key_data(jax.random.fold_in(root, 10 ** 6))
    spe, total = training.steps_for(n, spec.batch_size, spec.epochs)
    tx, step, correct = _retrain_program(model, arch, spec, spe, m_count if stack == "vmap" else 0)
    inits = [backbones.init(model, k, image_shape) for k in keys]  # the shared O0-compiled init
    if stack == "vmap":
        variables = jax.tree.map(lambda *v: jnp.stack(v), *inits)
        params = variables.pop("params")
        state = training.new_state(params, tx, loop_key, variables)
        data = {"image": jnp.asarray(train_sets), "label": jnp.asarray(train_labels, jnp.int32)}
        fit = training.fit(state, step, (data,), n=n, batch_size=spec.batch_size, steps=total,
                           seed=spec.seed + 3, workdir=workdir, desc="retrain", log_every=spe, progress=progress)
        finals = [{"params": fit.state.params, **fit.state.model_state}]
        wall = fit.wall_time_s
    else:
        labels = jnp.asarray(train_labels, jnp.int32)
        finals, wall = [], 0.0
        for i in range(m_count):
            variables = dict(inits[i])
            params = variables.pop("params")
            state = training.new_state(params, tx, jnp.array(loop_key), variables)  # a copy: states are donated
            data = {"image": jnp.asarray(train_sets[i]), "label": labels, "model": jnp.int32(i)}
            fit = training.fit(state, step, (data,), n=n, batch_size=spec.batch_size, steps=total,
                               seed=spec.seed + 3, workdir=Path(workdir) / str(i), desc=f"retrain {i + 1}/{m_count}",
                               log_every=spe, progress=progress)
            finals.append({"params": fit.state.params, **fit.state.model_state})
            wall += fit.wall_time_s

    def accuracy(sets: np.ndarray | None) -> np.ndarray:
        """Accuracy of every model on its own test set (``sets`` (M, Nt, ...)) or on the originals (None)."""
        nt, bs = test_labels.shape[0], spec.eval_batch_size
        total_ok = np.zeros((m_count,), np.float64)
        for s, e in _padded_batches(nt, bs):
            valid = jnp.asarray(_pad(np.ones((e - s,), np.float32), bs))
            y = jnp.asarray(_pad(np.asarray(test_labels[s:e], np.int32), bs))
            if stack == "vmap":
                x = (np.broadcast_to(_pad(test_original[s:e], bs)[None], (m_count, bs, *image_shape))
                     if sets is None else _pad(sets[:, s:e], bs, axis=1))
                total_ok += np.asarray(correct(finals[0], jnp.asarray(x), y, valid))
            else:
                for i in range(m_count):
                    x = _pad(test_original[s:e] if sets is None else sets[i, s:e], bs)
                    total_ok[i] += float(correct(finals[i], jnp.asarray(x), y, valid))
        return total_ok / nt

    return {"acc_reconstructed": accuracy(test_sets), "acc_original": accuracy(None), "train_time_s": wall,
            "steps": total, "stack": stack}
