"""RefAE, ClaDec's reference auto-encoder (spec A.2 item 3, official ``cladec.py::RefAE``).

Encoder: the classifier's architecture up to the explained layer, *freshly initialised*, trained in train mode
(BatchNorm batch statistics; dropout active where the architecture has it before the layer). Decoder: the same
family as ClaDec's (:mod:`~jinterp.methods.cladec.decoder`). Both trained jointly on MSE only.

"Up to the layer" for any backbone: the backbone is applied whole, and the prefix is found once by tracing
``variables -> feats[layer]`` to a jaxpr and walking it backwards from the output (:func:`used_leaves`). Only
the prefix's parameters are trained (and carry optimizer state), only the prefix's BatchNorm statistics are
updated; everything past the layer is a constant input that XLA prunes from the compiled step.

With ``code_dropout`` > 0 the code is passed through Dropout while training: the official HEAD's encoder for
``layInd = -1`` is ``children()[:-1]`` of the classifier, whose last child is its Dropout(0.5) — kept when
``faithful=True`` for ``vgg11_bn_cladec``'s ``flat``. At test time RefAE runs in eval mode (``netDec.eval()``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.extend import core as jcore

from jinterp import backbones
from jinterp.core.train import TrainState, tree_names
from jinterp.methods.cladec.training import mse, to_unit

PyTree = Any


def used_leaves(fn: Callable, *args) -> list[bool]:
    """For each leaf of ``args`` (``jax.tree.leaves`` order), whether ``fn``'s output depends on it.

    Exact dead-code analysis of the traced jaxpr (an equation is live when any of its outputs is; then all its
    inputs are); nested jaxprs count as a whole, so the answer errs on the side of "used".
    """
    closed = jax.make_jaxpr(fn)(*args)
    jaxpr = closed.jaxpr
    live = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(o in live for o in eqn.outvars):
            live.update(v for v in eqn.invars if isinstance(v, jcore.Var))
    return [v in live for v in jaxpr.invars]


def _flat(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def _unflat(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


@dataclasses.dataclass(frozen=True)
class Encoder:
    """The classifier's prefix up to ``layer`` (see module docstring).

    trainable: flat param paths (``conv0/conv1/kernel`` …) the layer depends on; stats_modules: the BatchNorm
    module paths among them (their ``batch_stats`` are updated in train mode).
    """

    model: nn.Module
    arch: str
    layer: str
    trainable: tuple[str, ...]
    stats_modules: tuple[str, ...]
    code_dropout: float = 0.0

    def split(self, variables: Mapping) -> tuple[dict, dict, dict]:
        """``(params, batch_stats, frozen)``: the trainable prefix params and its BN stats (flat dicts), and
        everything else (``{"params": flat, "batch_stats": flat}``) as constants."""
        fp, fs = _flat(variables["params"]), _flat(variables.get("batch_stats", {}))
        train = set(self.trainable)
        mods = set(self.stats_modules)
        params = {k: v for k, v in fp.items() if k in train}
        stats = {k: v for k, v in fs.items() if k.rsplit("/", 1)[0] in mods}
        frozen = {"params": {k: v for k, v in fp.items() if k not in train},
                  "batch_stats": {k: v for k, v in fs.items() if k not in stats}}
        return params, stats, frozen

    def variables(self, params: Mapping, stats: Mapping, frozen: Mapping) -> dict:
        out = {"params": _unflat({**frozen["params"], **params})}
        if stats or frozen["batch_stats"]:
            out["batch_stats"] = _unflat({**frozen["batch_stats"], **stats})
        return out

    def __call__(self, params, stats, frozen, x: jax.Array, *, train: bool,
                 rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Code ``f̃_ψ(x)`` for x in [0, 1]; returns ``(code, new_stats)`` (new_stats = stats when eval)."""
        variables = self.variables(params, stats, frozen)
        xn = backbones.normalize(x, self.arch)
        if not train:
            _, feats = self.model.apply(variables, xn, train=False)
            return feats[self.layer], stats
        k_model, k_code = jax.random.split(rng)
        (_, feats), new = self.model.apply(variables, xn, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": k_model})
        code = feats[self.layer]
        if self.code_dropout > 0:
            keep = jax.random.bernoulli(k_code, 1.0 - self.code_dropout, code.shape)
            code = jnp.where(keep, code / (1.0 - self.code_dropout), 0.0)
        new_flat = _flat(new["batch_stats"])
        return code, {k: new_flat[k] for k in stats}


def make_encoder(arch: str, model: nn.Module, variables: Mapping, image_shape: Sequence[int], layer: str,
                 code_dropout: float = 0.0) -> Encoder:
    """Find the prefix of ``model`` that ``feats[layer]`` depends on (train mode, one traced forward)."""
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    x = jnp.zeros((2, *image_shape), jnp.float32)

    def code(p):
        (_, feats), _ = model.apply({"params": p, "batch_stats": stats} if stats else {"params": p}, x,
                                    train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return feats[layer]

    used = used_leaves(code, params)
    trainable = tuple(p for p, u in zip(tree_names(params), used, strict=True) if u)
    stat_mods = {k.rsplit("/", 1)[0] for k in _flat(stats)}
    modules = tuple(sorted({p.rsplit("/", 1)[0] for p in trainable} & stat_mods))
    return Encoder(model, arch, layer, trainable, modules, float(code_dropout))


def refae_loss(params: Mapping, stats: Mapping, frozen: Mapping, images: jax.Array, rng: jax.Array, *,
               encoder: Encoder, decoder: nn.Module) -> tuple[jax.Array, dict]:
    """``MSE(D_φ'(f̃_ψ(x)), x)`` in train mode; ``params = {"encoder": flat, "decoder": tree}``."""
    x = to_unit(images)
    code, new_stats = encoder(params["encoder"], stats, frozen, x, train=True, rng=rng)
    xhat = decoder.apply({"params": params["decoder"]}, code)
    return mse(xhat, x), new_stats


def make_refae_step(encoder: Encoder, decoder: nn.Module, tx: optax.GradientTransformation,
                    donate: bool = True) -> Callable:
    """Jitted ``(state, idx, data, frozen) -> (state, metrics)``; ``state.model_state`` is the prefix's BN stats,
    ``data["image"]`` the training images on the device."""

    def step(state: TrainState, idx, data, frozen):
        images = jnp.take(data["image"], idx, axis=0)
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, stats), grads = jax.value_and_grad(refae_loss, has_aux=True)(
            state.params, state.model_state, frozen, images, rng, encoder=encoder, decoder=decoder)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, model_state=stats, opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())


@functools.lru_cache(maxsize=16)
def make_refae_apply(encoder: Encoder, decoder: nn.Module) -> Callable:
    """Jitted eval-mode reconstruction ``(params, stats, frozen, images) -> x̂``."""

    def apply(params, stats, frozen, images):
        code, _ = encoder(params["encoder"], stats, frozen, to_unit(images), train=False)
        return decoder.apply({"params": params["decoder"]}, code)

    return jax.jit(apply)
