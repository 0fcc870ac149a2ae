"""Any Flax model under the backbone contract: ``apply(variables, images_nhwc, train=False) -> (logits, feats)``.

* Linen (:func:`from_linen`): intermediates through ``capture_intermediates`` — every submodule's ``__call__``
  output — plus whatever the module ``sow``\\ s into ``"intermediates"``; names are module paths joined with ``.``
  (``block.conv``; a sown value ``block.my_name``). A module called twice gives ``name`` (the last call) and
  ``name#0``, ``name#1``….
* NNX (:func:`from_nnx`): ``nnx.split`` into ``params`` (``nnx.Param``), ``batch_stats`` (``nnx.BatchStat``) and
  ``nnx_state`` (the rest: RNG counters…), ``nnx.merge`` on every call; intermediates through ``nnx.capture`` with
  every method's output recorded, same naming.

In both, ``logits`` is the module's output (its first element when it returns a tuple), and the root module's
own output is not in ``feats``. ``apply(..., edits={name: fn})`` replaces the output of the submodule ``name``
(a ``feats`` name; ``name#i`` for its i-th call only) by ``fn(output)`` for everything downstream, as
``TorchGraph``'s ``edits`` do (a method's gate, a reconstruction fed back); ``feats`` then holds the edited value.
Linen through ``nn.intercept_methods``; NNX by giving the named submodule (in the copy merged for this call) a
subclass whose ``__call__`` applies the edit. Sown values cannot be edited (they are not module outputs).
``train`` reaches the module as its ``train=`` or ``deterministic=`` argument
(Linen, when its ``__call__`` has one) or through ``.train()``/``.eval()`` (NNX).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from jinterp.errors import ModelError, ShapeError


def _feats_from_intermediates(tree: Mapping) -> dict[str, jax.Array]:
    feats: dict[str, jax.Array] = {}
    for path, value in traverse_util.flatten_dict(dict(tree)).items():
        names = [str(p) for p in path if p != "__call__"]
        if not names:
            continue  # the root's own output is the logits
        name = ".".join(names)
        calls = [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, jax.Array)]
        if not calls:
            continue
        if len(calls) > 1:
            for i, v in enumerate(calls):
                feats[f"{name}#{i}"] = v
        feats[name] = calls[-1]
    return feats


class _Editor:
    """Applies ``edits`` to module outputs by name, counting calls for ``name#i``; records which keys hit."""

    def __init__(self, edits: Mapping[str, Any]):
        self.edits, self.calls, self.hit = dict(edits), {}, set()

    def __call__(self, name: str, out):
        i = self.calls.get(name, 0)
        self.calls[name] = i + 1
        key = name if name in self.edits else f"{name}#{i}" if f"{name}#{i}" in self.edits else None
        if key is None:
            return out
        if not isinstance(out, jax.Array):
            raise ModelError(f"layer {key!r} outputs a {type(out).__name__}, not an array; edit a layer whose output "
                             "is one array")
        new = jax.numpy.asarray(self.edits[key](out), out.dtype)
        if tuple(new.shape) != tuple(out.shape):
            raise ShapeError(f"the replacement of layer {key!r} has shape {tuple(new.shape)} but the layer outputs "
                             f"{tuple(out.shape)}")
        self.hit.add(key)
        return new

    def check_all_hit(self, known) -> None:
        missed = sorted(set(self.edits) - self.hit)
        if missed:
            from jinterp.backbones import registry

            registry.check_layers(tuple(known), missed)  # an unknown name: LayerError with the nearest match
            raise ModelError(f"edits of {', '.join(missed)} reached no module output (a sown value cannot be "
                             "edited); edit the module that computes it")


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _train_kwarg(module: nn.Module) -> str | None:
    params = inspect.signature(type(module).__call__).parameters
    for name in ("train", "training", "deterministic", "is_training"):
        if name in params:
            return name
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class LinenModel:
    """A Linen module wrapped to return ``(logits, feats)``; see the module docstring."""

    module: nn.Module
    train_kwarg: str | None = None

    def _kw(self, train: bool) -> dict:
        if self.train_kwarg is None:
            return {}
        return {self.train_kwarg: (not train) if self.train_kwarg == "deterministic" else train}

    def init(self, rngs, x, train: bool = False) -> dict:
        variables = self.module.init(rngs, x, **self._kw(train))
        return {k: v for k, v in dict(variables).items() if k != "intermediates"}

    def apply(self, variables: Mapping, x, train: bool = False, mutable=False, rngs=None,
              edits: Mapping[str, Any] | None = None):
        variables = {k: v for k, v in dict(variables).items() if k != "intermediates"}
        extra = [] if mutable is False else ([mutable] if isinstance(mutable, str) else list(mutable))

        def run():
            return self.module.apply(variables, x, capture_intermediates=True, mutable=["intermediates", *extra],
                                     rngs=rngs, **self._kw(train))

        if edits:
            editor = _Editor(edits)

            def interceptor(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                path = context.module.path if context.method_name == "__call__" else ()
                return editor(".".join(map(str, path)), out) if path else out

            with nn.intercept_methods(interceptor):
                out, state = run()
        else:
            out, state = run()
        state = dict(state)
        result = (_logits(out), _feats_from_intermediates(state.pop("intermediates", {})))
        if edits:
            editor.check_all_hit(result[1])
        return (result, state) if extra else result


def from_linen(module: nn.Module, example_input=None, variables: Mapping | None = None, key=None):
    """``(model, variables)`` for a Linen ``module``: its given ``variables``, or fresh ones from ``init`` on
    ``example_input`` ``(N, H, W, C)`` with ``key`` (default ``jax.random.key(0)``)."""
    if not isinstance(module, nn.Module):
        raise ModelError(f"from_linen expects a flax.linen.Module, got {type(module).__name__}")
    model = LinenModel(module, _train_kwarg(module))
    if variables is None:
        if example_input is None:
            raise ModelError("from_linen needs variables or an example_input (N, H, W, C) to initialize them")
        variables = model.init(key if key is not None else jax.random.key(0), example_input)
    return model, {k: v for k, v in dict(variables).items() if k != "intermediates"}


@dataclasses.dataclass(frozen=True, eq=False)
class NnxModel:
    """An NNX module as ``graphdef`` + the templates of its states; see the module docstring."""

    graphdef: Any
    templates: tuple  # (params, batch_stats, rest) nnx.State objects: the structure to fill in

    def _merge(self, variables: Mapping):
        from flax import nnx

        states = []
        for template, col in zip(self.templates, ("params", "batch_stats", "nnx_state"), strict=True):
            state = jax.tree.map(lambda t: t, template)  # a fresh copy: replace_by_pure_dict writes in place
            if col in variables:
                nnx.replace_by_pure_dict(state, variables[col])
            states.append(state)
        return nnx.merge(self.graphdef, *states)

    def init(self, rngs=None, x=None, train: bool = False) -> dict:
        from flax import nnx

        return {col: nnx.to_pure_dict(s) for col, s in zip(("params", "batch_stats", "nnx_state"), self.templates,
                                                             strict=True)}

    def apply(self, variables: Mapping, x, train: bool = False, mutable=False, rngs=None,
              edits: Mapping[str, Any] | None = None):
        from flax import nnx

        model = self._merge(variables)
        model.train() if train else model.eval()
        if rngs and "dropout" in rngs:
            nnx.reseed(model, dropout=rngs["dropout"])
        if edits:
            editor = _Editor(edits)
            wanted = {k.split("#")[0] for k in edits}
            for path, sub in nnx.iter_modules(model):
                name = ".".join(map(str, path))
                if path and name in wanted:  # this call's merged copy only: its class gets an editing __call__
                    object.__setattr__(sub, "__class__", _editing_class(type(sub), name, editor))
        out, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        result = (_logits(out), _feats_from_intermediates(nnx.to_pure_dict(inter)))
        if edits:
            editor.check_all_hit(result[1])
        if mutable is False:
            return result
        _, _, stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        return result, {"batch_stats": nnx.to_pure_dict(stats)}


def _editing_class(cls: type, name: str, editor: _Editor) -> type:
    def __call__(self, *args, **kwargs):
        return editor(name, cls.__call__(self, *args, **kwargs))

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def from_nnx(module) -> tuple[NnxModel, dict]:
    """``(model, variables)`` for an NNX module: ``variables`` = ``{"params", "batch_stats", "nnx_state"}`` as
    plain dicts (``nnx.to_pure_dict``)."""
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise ModelError(f"from_nnx expects a flax.nnx.Module, got {type(module).__name__}")
    graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    model = NnxModel(graphdef, (params, stats, rest))
    return model, model.init()
