"""A model handed over in Python (``run(cfg, workdir, model=..., variables=...)``) as a config value.

Every program takes its user model through ``cfg.model`` and :func:`jinterp.core.run.user_model_stage`, the
path of ``--model FILE.py:FACTORY``. A Python object cannot live in a config (``config.json`` records it), so
:func:`with_model` registers ``(model, variables)`` in this process under a label

    python:<module>.<Class>@<digest, 16 hex>

and puts the label in ``cfg.model``; :func:`jinterp.models.load_model` resolves it. The digest covers the model's
structure (the converted graph of a ``TorchGraph``, the module tree of a Linen/NNX/PyTorch module) and every
variable (path, dtype, shape, bytes), so the stage fingerprints that record ``cfg.model`` change with any
parameter: another model in the same work directory recomputes every stage instead of reusing stale ones, and the
same model reuses them, in this process or a later one.

Accepted ``model`` forms (``variables`` as noted):
  * a model under the backbone contract with its variables: from :func:`jinterp.models.from_torch`,
    :func:`~jinterp.models.from_linen`, :func:`~jinterp.models.from_nnx`, :func:`~jinterp.models.load_model`, or a
    jinterp backbone module (``jinterp.backbones.create``);
  * a Flax Linen module and its ``variables`` (or None: initialized on the data's image shape);
  * a Flax NNX module, or a ``torch.nn.Module`` (converted on the data's image shape), with ``variables=None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jinterp.errors import ConfigError, ModelError

PREFIX = "python:"
_given: dict[str, tuple[Any, Mapping | None]] = {}


def is_label(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def _is_torch_module(obj) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def is_contract_model(model) -> bool:
    """Whether ``model.apply(variables, x, train=False)`` already returns ``(logits, feats)``."""
    from jinterp.models.flax_adapters import LinenModel, NnxModel
    from jinterp.models.graph import TorchGraph

    return isinstance(model, (TorchGraph, LinenModel, NnxModel)) or type(model).__module__.startswith(
        "jinterp.backbones.")


def _structure(model) -> str:
    from jinterp.models.flax_adapters import LinenModel, NnxModel
    from jinterp.models.graph import TorchGraph

    if isinstance(model, TorchGraph):
        text = model.graph_json
    elif isinstance(model, LinenModel):
        text = f"{model.module!r} train_kwarg={model.train_kwarg}"
    elif isinstance(model, NnxModel):
        text = repr(model.graphdef)
    else:
        from flax import nnx

        text = repr(nnx.graphdef(model)) if isinstance(model, nnx.Module) else repr(model)
    return re.sub(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}", "", text)  # object addresses differ per process


def _arrays(model, variables) -> dict[str, np.ndarray]:
    from flax import traverse_util

    if variables is None and _is_torch_module(model):
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if variables is None:
        from flax import nnx

        if isinstance(model, nnx.Module):
            variables = nnx.to_pure_dict(nnx.state(model))
        else:
            return {}
    flat = traverse_util.flatten_dict(dict(variables)) if isinstance(variables, Mapping) else {}
    return {"/".join(map(str, k)): np.asarray(v) for k, v in flat.items()}


def digest(model, variables=None) -> str:
    """sha256 (16 hex) of the model's class, structure and every variable's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}\n{_structure(model)}\n".encode())
    for name, a in sorted(_arrays(model, variables).items()):
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _check(model, variables) -> None:
    import flax.linen as nn
    from flax import nnx

    if is_contract_model(model):
        if not isinstance(variables, Mapping):
            raise ModelError(f"a {type(model).__name__} comes with its variables: pass variables=... (the dict "
                             "from_torch/from_linen/from_nnx/load_model returned)")
        return
    if isinstance(model, nn.Module):
        if variables is not None and not isinstance(variables, Mapping):
            raise ModelError(f"variables of the Linen module {type(model).__name__} must be a dict "
                             f"({{'params': ...}}), got {type(variables).__name__}")
        return
    if isinstance(model, nnx.Module) or _is_torch_module(model):
        if variables is not None:
            raise ModelError(f"a {type(model).__name__} carries its own weights: pass variables=None (or convert it "
                             "first with jinterp.models.from_torch / from_nnx and pass the result)")
        return
    raise ModelError(f"model must be a torch.nn.Module, a Flax Linen or NNX module, or a converted jinterp model "
                     f"(from_torch/from_linen/from_nnx/load_model), got {type(model).__name__}")


def register(model, variables=None) -> str:
    """The label of ``(model, variables)`` (module docstring), registered for :func:`resolve`."""
    _check(model, variables)
    cls = type(model)
    label = f"{PREFIX}{cls.__module__}.{cls.__qualname__}@{digest(model, variables)}"
    _given[label] = (model, variables)
    return label


def resolve(label: str) -> tuple[Any, Mapping | None]:
    """``(model, variables)`` registered under ``label``; a ConfigError when this process has not seen it."""
    if label not in _given:
        raise ConfigError(f"model {label} was handed over in Python (run(cfg, workdir, model=..., variables=...)) "
                          "in another process; pass it again the same way, or give it as --model FILE.py:FACTORY")
    return _given[label]


def with_model(cfg, model=None, variables=None):
    """``cfg`` with ``cfg.model`` = the label of ``(model, variables)``; ``cfg`` itself when ``model`` is None.

    A config naming a model or weights of its own besides is a ConfigError (one model per run).
    """
    if model is None:
        if variables is not None:
            raise ConfigError("variables were given without a model: pass model=... with them")
        return cfg
    if getattr(cfg, "model", "") and not is_label(cfg.model):
        raise ConfigError(f"the config names model {cfg.model!r} and a model was passed too; set one of them "
                          "(cfg.model='' to use the one passed)")
    if getattr(cfg, "weights", ""):
        raise ConfigError(f"the config names weights {cfg.weights!r} but the model passed in Python carries its own; "
                          "set cfg.weights='' (or load them first: jinterp.models.load_model(spec, weights))")
    return dataclasses.replace(cfg, model=register(model, variables))
