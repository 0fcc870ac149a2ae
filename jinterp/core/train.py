"""Train state, optimizers, and jitted train/eval steps (Flax-examples / big_vision style).

The pieces are small pure functions so that every trainer (backbones, ClaDec decoders, gates, explainers)
reuses them with its own loss:

    tx, schedule = make_optimizer(cfg.optim, total_steps, params)
    state = create_train_state(variables, tx, loop_key)
    step = make_train_step(loss_fn, tx, mesh=mesh, schedule=schedule)
    state, metrics = step(state, batch)          # batch sharded P("data"), state replicated

``loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))`` is the only
method-specific part. Randomness: the state carries the loop key; step ``t`` uses
``jax.random.fold_in(key, t)``, so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jinterp.core import optim
from jinterp.core import sharding as shd
from jinterp.core.config import OptimConfig
from jinterp.data.pipeline import augment, standardize
from jinterp.errors import ConfigError

PyTree = Any
Batch = Mapping[str, jax.Array]
LossFn = Callable[[PyTree, PyTree, Batch, jax.Array], tuple[jax.Array, tuple[PyTree, dict[str, jax.Array]]]]


# ------------------------------------------------------------------------------------------------------ state
@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree of arrays (checkpointed as a whole).

    step: int32 scalar, the number of updates applied so far.
    params: the trainable ``params`` collection (float32 even when computing in bf16).
    model_state: the other variable collections (e.g. ``{"batch_stats": ...}``), updated by the loss.
    opt_state: optax state.
    rng: the loop key (raw ``uint32[2]``); step ``t`` uses ``fold_in(rng, t)``.
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    rng: jax.Array

    @property
    def variables(self) -> dict[str, PyTree]:
        """Variables for ``model.apply`` (``{"params": ..., **model_state}``)."""
        return {"params": self.params, **self.model_state}


def create_train_state(variables: Mapping[str, PyTree], tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
    """Splits ``variables`` into params and the rest, and initializes the optimizer."""
    variables = dict(flax.core.unfreeze(variables))
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=tx.init(params),
        rng=jnp.asarray(rng),
    )


# ------------------------------------------------------------------------------------------------ tree naming
def path_name(path: tuple[Any, ...]) -> str:
    """``(DictKey('conv1'), DictKey('kernel'))`` -> ``"conv1/kernel"``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def tree_names(tree: PyTree) -> list[str]:
    """``/``-joined paths of every leaf, in ``jax.tree.leaves`` order."""
    return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def regex_mask(tree: PyTree, patterns: tuple[str, ...] | list[str]) -> PyTree:
    """A bool tree: True where the leaf's path matches (``re.search``) any of ``patterns``."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda p, _: any(c.search(path_name(p)) for c in compiled), tree)


# --------------------------------------------------------------------------------------------------- optimizer
def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup, then constant / cosine to 0 / step decay."""
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    rest = max(total_steps - warm, 1)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps=rest)
    elif cfg.schedule == "step":
        # Fractions (< 1) are of the whole run, as in "decay at 50% and 75%"; boundaries count from step 0.
        bounds = [int(round(b * total_steps)) if b < 1 else int(b) for b in cfg.decay_steps]
        main = optim.piecewise_lr(cfg.lr, [max(b - warm, 0) for b in bounds], cfg.decay_factor)
    else:  # config validation normally catches this first
        raise ConfigError(f"unknown optim.schedule {cfg.schedule!r}; choose constant, cosine or step")
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), main], [warm])


def make_optimizer(cfg: OptimConfig, total_steps: int,
                   params: PyTree | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the PyTorch-semantics optimizer of an OptimConfig (:mod:`jinterp.core.optim`); returns
    ``(tx, lr_schedule)``.

    Order (as in PyTorch): clip the raw gradient (``clip_grad_norm_``), then the optimizer with its weight decay
    (coupled for ``sgd``/``adam``, decoupled for ``adamw``) on kernels only (ndim > 1: biases and BatchNorm
    scales are usually left alone, and decaying BN scales interacts badly with the following conv's scale
    invariance). Params whose path matches ``cfg.freeze`` get ``set_to_zero`` updates through
    ``optax.partition`` (and no optimizer state); ``params`` is needed only to validate that the freeze regexes
    match something.
    """
    schedule = make_schedule(cfg, total_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "sgd":
        parts.append(optim.torch_sgd(schedule, cfg.momentum, cfg.weight_decay, nesterov=cfg.nesterov,
                                     decay_mask=optim.kernels_only))
    elif cfg.name in ("adam", "adamw"):
        build = optim.torch_adam if cfg.name == "adam" else optim.torch_adamw
        parts.append(build(schedule, cfg.weight_decay, cfg.b1, cfg.b2, cfg.eps, decay_mask=optim.kernels_only))
    else:
        raise ConfigError(f"unknown optim.name {cfg.name!r}; choose sgd, adam or adamw")
    tx = optax.chain(*parts)
    if cfg.freeze:
        if params is not None:
            names = tree_names(params)
            for pat in cfg.freeze:
                if not any(re.search(pat, n) for n in names):
                    raise ConfigError(
                        f"optim.freeze pattern {pat!r} matches no parameter; parameter paths are: "
                        + ", ".join(names))
        labels = lambda p: jax.tree.map(lambda m: "frozen" if m else "train", regex_mask(p, cfg.freeze))
        tx = optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


# ------------------------------------------------------------------------------------------- classification
def normalize_images(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...],
                     dtype: Any = jnp.float32) -> jax.Array:
    """uint8 ``[N, H, W, C]`` in 0..255 -> ``(x / 255 - mean) / std`` as ``dtype`` (the data layer's standardize)."""
    return standardize(images, mean, std).astype(dtype)


def augment_images(images: jax.Array, rng: jax.Array, mode: str = "flip_crop", pad: int = 4) -> jax.Array:
    """Random horizontal flip (+ random crop after zero-padding by ``pad``), per example, on device.

    images: ``[N, H, W, C]`` (any dtype) -> same shape; the data layer's :func:`jinterp.data.augment`.
    """
    if mode not in ("none", "flip", "flip_crop"):
        raise ConfigError(f"unknown augment mode {mode!r}; choose none, flip or flip_crop")
    if mode == "none":
        return images
    return augment({"image": images}, rng, flip=True, crop_pad=pad if mode == "flip_crop" else 0)["image"]


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy over the valid (``mask``) examples; logits ``[N, K]``, labels ``[N]``."""
    logits = logits.astype(jnp.float32)  # the loss in float32 even when the net computes in bf16
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    losses = optax.softmax_cross_entropy(logits, onehot)
    if mask is None:
        return losses.mean()
    mask = mask.astype(jnp.float32)
    return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def make_classifier_loss(model: Any, *, mean: tuple[float, ...], std: tuple[float, ...],
                         augment: str = "none", crop_pad: int = 4, label_smoothing: float = 0.0,
                         compute_dtype: Any = jnp.float32) -> LossFn:
    """A LossFn for supervised classification of ``batch = {"image": uint8 NHWC, "label": int, "mask"}``.

    The model is applied in train mode (BatchNorm batch statistics, dropout keyed by the step rng);
    metrics are the batch ``accuracy``.
    """

    def loss_fn(params, model_state, batch, rng):
        k_aug, k_drop = jax.random.split(rng)
        images = augment_images(batch["image"], k_aug, augment, crop_pad)
        x = normalize_images(images, mean, std, compute_dtype)
        mutable = list(model_state.keys())
        variables = {"params": params, **model_state}
        if mutable:
            (logits, _), new_state = model.apply(variables, x, train=True, mutable=mutable,
                                                 rngs={"dropout": k_drop})
        else:
            logits, _ = model.apply(variables, x, train=True, rngs={"dropout": k_drop})
            new_state = model_state
        mask = batch.get("mask")
        loss = cross_entropy(logits, batch["label"], mask, label_smoothing)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        m = jnp.ones_like(correct) if mask is None else mask.astype(jnp.float32)
        acc = (correct * m).sum() / jnp.maximum(m.sum(), 1.0)
        return loss, (dict(new_state), {"accuracy": acc})

    return loss_fn


def make_classifier_eval(model: Any, *, mean: tuple[float, ...], std: tuple[float, ...],
                         compute_dtype: Any = jnp.float32) -> Callable[..., dict[str, jax.Array]]:
    """``eval_fn(variables, batch) -> {"correct", "loss", "count"}`` sums over the valid examples."""

    def eval_fn(variables, batch):
        x = normalize_images(batch["image"], mean, std, compute_dtype)
        logits, _ = model.apply(variables, x, train=False)
        logits = logits.astype(jnp.float32)
        mask = batch.get("mask")
        m = jnp.ones(logits.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"correct": (correct * m).sum(), "loss": (losses * m).sum(), "count": m.sum()}

    return eval_fn


# ------------------------------------------------------------------------------------------------------ steps
def _cast_floats(tree: PyTree, dtype: Any) -> PyTree:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda x, ref: x.astype(ref.dtype), tree, like)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, mesh: Mesh | None = None,
                    schedule: optax.Schedule | None = None, compute_dtype: Any = None,
                    donate: bool = True) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """Jits ``(state, batch) -> (state, metrics)``: one gradient step of ``loss_fn``.

    With ``mesh`` the batch is sharded over ``data`` and the state replicated (shardings are pinned so the
    same program runs on 1 or N devices). ``compute_dtype=jnp.bfloat16`` casts the float params to bf16 for
    the forward/backward pass; gradients, optimizer and the stored params stay float32 (the cast is inside
    the differentiated function, so its transpose casts the gradients back). The donated state buffers are
    reused for the new state, halving peak memory; do not use the old ``state`` after the call.
    Metrics: the loss_fn's, plus ``loss``, ``grad_norm`` (global, before clipping) and ``lr``.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)

        def objective(params):
            p = params if compute_dtype is None else _cast_floats(params, compute_dtype)
            return loss_fn(p, state.model_state, batch, rng)

        (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # BatchNorm statistics computed in bf16 are stored back in their original (float32) dtype.
        model_state = _cast_like(model_state, state.model_state)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state)
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(train_step, donate_argnums=donate_argnums)
    repl, data = shd.replicated(mesh), shd.data_sharding(mesh)
    return jax.jit(train_step, in_shardings=(repl, data), out_shardings=(repl, repl),
                   donate_argnums=donate_argnums)


def make_eval_step(eval_fn: Callable[[PyTree, Batch], dict[str, jax.Array]], *,
                   mesh: Mesh | None = None) -> Callable[[TrainState, Batch], dict]:
    """Jits ``(state, batch) -> eval_fn(state.variables, batch)`` (per-batch sums; see ``evaluate``)."""

    def eval_step(state: TrainState, batch: Batch) -> dict:
        return eval_fn(state.variables, batch)

    if mesh is None:
        return jax.jit(eval_step)
    repl, data = shd.replicated(mesh), shd.data_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)


def evaluate(eval_step: Callable, state: TrainState, batches: Any, *, mesh: Mesh | None = None) -> dict:
    """Runs ``eval_step`` over an iterable of host batches and sums its outputs; returns host floats.

    The sums stay on device until the end (one host sync per evaluation, not per batch). For the classifier
    eval_fn the result is ``{"accuracy", "loss", "count"}`` (means over valid examples); other eval_fns get
    their raw sums back.
    """
    sums = None
    for batch in batches:
        b = shd.shard_batch(batch, mesh) if mesh is not None else batch
        out = eval_step(state, b)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        return {}
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    if {"correct", "loss", "count"} <= host.keys():
        n = max(host["count"], 1.0)
        return {"accuracy": host["correct"] / n, "loss": host["loss"] / n, "count": host["count"]}
    return host
