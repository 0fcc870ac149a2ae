"""ClaDec's losses, optimizers and the vmapped α-sweep train step, plus the small loop every stage uses.

Loss (spec A.2): ``L_α(φ) = (1-α)·MSE(D_φ(a), x) + α·CE(C(x̂), y)``, MSE averaged over every element of the batch
(``nn.MSELoss()``), x in [0, 1], C the frozen classifier in eval mode applied to the normalised reconstruction.

* **Cached α = 0 path**: the batch carries the layer's activations ``a`` (extracted once); with ``use_ce=False``
  the classifier never runs. Gradients equal the un-cached path's (``a = f_l(x)`` computed in the step, and the
  faithful ``0·CE`` through C), tested in ``tests/methods/cladec``.
* **Sweep**: K decoders (one per α) are one pytree with a leading model axis; the step is
  ``vmap(value_and_grad(loss))`` over ``(params, α)`` on the same batch, then one elementwise optimizer update
  on the stacked tree. The frozen classifier's variables are a jit argument shared by all K (never a closure
  constant, never differentiated: XLA emits no weight-gradient kernels for C).

Optimizers follow PyTorch (spec A.7): :func:`jinterp.core.optim.torch_adam` / ``torch_sgd`` with *coupled* weight
decay on every parameter (biases too), lr multiplied by 0.1 after the epochs of
:func:`~jinterp.methods.cladec.config.official_decay_epochs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.core import loop, optim
from jinterp.core.checkpoint import Checkpointer
from jinterp.core.optim import torch_adam, torch_sgd  # ClaDec's optimizers (re-exported)
from jinterp.core.train import TrainState, cross_entropy
from jinterp.data.pipeline import epoch_permutation, standardize
from jinterp.methods.cladec.config import official_decay_epochs

PyTree = Any
Classify = Callable[[PyTree, jax.Array], jax.Array]      # (classifier variables, x̂ in [0, 1]) -> logits
Encode = Callable[[PyTree, jax.Array], jax.Array]        # (classifier variables, x in [0, 1]) -> activation


# --------------------------------------------------------------------------------------------- optimizers
def step_schedule(lr: float, epochs: int, steps_per_epoch: int, decay: bool = True) -> optax.Schedule:
    """The official step decay in optimizer steps: lr x0.1 after each of :func:`official_decay_epochs`."""
    bounds = [e * steps_per_epoch for e in official_decay_epochs(epochs)] if decay else []
    return optim.piecewise_lr(lr, bounds, 0.1)


# ------------------------------------------------------------------------------------------------- losses
def to_unit(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1] (the reconstruction target; float input passes through)."""
    return standardize(images, (0.0,), (1.0,))


def mse(xhat: jax.Array, x: jax.Array) -> jax.Array:
    """Mean squared error over every element (``torch.nn.MSELoss()``)."""
    return jnp.mean(jnp.square(xhat.astype(jnp.float32) - x.astype(jnp.float32)))


def cladec_loss(dec_params: PyTree, alpha: jax.Array, batch: Mapping[str, jax.Array], cls_vars: PyTree, *,
                decoder: Any, classify: Classify | None = None, encode: Encode | None = None,
                use_ce: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoder's loss on one batch; returns ``(loss, {"rec", "ce", "accuracy"})``.

    batch: ``image`` uint8 or [0, 1] float (N, H, W, C), ``label`` (N,), and ``act`` (N, ...) the cached
    activations — or, without ``act``, ``encode(cls_vars, x)`` computes them from the images (un-cached path,
    no gradient into C). ``use_ce=False`` drops the classification term (valid only at α = 0).
    """
    x = to_unit(batch["image"])
    if "act" in batch:
        act = batch["act"]
    else:
        act = jax.lax.stop_gradient(encode(cls_vars, x))
    xhat = decoder.apply({"params": dec_params}, act.astype(jnp.float32))
    rec = mse(xhat, x)
    if use_ce:
        logits = classify(cls_vars, xhat)
        ce = cross_entropy(logits, batch["label"])
        acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
        loss = (1.0 - alpha) * rec + alpha * ce
    else:
        ce = acc = jnp.full((), jnp.nan, jnp.float32)
        loss = (1.0 - alpha) * rec
    return loss, {"rec": rec, "ce": ce, "accuracy": acc}


def sweep_loss_and_grads(params: PyTree, alphas: jax.Array, batch: Mapping[str, jax.Array], cls_vars: PyTree,
                         **loss_kw) -> tuple[jax.Array, dict, PyTree]:
    """``vmap`` of ``value_and_grad(cladec_loss)`` over stacked decoder params and their α (same batch)."""
    vg = jax.value_and_grad(lambda p, a: cladec_loss(p, a, batch, cls_vars, **loss_kw), has_aux=True)
    if jax.tree.leaves(params)[0].shape[0] == 1:
        # One decoder: no vmap (a size-1 model axis still made XLA:CPU's GEMMs batched, ~15 % slower).
        (loss, aux), grads = vg(jax.tree.map(lambda p: p[0], params), alphas[0])
        return jax.tree.map(lambda t: jnp.asarray(t)[None], (loss, aux, grads))
    (loss, aux), grads = jax.vmap(vg)(params, alphas)
    return loss, aux, grads


def make_sweep_step(decoder: Any, tx: optax.GradientTransformation, *, classify: Classify | None = None,
                    encode: Encode | None = None, use_ce: bool = True, donate: bool = True) -> Callable:
    """Jitted ``(state, idx, data, alphas, cls_vars) -> (state, metrics)``: one Adam step of K decoders.

    ``state.params`` is the stacked decoder tree (leading axis K = ``len(alphas)``); ``data`` holds the whole
    training split on the device (``image``, ``label``, and ``act`` unless ``encode`` is used) and ``idx`` the
    batch's example indices, gathered inside the jit. Metrics: ``loss`` (mean over the K), ``grad_norm`` (max
    over the K), and per model ``rec/<k>``, ``ce/<k>``.
    """

    def step(state: TrainState, idx, data, alphas, cls_vars):
        batch = {k: jnp.take(v, idx, axis=0) for k, v in data.items()}
        loss, aux, grads = sweep_loss_and_grads(state.params, alphas, batch, cls_vars, decoder=decoder,
                                                classify=classify, encode=encode, use_ce=use_ce)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norms = jax.vmap(optax.tree.norm)(grads)
        metrics = {"loss": jnp.mean(loss), "grad_norm": jnp.max(norms)}
        for k in range(loss.shape[0]):
            metrics[f"rec/{k}"] = aux["rec"][k]
            if use_ce:
                metrics[f"ce/{k}"] = aux["ce"][k]
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def new_state(params: PyTree, tx: optax.GradientTransformation, rng: jax.Array,
              model_state: PyTree | None = None) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state or {},
                      opt_state=tx.init(params), rng=jnp.asarray(rng))


# --------------------------------------------------------------------------------------------------- loop
class IndexBatches:
    """Resumable batches of example indices: epoch ``e`` visits ``epoch_permutation(seed, e, n)`` in
    ``n // batch_size`` full batches (the incomplete last batch is dropped so every step has one shape)."""

    def __init__(self, n: int, batch_size: int, seed: int, step: int = 0):
        self.n, self.batch_size, self.seed, self.step = int(n), int(batch_size), int(seed), int(step)
        self.steps_per_epoch = max(self.n // self.batch_size, 1)
        self._perm: tuple[int, np.ndarray] | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, i = divmod(self.step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, self.n).astype(np.int32))
        perm = self._perm[1]
        b = self.batch_size
        idx = perm[i * b:(i + 1) * b] if self.n >= b else np.resize(perm, b)
        self.step += 1
        return {"idx": idx}

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}


@dataclasses.dataclass
class FitResult:
    state: TrainState
    wall_time_s: float
    steps: int
    last_metrics: dict[str, float]


def fit(state: TrainState, step_fn: Callable, args: tuple, *, n: int, batch_size: int, steps: int, seed: int,
        workdir: str | Path, desc: str, log_every: int = 50, ckpt_every: int = 0,
        config: Mapping[str, Any] | None = None, progress: bool = True) -> FitResult:
    """Runs ``step_fn(state, idx, *args)`` for ``steps`` steps through :func:`jinterp.core.loop.train_loop`
    (progress bar, ``metrics.jsonl``, NaN guard; with ``ckpt_every`` > 0 Orbax checkpoints and resume)."""
    import time

    t0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(workdir / "checkpoints", keep=2, config=config) if ckpt_every > 0 else None
    start_pos = None
    if ckpt is not None:
        state, _, start_pos = loop.restore_or_init(ckpt, state, workdir)
    it = IndexBatches(n, batch_size, seed, step=(start_pos or {}).get("step", 0))
    with ckpt if ckpt is not None else contextlib.nullcontext():  # a close failing after an error never hides it
        state = loop.train_loop(
            state, train_step=lambda s, b: step_fn(s, b["idx"], *args), train_iter=it, num_steps=steps,
            workdir=workdir, checkpointer=ckpt, log_every=log_every, ckpt_every=ckpt_every, progress=progress,
            desc=desc)
    logged = loop.MetricsWriter(workdir).read()
    last = logged[-1]["metrics"] if logged else {}
    return FitResult(state, time.perf_counter() - t0, steps, last)


def steps_for(n: int, batch_size: int, epochs: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)`` with the incomplete last batch dropped."""
    spe = max(n // batch_size, 1)
    return spe, spe * int(epochs)


__all__ = ["IndexBatches", "cladec_loss", "fit", "make_sweep_step", "mse", "step_schedule", "sweep_loss_and_grads",
           "torch_adam", "torch_sgd"]
