"""The released CSG training algorithm (spec B.3): whole epochs alternate between the standard and gated paths.

    trainer = Trainer(model, site, cfg, num_classes, image_shape)
    state = trainer.init_state(variables)                       # G = gate_init, two optimizer states
    state, log = trainer.fit(state, train_images, train_labels, eval_fn=..., gated=True)

* Epoch ``e`` uses the gated path iff ``cfg.is_csg_epoch(e)`` (``gated=False`` trains the standard baseline:
  every epoch standard).
* Two optimizers with disjoint states (PyTorch Adam or SGD from :mod:`jinterp.core.optim`, so the bias
  correction counts each optimizer's own steps), each over its own parameter subset (``train_stages`` top stages
  + head [+ gate]); frozen parameters get no gradient at all (XLA does not backpropagate below the lowest free
  stage). BatchNorm statistics of frozen stages still update (train mode), as in the released code.
* Each optimizer's lr is ``lr * gamma ** #{milestones <= epochs completed on its path}``.
* Gated step: loss ``CE(head(A * G[:, y]), y) + lambda * max(0, ||G||_1 - ratio * K * C)``, update, then
  ``G <- renormalize(G)``.
* One epoch is one jitted ``lax.scan`` over its batches, the data set on the device; step ``t`` draws its
  augmentation/dropout randomness from ``fold_in(key, t)``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jinterp.core import optim
from jinterp.core.train import augment_images, cross_entropy, normalize_images
from jinterp.data.pipeline import epoch_permutation
from jinterp.errors import ConfigError, DataError, TrainingError
from jinterp.methods.csg import gate as gates
from jinterp.methods.csg.config import CSGConfig, PathOptim

PyTree = Any


# ------------------------------------------------------------------------------------------------ optimizers
def path_optimizer(cfg: PathOptim) -> optax.GradientTransformationExtraArgs:
    """The PyTorch Adam/SGD (coupled weight decay) of one path; its lr is given per step (see :func:`opt_update`)."""
    if cfg.name == "adam":
        return optim.torch_adam(cfg.lr, cfg.weight_decay, cfg.b1, cfg.b2, cfg.eps)
    return optim.torch_sgd(cfg.lr, cfg.momentum, cfg.weight_decay, nesterov=cfg.nesterov)


def opt_init(cfg: PathOptim, params: dict[str, jax.Array]) -> optax.OptState:
    """State of the path's optimizer over a flat dict of params."""
    return path_optimizer(cfg).init(params)


def opt_update(cfg: PathOptim, grads: dict, state: optax.OptState, params: dict, lr: jax.Array,
               lr_scale: dict[str, float] | None = None) -> tuple[dict, optax.OptState]:
    """One ``torch.optim.Adam``/``SGD`` step at learning rate ``lr`` (times ``lr_scale[key]`` for the listed
    params, a param group with its own lr); returns the new params and state."""
    scale = lr_scale or {}
    lrs = {k: lr * scale.get(k, 1.0) for k in params}
    updates, state = path_optimizer(cfg).update(grads, state, params, lr=lrs)
    return optax.apply_updates(params, updates), state


def path_lr(cfg: PathOptim, epochs_done: int) -> float:
    """MultiStepLR after ``epochs_done`` scheduler steps: ``lr * gamma ** bisect_right(milestones, done)``."""
    return optim.multistep_lr(cfg.lr, cfg.milestones, cfg.gamma, epochs_done)


def trainable_keys(params: PyTree, site: gates.GateSite, stages: int, with_gate: bool) -> tuple[str, ...]:
    """Flat keys (``backbone/<path>``, ``gate``) of the params an optimizer updates: the top ``stages`` stages of
    the backbone plus its head (every backbone param when ``stages == -1``), plus the gate when ``with_gate``."""
    flat = tu.flatten_dict(params, sep="/")
    pats = [re.compile(site.head_params)]
    if stages != -1:
        if stages > len(site.stages):
            raise ConfigError(f"train_stages={stages} but the backbone has {len(site.stages)} stages; use -1 for "
                              "all")
        pats += [re.compile(p) for p in site.stages[len(site.stages) - stages:]]
    keys = []
    for k in flat:
        if k == "gate":
            if with_gate:
                keys.append(k)
            continue
        sub = k.split("/", 1)[1]
        if stages == -1 or any(p.search(sub) for p in pats):
            keys.append(k)
    return tuple(keys)


# --------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Holds the jitted epoch functions of one model (CSG or baseline); see the module docstring."""

    def __init__(self, model, site: gates.GateSite, cfg: CSGConfig, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...], *, baseline: bool = False):
        self.model, self.site, self.cfg = model, site, cfg
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.baseline = baseline
        self._epoch_fns: dict[str, Callable] = {}
        self._keys: dict[str, tuple[str, ...]] = {}

    # ---- state
    def init_state(self, variables: PyTree, num_filters: int) -> dict:
        cfg = self.cfg
        # Copies: the jitted steps donate the state, which must not delete the caller's variables.
        variables = dict(jax.tree.map(lambda x: jnp.array(x, copy=True), dict(variables)))
        params = {"backbone": variables.pop("params"), "gate": gates.init_gate(num_filters, self.num_classes,
                                                                               cfg.gate_init)}
        std_stages = cfg.std_optim.train_stages
        if self.baseline and cfg.faithful and std_stages != -1:
            std_stages = min(std_stages + 1, len(self.site.stages))  # the released baseline also frees layer2
        self._keys = {"std": trainable_keys(params, self.site, std_stages, False),
                      "csg": trainable_keys(params, self.site, cfg.csg_optim.train_stages, True)}
        flat = tu.flatten_dict(params, sep="/")
        opt = {path: opt_init(self._optim(path), {k: flat[k] for k in self._keys[path]}) for path in ("std", "csg")}
        return {"params": params, "model_state": variables, "opt": opt, "step": jnp.zeros((), jnp.int32)}

    def _optim(self, path: str) -> PathOptim:
        return self.cfg.std_optim if path == "std" else self.cfg.csg_optim

    @property
    def keys(self) -> dict[str, tuple[str, ...]]:
        return self._keys

    # ---- one step (pure), one epoch (scan, jitted)
    def loss_fn(self, path: str):
        cfg, model, site = self.cfg, self.model, self.site

        def loss(train_p, frozen_p, model_state, images, labels, rng):
            params = tu.unflatten_dict({**frozen_p, **train_p}, sep="/")
            k_aug, k_net = jax.random.split(rng)
            x = augment_images(images, k_aug, cfg.augment, cfg.crop_pad)
            x = normalize_images(x, self.mean, self.std)
            variables = {"params": params["backbone"], **model_state}
            g = params["gate"] if path == "csg" else None
            logits, _, new_state = gates.forward(model, site, variables, x, train=True, gate=g, labels=labels,
                                                 rng=k_net)
            ce = cross_entropy(logits, labels)
            reg = cfg.lambda_reg * gates.sparsity_penalty(params["gate"], cfg.density_ratio) if g is not None \
                else jnp.zeros(())
            acc = (jnp.argmax(logits, -1) == labels).mean()
            return ce + reg, (new_state, {"loss": ce + reg, "ce": ce, "reg": reg, "accuracy": acc})

        return loss

    def step_fn(self, path: str):
        """``(state, images, labels, lr, rng) -> (state, metrics)``: one update of ``path`` (not jitted)."""
        keys, optim, loss = self._keys[path], self._optim(path), self.loss_fn(path)
        faithful = self.cfg.faithful
        lr_scale = {"gate": self.cfg.gate_lr_mult}

        def step(state, images, labels, lr, rng):
            flat = tu.flatten_dict(state["params"], sep="/")
            train_p = {k: flat[k] for k in keys}
            frozen_p = {k: v for k, v in flat.items() if k not in train_p}
            grads, (model_state, metrics) = jax.grad(loss, has_aux=True)(
                train_p, frozen_p, state["model_state"], images, labels, rng)
            new_p, opt_state = opt_update(optim, grads, state["opt"][path], train_p, lr, lr_scale)
            if path == "csg":
                new_p["gate"] = gates.renormalize(new_p["gate"], faithful=faithful)
            params = tu.unflatten_dict({**frozen_p, **new_p}, sep="/")
            model_state = jax.tree.map(lambda a, b: a.astype(b.dtype), model_state, state["model_state"])
            metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
            return ({"params": params, "model_state": model_state, "opt": {**state["opt"], path: opt_state},
                     "step": state["step"] + 1}, metrics)

        return step

    def batch_step_fn(self, path: str) -> Callable:
        """Jitted ``(state, images, labels, idx (B,), lr, key) -> (state, metrics)``: one step on
        ``images[idx]`` (the data set stays on the device); randomness ``fold_in(key, state.step)``.

        A Python loop over these steps is used rather than one ``lax.scan`` per epoch: on XLA:CPU the scanned
        epoch ran ~3x slower than the same jitted steps called in a loop (measured on the ConvNet of tiny()).
        """
        if path not in self._epoch_fns:
            step = self.step_fn(path)

            def batch_step(state, images, labels, idx, lr, key):
                return step(state, images[idx], labels[idx], lr, jax.random.fold_in(key, state["step"]))

            self._epoch_fns[path] = jax.jit(batch_step, donate_argnums=(0,))
        return self._epoch_fns[path]

    # ---- the loop
    def fit(self, state: dict, images: np.ndarray, labels: np.ndarray, *, gated: bool = True,
            eval_fn: Callable[[dict], dict] | None = None, log: Callable[[dict], None] | None = None,
            progress: bool = False, desc: str = "csg") -> tuple[dict, list[dict]]:
        """Runs ``cfg.epochs`` epochs; ``gated=False`` is the standard baseline (every epoch standard).

        Returns the final state and one record per epoch (path, lr, mean train loss/ce/reg/accuracy, gate
        density, wall time, and ``eval_fn(state)``'s entries). Non-finite losses raise ``TrainingError``.
        """
        cfg = self.cfg
        n = int(images.shape[0])
        steps = n // cfg.batch_size
        if steps < 1:
            raise DataError(f"{n} training images < batch_size {cfg.batch_size}; lower batch_size")
        images_d, labels_d = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
        key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
        done = {"std": 0, "csg": 0}
        records = []
        it = range(cfg.epochs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=desc, leave=False)
        for epoch in it:
            path = "csg" if (gated and cfg.is_csg_epoch(epoch)) else "std"
            lr = path_lr(self._optim(path), done[path])
            perm = epoch_permutation(cfg.seed, epoch, n)[: steps * cfg.batch_size].reshape(steps, cfg.batch_size)
            t0 = time.perf_counter()
            fn, perm_d, ms = self.batch_step_fn(path), jnp.asarray(perm, jnp.int32), []
            for i in range(steps):
                state, mi = fn(state, images_d, labels_d, perm_d[i], jnp.float32(lr), key)
                ms.append(mi)
            m = {k: float(np.mean([float(x[k]) for x in jax.device_get(ms)])) for k in ms[0]}
            if not np.isfinite(m["loss"]):
                raise TrainingError(f"{desc}: non-finite loss in epoch {epoch} ({path} path); lower the lr "
                                    f"({path}_optim.lr) or check the data")
            done[path] += 1
            rec = {"epoch": epoch, "path": path, "lr": lr, **{f"train_{k}": v for k, v in m.items()},
                   "density": float(gates.density(state["params"]["gate"])),
                   "epoch_time_s": time.perf_counter() - t0}
            if eval_fn is not None:
                rec.update(eval_fn(state))
            records.append(rec)
            if log is not None:
                log(rec)
        return state, records

