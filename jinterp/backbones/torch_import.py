"""PyTorch state_dict → Flax variables, and a torch-free ``.npz`` format for converted variables.

The name map of an architecture is derived from its Flax variable tree with one rule, so it cannot drift from
the modules: a module path component ``name_<i>`` is PyTorch's ``name.<i>`` (Sequential/ModuleList children),
every other component is kept (``layer1_0/downsample_1`` ↔ ``layer1.0.downsample.1``). Leaves:

====================================  ==========================  ==========================================
Flax                                  PyTorch                     transform
====================================  ==========================  ==========================================
``params/…/kernel`` (4-D, conv)       ``….weight`` (O, I, kH, kW)  ``transpose(2, 3, 1, 0)`` → (kH, kW, I, O)
``params/…/kernel`` (2-D, linear)     ``….weight`` (out, in)       ``.T`` → (in, out)
``params/…/bias``                     ``….bias``                   —
``params/…/scale`` (BatchNorm)        ``….weight``                 —
``batch_stats/…/mean``, ``…/var``     ``….running_mean``, ``….running_var``  —
(ignored)                             ``….num_batches_tracked``
====================================  ==========================  ==========================================

``name_map(arch)`` returns the full explicit map (tested against the real ResNet-20 keys and the PyTorch
reference modules in ``tests/backbones``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jinterp.backbones import registry
from jinterp.errors import ConfigError, MissingFileError, WeightsError

FORMAT = "jinterp.variables/1"
_META_KEY = "__meta__"
_INDEXED = re.compile(r"^(.*)_(\d+)$")


def _torch_module_path(flax_path: tuple[str, ...]) -> str:
    parts = []
    for p in flax_path:
        m = _INDEXED.match(p)
        parts.extend(m.groups() if m else (p,))
    return ".".join(parts)


def _torch_leaf(collection: str, leaf: str) -> str:
    table = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
             ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
    try:
        return table[(collection, leaf)]
    except KeyError:
        raise WeightsError(f"no PyTorch name for Flax variable {collection}/{leaf}") from None


def _to_flax(arr: np.ndarray, flax_ndim: int) -> np.ndarray:
    if flax_ndim == 4:
        return arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if flax_ndim == 2:
        return arr.T  # Linear (out, in) -> (in, out)
    return arr


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if len(flax_shape) == 2:
        return flax_shape[::-1]
    return tuple(flax_shape)


def name_map(arch: str, image_shape=None, **create_kwargs) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """``{torch_key: (flax_path, torch_shape)}`` for ``arch``; ``flax_path`` starts with the collection."""
    model = registry.create(arch, **create_kwargs)
    shapes = registry.variable_shapes(model, image_shape or registry.default_input_shape(arch))
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        collection, *modules, name = path
        key = f"{_torch_module_path(tuple(modules))}.{_torch_leaf(collection, name)}"
        out[key] = (path, _torch_shape(tuple(leaf.shape)))
    return out


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; no torch import needed
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_state_dict(state_dict_or_path) -> dict[str, np.ndarray]:
    """Read a checkpoint file or take a dict; unwrap ``{"state_dict": …}``, strip ``module.``.

    Files go through :func:`jinterp.models.weights.read_state_dict` (``torch.load(weights_only=True)`` only;
    safetensors; plain npz). Returns numpy arrays; ``num_batches_tracked`` entries are dropped.
    """
    from jinterp.models import weights

    src = state_dict_or_path
    if isinstance(src, (str, os.PathLike)):
        return weights.read_state_dict(src)
    if not isinstance(src, Mapping):
        if hasattr(src, "state_dict"):  # an nn.Module
            src = src.state_dict()
        else:
            raise WeightsError(f"expected a state_dict (a mapping of name -> tensor), got {type(src).__name__}")
    return weights._unwrap(src, "the state_dict")


def _nearest(key: str, candidates: list[str]) -> str:
    """``key``, with the closest unexpected key when one looks like a renamed version of it."""
    import difflib

    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, [c for c in candidates if c.rsplit(".", 1)[-1] == leaf], n=1, cutoff=0.8)
    return f"{key} (found {close[0]}?)" if close else key


def _preview(items: list[str], limit: int = 8) -> str:
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def from_torch(arch: str, state_dict_or_path, image_shape=None, source: str | None = None, **create_kwargs) -> dict:
    """Convert PyTorch weights of ``arch`` into Flax ``{"params": …, "batch_stats": …}``.

    Args:
      arch: a name in ``jinterp.backbones.ARCHS``.
      state_dict_or_path: a ``.pth``/``.th``/``.safetensors`` path (read with ``torch.load(…,
        weights_only=True)``), a state_dict of tensors, or a dict of numpy arrays.
      source: how to name the weights in error messages (default: the path, or "the state_dict").
      image_shape: ``(H, W, C)`` the model will see; default: the arch's, with C taken from the checkpoint.
      **create_kwargs: as for ``backbones.create``; ``num_classes`` defaults to the checkpoint's.

    Raises ``WeightsError`` listing missing, unexpected and shape-mismatched keys when the weights do not
    belong to ``arch``; ``MissingFileError`` for a missing path.
    """
    registry.spec(arch)
    sd = load_state_dict(state_dict_or_path)
    if "num_classes" not in create_kwargs:
        create_kwargs["num_classes"] = _num_classes_from(arch, sd)
    image_shape = image_shape or _image_shape_from(arch, sd)
    mapping = name_map(arch, image_shape, **create_kwargs)

    missing = sorted(k for k in mapping if k not in sd)
    unexpected = [k for k in sd if k not in mapping]
    mismatched = [f"{k} {tuple(sd[k].shape)} (expected {mapping[k][1]})"
                  for k in mapping if k in sd and tuple(sd[k].shape) != mapping[k][1]]
    if missing or unexpected or mismatched:
        src = source or (state_dict_or_path if isinstance(state_dict_or_path, (str, os.PathLike))
                         else "the state_dict")
        args = {k: v for k, v in create_kwargs.items() if v is not None}
        parts = [f"{src} does not match {arch} (arguments {args}, image_shape {tuple(image_shape)}):"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_preview([_nearest(k, unexpected) for k in missing])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_preview(mismatched)}")
        fix = (f"Check the arch name (valid: {', '.join(registry.ARCHS)}) and num_classes; a checkpoint "
               "of another network needs --model FILE.py:FACTORY instead of --arch.")
        raise WeightsError(f"{parts[0]} {'; '.join(parts[1:])}. {fix}")

    flat = {}
    for key, (path, _) in mapping.items():
        arr = np.asarray(sd[key], np.float32)  # a view when already float32: one copy in all, below
        flat[path] = jnp.asarray(_to_flax(arr, arr.ndim))
    return traverse_util.unflatten_dict(flat)


def to_state_dict(arch: str, variables: Mapping, image_shape=None, **create_kwargs) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_torch`: Flax variables → PyTorch-layout numpy state_dict.

    ``{k: torch.from_numpy(v) for k, v in out.items()}`` loads into the PyTorch module with ``strict=True``
    (``num_batches_tracked`` aside). ``num_classes`` and input channels are read from ``variables``.
    """
    flat = traverse_util.flatten_dict(dict(variables))
    out = {}
    for path, value in flat.items():
        collection, *modules, name = path
        key = f"{_torch_module_path(tuple(modules))}.{_torch_leaf(collection, name)}"
        arr = np.asarray(value, np.float32)
        out[key] = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else (arr.T if arr.ndim == 2 else arr)
    expected = name_map(arch, image_shape or _image_shape_from(arch, out),
                        **{"num_classes": _num_classes_from(arch, out), **create_kwargs})
    if set(expected) != set(out):
        raise WeightsError(f"variables do not match {arch}: missing {sorted(set(expected) - set(out))[:20]}, "
                           f"unexpected {sorted(set(out) - set(expected))[:20]}")
    return out


def _image_shape_from(arch: str, sd: Mapping) -> tuple[int, int, int]:
    h, w, c = registry.default_input_shape(arch)
    first = sd.get(registry.spec(arch).first_conv)
    return (h, w, int(first.shape[1]) if first is not None and first.ndim == 4 else c)


def _num_classes_from(arch: str, sd: Mapping) -> int | None:
    head = sd.get(registry.spec(arch).head)
    return int(head.shape[0]) if head is not None and head.ndim == 1 else None


# --------------------------------------------------------------------------------------------------------------
# Torch-free storage of converted variables.


def save_variables(path, variables: Mapping, meta: Mapping) -> Path:
    """Write ``variables`` to an ``.npz`` (keys ``params/layer1_0/conv1/kernel``…) plus a JSON meta entry.

    ``meta`` must name the ``arch``; everything in it must be JSON-serializable (e.g. num_classes,
    image_shape, source file, normalization). The file is written to a temporary name and renamed, so an
    interrupted save never leaves a half-written file under ``path``.
    """
    meta = dict(meta)
    if "arch" not in meta:
        raise ConfigError("save_variables: meta must contain 'arch' (e.g. {'arch': 'resnet20'})")
    registry.spec(meta["arch"])
    meta.setdefault("format", FORMAT)
    meta.setdefault("normalization", registry.NORMALIZATION[meta["arch"]])
    return write_npz_with_meta(path, variables, meta, who="save_variables")


def write_npz_with_meta(path, variables: Mapping, meta: Mapping, *, who: str) -> Path:
    """Variables (flattened to ``a/b/c`` keys) plus JSON ``meta`` under ``__meta__`` in one ``.npz``, written
    atomically (a temporary name, then a rename); shared by :func:`save_variables` and ``models.save_model``."""
    try:
        meta_json = json.dumps(meta)
    except TypeError as e:
        raise ConfigError(f"{who}: meta is not JSON-serializable: {e}") from None
    arrays = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    if _META_KEY in arrays:
        raise ConfigError(f"{who}: {_META_KEY!r} is reserved")
    arrays[_META_KEY] = np.frombuffer(meta_json.encode(), np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_variables(path, arch: str | None = None) -> tuple[dict, dict]:
    """``(variables, meta)`` from any weights file every program accepts as ``--weights``.

    A file written by :func:`save_variables` is read as is; PyTorch ``.pth/.pt/.th`` state dicts, ``.safetensors``
    and plain ``.npz`` state dicts are converted for ``arch`` once and cached (see :mod:`jinterp.models.weights`).
    With ``arch``, also checks the file belongs to that architecture. Raises ``MissingFileError`` when absent and
    ``WeightsError`` (naming the file and the fix) for a directory, a corrupt file, or weights of another network.
    """
    from jinterp.models import serialize, weights

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"variables file not found: {path}")
    if weights.detect_format(path) != "npz":
        return weights.load_weights(path, arch)
    arrays = serialize.read_npz(path)
    if _META_KEY not in arrays:
        return weights.load_weights(path, arch)
    return read_jinterp_npz(path, arrays, arch)


def read_jinterp_npz(path, arrays: dict, arch: str | None) -> tuple[dict, dict]:
    """``(variables, meta)`` from the arrays of a :func:`save_variables` file (``__meta__`` included)."""
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: unreadable meta entry: {e}") from None
    if meta.get("format") == "jinterp.model/1":
        raise WeightsError(f"{path} is a converted model (jinterp.models.save_model), not weights of a built-in "
                           "arch; load it with jinterp.models.load_model(path)")
    if arch is not None and meta.get("arch") != arch:
        raise WeightsError(f"{path} holds variables for {meta.get('arch')!r}, not {arch!r}")
    variables = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in arrays.items()})
    return variables, meta
