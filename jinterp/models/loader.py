"""``load_model(spec, weights)``: a built-in arch, a saved converted model, or ``FILE.py:FACTORY``, as
``(model, variables, info)`` under the backbone contract; ``check_layers`` validates user-given layer names.

``spec`` forms:
  * a name in ``jinterp.backbones.ARCHS`` (``resnet20``): weights through the one loader (``.pth/.pt/.th``,
    ``.safetensors``, ``.npz``; converted once and cached), or a random PyTorch-style init when ``weights`` is None.
  * a ``.npz`` written by :func:`jinterp.models.save_model` (a converted PyTorch model; no PyTorch needed).
  * ``python:<Class>@<digest>``: a model passed in Python (:mod:`jinterp.models.given`), in any form a factory
    may return or already converted (``from_torch``/``from_linen``/``from_nnx``), with its variables.
  * ``FILE.py:FACTORY``: the file is imported by path and ``FACTORY(**factory_kwargs)`` called; it returns a
    ``torch.nn.Module`` (converted with :func:`from_torch` on a zero input of ``image_shape``; ``weights`` a state
    dict file loaded into it first), a Flax Linen module, an NNX module, or ``(linen_module, variables)``
    (``weights``: an ``.npz`` of arrays keyed by variable path, ``params/Conv_0/kernel``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp.errors import ConfigError, MissingFileError, ModelError, ShapeError, WeightsError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a program needs to know about a loaded model.

    Attributes:
      layer_names: the keys of ``feats`` in forward order (module paths).
      num_classes: the logits' last dimension.
      image_shape: ``(H, W, C)`` the model was built/checked for.
      normalization: a ``jinterp.data.NORMALIZATIONS`` preset for built-in archs; None for user models (their
        input is whatever the user's data pipeline gives).
      kind: ``"builtin"``, ``"torch"``, ``"linen"``, ``"nnx"`` or ``"saved"``.
      source: the spec (and weights file) it came from.
    """

    layer_names: tuple[str, ...]
    num_classes: int
    image_shape: tuple[int, int, int]
    normalization: str | None
    kind: str
    source: str


def _forward_layer_names(model, variables, image_shape) -> tuple[tuple[str, ...], int]:
    order: list[str] = []
    n_classes: list[int] = []

    def run(v, x):
        logits, feats = model.apply(v, x, train=False)
        order.extend(feats)  # traced once: the forward order (a pytree output would sort the keys)
        n_classes.append(int(logits.shape[-1]))
        return 0

    try:
        jax.eval_shape(run, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    except (ShapeError, ModelError):
        raise
    except Exception as e:  # noqa: BLE001 - a user model's own shape errors, e.g. Flax's ScopeParamShapeError
        raise ShapeError(f"the model does not run on images of shape (N, {', '.join(map(str, image_shape))}): "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    return tuple(order), n_classes[0]


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ShapeError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape!r}")
    return shape


def load_model(spec: str, weights=None, image_shape=None, num_classes: int | None = None, key=None,
               factory_kwargs: Mapping | None = None) -> tuple[Any, dict, ModelInfo]:
    """``(model, variables, info)`` for ``spec`` (see the module docstring).

    Args:
      spec: an arch name, a saved converted model ``.npz``, or ``FILE.py:FACTORY``.
      weights: a weights file (or None: the built-in arch's random init / the factory's own weights).
      image_shape: ``(H, W, C)``; needed for PyTorch factories and Linen modules without variables; defaults to
        the arch's (built-in) or the saved one.
      num_classes: built-in archs without weights only.
      key: PRNG key for random inits (default ``jax.random.key(0)``).
      factory_kwargs: keyword arguments for ``FACTORY``.
    """
    from jinterp.backbones import registry

    key = key if key is not None else jax.random.key(0)
    spec = str(spec)
    if spec in registry.ARCHS:
        return _builtin(spec, weights, image_shape, num_classes, key)
    from jinterp.models import given

    if given.is_label(spec):  # a model passed in Python: run(cfg, workdir, model=..., variables=...)
        built, variables = given.resolve(spec)
        return _from_built(built, variables, weights, image_shape, key, spec, "the model passed")
    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        file, factory = spec.rsplit(":", 1)
        return _from_factory(Path(file), factory, weights, image_shape, key, dict(factory_kwargs or {}), spec)
    if spec.endswith(".npz"):
        from jinterp.models.serialize import load_saved_model

        model, variables, meta = load_saved_model(spec)
        shape = _check_image_shape(image_shape or meta.get("image_shape"))
        names, n = _forward_layer_names(model, variables, shape)
        return model, variables, ModelInfo(names, n, shape, meta.get("normalization"), "saved", spec)
    close = difflib.get_close_matches(spec, registry.ARCHS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown model {spec!r}{hint}: give a built-in arch ({', '.join(registry.ARCHS)}), "
                      "FILE.py:FACTORY (a function returning a torch.nn.Module or a Flax module) or a model .npz "
                      "saved by jinterp.models.save_model")


def _builtin(arch, weights, image_shape, num_classes, key):
    from jinterp.backbones import registry, torch_import

    if weights is not None:
        variables, meta = torch_import.load_variables(weights, arch)
        variables = dict(variables)
        model = registry.create(arch, meta.get("num_classes") or num_classes,
                                **registry.arch_kwargs_from(arch, variables))
        shape = _check_image_shape(image_shape or meta.get("image_shape") or registry.default_input_shape(arch))
        source = f"{arch} + {weights}"
    else:
        model = registry.create(arch, num_classes)
        shape = _check_image_shape(image_shape or registry.default_input_shape(arch))
        variables = registry.init(model, key, shape)
        source = f"{arch} (random init)"
    names, n = _forward_layer_names(model, variables, shape)
    return model, variables, ModelInfo(names, n, shape, registry.NORMALIZATION[arch], "builtin", source)


def _import_file(file: Path):
    if not file.is_file():
        raise MissingFileError(f"model file not found: {file}")
    name = "jinterp_user_model_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: report it in one line
        del sys.modules[name]
        raise ModelError(f"importing {file} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         "; fix the file (python " + str(file) + " runs it alone)") from None
    return module


def _is_torch_module(obj) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def _from_factory(file: Path, factory: str, weights, image_shape, key, factory_kwargs, source):
    module = _import_file(file)
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        close = difflib.get_close_matches(factory, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelError(f"{file} has no function {factory!r}.{hint} Functions defined there: "
                         f"{', '.join(names) or 'none'}")
    try:
        built = fn(**factory_kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{file}:{factory}() raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    given_vars = None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], Mapping):
        built, given_vars = built
    return _from_built(built, given_vars, weights, image_shape, key, source, f"{file}:{factory}()")


def _from_built(built, given_vars, weights, image_shape, key, source, where):
    """A factory's result or a model passed in Python (``jinterp.models.given``) under the backbone contract."""
    import flax.linen as nn
    from flax import nnx

    from jinterp.models.given import is_contract_model

    if _is_torch_module(built):
        return _torch_factory(built, weights, image_shape, source)
    if is_contract_model(built):  # converted already (from_torch/from_linen/from_nnx) or a jinterp backbone
        from jinterp.models.flax_adapters import NnxModel
        from jinterp.models.graph import TorchGraph

        if given_vars is None:
            raise ModelError(f"{where} gave a converted {type(built).__name__} without its variables; give "
                             "(model, variables) as from_torch/from_linen/from_nnx return them")
        model, variables = built, dict(given_vars)
        kind = "torch" if isinstance(built, TorchGraph) else "nnx" if isinstance(built, NnxModel) else "linen"
    elif isinstance(built, nn.Module):
        from jinterp.models.flax_adapters import from_linen

        if given_vars is None and image_shape is None:
            raise ShapeError(f"{source} builds a Linen module: give image_shape (H, W, C) to initialize it")
        shape = _check_image_shape(image_shape) if image_shape is not None else None
        model, variables = from_linen(built, None if shape is None else jnp.zeros((1, *shape)), given_vars, key)
        kind = "linen"
    elif isinstance(built, nnx.Module):
        from jinterp.models.flax_adapters import from_nnx

        model, variables = from_nnx(built)
        kind = "nnx"
    else:
        raise ModelError(f"{where} returned a {type(built).__name__}; return a torch.nn.Module, a Flax "
                         "Linen or NNX module, or (linen_module, variables)")
    if weights is not None:
        variables = fill_variables(variables, weights)
    if image_shape is None:
        raise ShapeError(f"{source}: give image_shape (H, W, C), the images the model takes")
    shape = _check_image_shape(image_shape)
    names, n = _forward_layer_names(model, variables, shape)
    return model, variables, ModelInfo(names, n, shape, None, kind, source)


def _torch_factory(module, weights, image_shape, source):
    from jinterp.models.torch_fx import example_input_for, from_torch
    from jinterp.models.weights import read_state_dict

    if image_shape is None:
        raise ShapeError(f"{source} builds a PyTorch model: give image_shape (H, W, C) to trace it with")
    shape = _check_image_shape(image_shape)
    if weights is not None:
        import torch

        sd = read_state_dict(weights)
        own = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}
        missing = sorted(own - set(sd))
        unexpected = sorted(set(sd) - own)
        ref = module.state_dict()
        mismatched = [f"{k} {tuple(sd[k].shape)} (expected {tuple(ref[k].shape)})" for k in sorted(own & set(sd))
                      if tuple(sd[k].shape) != tuple(ref[k].shape)]
        if missing or unexpected or mismatched:
            raise WeightsError(_mismatch_message(weights, source, missing, unexpected, mismatched))
        module.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()}, strict=False)
        source = f"{source} + {weights}"
    model, variables = from_torch(module, example_input_for(shape))
    names, n = _forward_layer_names(model, variables, shape)
    return model, variables, ModelInfo(names, n, shape, None, "torch", source)


_TORCH_FIX = ("Give the checkpoint saved from this model (torch.save(model.state_dict(), path)) or fix the "
              "factory's arguments (e.g. num_classes)")
_FLAX_FIX = ("Give the variables saved from this model, or fix the factory's arguments and image_shape (the input "
             "channels fix the first kernel)")


def _mismatch_message(weights, source, missing, unexpected, mismatched, fix: str = _TORCH_FIX) -> str:
    parts = []
    if missing:
        shown = []
        for k in missing[:4]:
            close = difflib.get_close_matches(k, unexpected, n=1, cutoff=0.6)
            shown.append(f"{k} (found {close[0]}?)" if close else k)
        parts.append(f"missing keys ({len(missing)}): {', '.join(shown)}{'…' if len(missing) > 4 else ''}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:4])}"
                     f"{'…' if len(unexpected) > 4 else ''}")
    if mismatched:
        parts.append(f"shape mismatches ({len(mismatched)}): {', '.join(mismatched[:4])}")
    return f"{weights} does not fit {source}: {'; '.join(parts)}. {fix}"


def fill_variables(template: Mapping, weights) -> dict:
    """``template`` with every leaf replaced by the array of the same path (``params/Conv_0/kernel``) in the
    ``.npz`` ``weights``; a one-line ``WeightsError`` for missing/unexpected/mis-shaped entries."""
    from jinterp.models.serialize import META_KEY, read_npz

    if not str(weights).endswith(".npz"):
        raise WeightsError(f"{weights}: a Flax model takes an .npz of its variables (keys like params/Conv_0/kernel; "
                           "numpy.savez of flax.traverse_util.flatten_dict(variables, sep='/'))")
    arrays = {k: v for k, v in read_npz(weights).items() if k != META_KEY}
    flat = traverse_util.flatten_dict(dict(template))
    by_name = {"/".join(str(p) for p in k): k for k in flat}
    missing = sorted(set(by_name) - set(arrays))
    unexpected = sorted(set(arrays) - set(by_name))
    mismatched = [f"{n} {arrays[n].shape} (expected {tuple(np.shape(flat[by_name[n]]))})"
                  for n in sorted(set(by_name) & set(arrays)) if arrays[n].shape != tuple(np.shape(flat[by_name[n]]))]
    if missing or unexpected or mismatched:
        raise WeightsError(_mismatch_message(weights, "this Flax model", missing, unexpected, mismatched,
                                             _FLAX_FIX))
    return traverse_util.unflatten_dict({by_name[n]: jnp.asarray(a) for n, a in arrays.items()})


def takes_edits(model) -> bool:
    """Whether ``model.apply(..., edits={layer: fn})`` replaces a layer's output downstream (converted PyTorch,
    Linen and NNX models); the explainer's feedback and CSG's gate on a user model need it."""
    from jinterp.models.flax_adapters import LinenModel, NnxModel
    from jinterp.models.graph import TorchGraph

    return isinstance(model, (TorchGraph, LinenModel, NnxModel))


def check_layers(info_or_names: ModelInfo | Iterable[str], layers: str | Iterable[str]) -> tuple[str, ...]:
    """Validate user-given layer names against a model's ``info.layer_names`` (or a list of names).

    Returns the names as a tuple; raises ``LayerError`` naming the nearest valid name (difflib) and listing the
    valid ones.
    """
    from jinterp.backbones import registry

    names = info_or_names.layer_names if isinstance(info_or_names, ModelInfo) else tuple(info_or_names)
    return registry.check_layers(names, layers)
