"""A converted PyTorch graph as a Linen module: :class:`TorchGraph` (torch-free; ``torch_fx`` builds its graph).

The graph is a JSON string (so the module is hashable, and a converted model saves to one file and reloads without
PyTorch). It holds the ``torch.fx`` nodes in execution order::

    {"format": "jinterp.torchgraph/1",
     "input": "x",                                      # the placeholder's node name
     "nodes": [{"name": "layer1_0_conv1", "op": "module", "target": "layer1.0.conv1",
                "args": [...], "kwargs": {...}, "aliases": ["layer1.0"]}, ...],
     "layers": {"layer1.0.conv1": {"kind": "conv2d", ...config...}, ...},
     "output": <encoded value>}

``op`` is ``module`` (a leaf ``nn.Module`` call; ``target`` its module path), ``function`` / ``method``
(``target`` the function or method name, e.g. ``add``, ``flatten``, ``view``) or ``attr`` (a parameter or buffer
read with ``get_attr``). Arguments encode node references as ``{"$ref": name}``, tuples as ``{"$tuple": [...]}``,
slices as ``{"$slice": [start, stop, step]}``.

Layouts. PyTorch's CNN tensors are NCHW; jinterp computes NHWC. Every 4-D tensor whose producer is layout-aware
(conv, batch norm, pooling, elementwise ops, ``cat``, ``interpolate``) is kept NHWC; ops whose meaning depends on
the memory order (``view``/``reshape``/``flatten``/``permute``/``transpose``/indexing/``linear`` on 4-D…) first
convert to PyTorch's order, so the result equals PyTorch's element for element. A 4-D tensor in PyTorch order is
converted back to NHWC when an NHWC op needs it.

Parameters mirror the PyTorch state dict: ``params[module_path]`` holds ``kernel``/``bias`` (conv: HWIO, linear:
``(in, out)``, transposed conv: ``(kh, kw, in, out)``) or ``scale``/``bias`` (batch norm, whose running stats are
``batch_stats[module_path]["mean"/"var"]``); a parameter used directly (``get_attr``) is ``params[dotted_name]``
as stored in PyTorch, a buffer ``constants[dotted_name]``. The layers are :mod:`jinterp.nn`'s, so the CPU fast
paths apply.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jinterp import nn as jnn
from jinterp.errors import ModelError, ShapeError

FORMAT = "jinterp.torchgraph/1"

_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)  # also: NHWC axis j holds torch dim _TO_NHWC[j]
_NHWC_AXIS_OF_TORCH_DIM = (0, 3, 1, 2)  # torch dim d of an NCHW tensor is NHWC axis [d]


class _T:
    """A tensor value: the array and whether it is held NHWC (a 4-D NCHW tensor of PyTorch, transposed)."""

    __slots__ = ("a", "nhwc")

    def __init__(self, a: jax.Array, nhwc: bool = False):
        self.a, self.nhwc = a, nhwc

    @property
    def torch(self) -> jax.Array:
        return jnp.transpose(self.a, _TO_NCHW) if self.nhwc else self.a

    @property
    def as_nhwc(self) -> jax.Array:
        if self.nhwc:
            return self.a
        if self.a.ndim != 4:
            raise ModelError(f"expected a 4-D (N, C, H, W) tensor, got shape {self.a.shape}")
        return jnp.transpose(self.a, _TO_NHWC)

    @property
    def shape(self) -> tuple[int, ...]:
        s = self.a.shape
        return (s[0], s[3], s[1], s[2]) if self.nhwc else tuple(s)

    def feature(self) -> jax.Array:
        """What ``feats`` holds: NHWC for 4-D tensors, PyTorch's layout otherwise."""
        return self.as_nhwc if len(self.shape) == 4 else self.a


# ------------------------------------------------------------------------------------------------ decoding
class _Ref(str):
    """A reference to another node's value."""


def decode(obj):
    """JSON argument encoding -> Python values (``_Ref`` for node references)."""
    if isinstance(obj, list):
        return [decode(o) for o in obj]
    if isinstance(obj, dict):
        if "$ref" in obj:
            return _Ref(obj["$ref"])
        if "$tuple" in obj:
            return tuple(decode(o) for o in obj["$tuple"])
        if "$slice" in obj:
            return slice(*obj["$slice"])
        if "$ellipsis" in obj:
            return Ellipsis
        if "$dtype" in obj:
            return jnp.dtype(obj["$dtype"])
        return {k: decode(v) for k, v in obj.items()}
    return obj


@functools.lru_cache(maxsize=64)
def parse_graph(graph_json: str) -> dict:
    g = json.loads(graph_json)
    if g.get("format") != FORMAT:
        raise ModelError(f"not a jinterp converted graph (format {g.get('format')!r}, expected {FORMAT!r})")
    nodes = tuple((n["name"], n["op"], n["target"], decode(n["args"]), decode(n["kwargs"]),
                   tuple(n.get("aliases", ()))) for n in g["nodes"])
    calls: dict[str, int] = {}
    for n in g["nodes"]:
        if n["op"] == "module":
            calls[n["target"]] = calls.get(n["target"], 0) + 1
    return {"input": g["input"], "nodes": nodes, "layers": g["layers"], "output": decode(g["output"]),
            "input_channels": g.get("input_channels"), "shared": {t for t, c in calls.items() if c > 1}}


# ------------------------------------------------------------------------------------------------ helpers
def _pair(v):
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(u) for u in v)


def _same_layout(values: list) -> tuple[list, bool]:
    """Bring tensor operands of a broadcasting op to one layout: NHWC if any is NHWC (others padded to 4-D
    PyTorch-style and transposed), else PyTorch's. Non-tensors pass through."""
    if not any(isinstance(v, _T) and v.nhwc for v in values):
        return [v.a if isinstance(v, _T) else v for v in values], False
    out = []
    for v in values:
        if isinstance(v, _T):
            if v.nhwc:
                out.append(v.a)
            else:
                a = v.a.reshape((1,) * (4 - v.a.ndim) + v.a.shape) if v.a.ndim < 4 else v.a
                if a.ndim != 4:
                    raise ModelError(f"cannot broadcast a {a.ndim}-D tensor against a 4-D feature map")
                out.append(jnp.transpose(a, _TO_NHWC))
        else:
            out.append(v)
    return out, True


def _dims(dim, ndim: int) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % ndim for d in dims)


def _interp_matrix(size: int, out: int, mode: str, align_corners, scale) -> np.ndarray:
    """``(out, size)`` matrix of PyTorch's ``interpolate`` along one axis. ``scale`` is the user's scale factor
    (PyTorch then maps coordinates with 1/scale, not size/out) or None."""
    m = np.zeros((out, size), np.float64)
    ratio = (1.0 / scale) if scale else size / out
    dst = np.arange(out, dtype=np.float64)
    if mode == "nearest":
        src = np.minimum(np.floor(dst * ratio).astype(np.int64), size - 1)
        m[np.arange(out), src] = 1.0
        return m
    if mode == "nearest-exact":
        src = np.minimum(np.floor((dst + 0.5) * ratio).astype(np.int64), size - 1)
        m[np.arange(out), src] = 1.0
        return m
    # linear/bilinear
    if align_corners:
        src = dst * ((size - 1) / (out - 1)) if out > 1 else np.zeros_like(dst)
    else:
        src = np.maximum((dst + 0.5) * ratio - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    np.add.at(m, (np.arange(out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out), hi), frac)
    return m


def interpolate_nhwc(x: jax.Array, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                     recompute_scale_factor=None, antialias: bool = False) -> jax.Array:
    """``F.interpolate`` of a 4-D tensor, NHWC, as two exact interpolation matmuls (nearest, bilinear)."""
    if mode not in ("nearest", "nearest-exact", "bilinear") or antialias:
        raise ModelError(f"interpolate mode {mode!r}{' with antialias' if antialias else ''} is not supported "
                         "(nearest, nearest-exact and bilinear are); resize with one of those")
    h, w = x.shape[1:3]
    if size is not None:
        oh, ow = _pair(size)
        scales = (None, None)
    else:
        sf = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        oh, ow = int(math.floor(h * sf[0])), int(math.floor(w * sf[1]))
        scales = (None, None) if recompute_scale_factor else (float(sf[0]), float(sf[1]))
    mh = jnp.asarray(_interp_matrix(h, oh, mode, align_corners, scales[0]), x.dtype)
    mw = jnp.asarray(_interp_matrix(w, ow, mode, align_corners, scales[1]), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", mh, x, mw, precision=lax.Precision.HIGHEST)


def _hardswish(x):
    return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


def _gelu(x, approximate="none"):
    return jax.nn.gelu(x, approximate=approximate == "tanh")


_UNARY = {
    "relu": jax.nn.relu,
    "relu6": lambda x: jnp.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x, negative_slope=0.01: jnp.where(x >= 0, x, x * negative_slope),
    "gelu": _gelu,
    "silu": jax.nn.silu,
    "hardswish": _hardswish,
    "hardsigmoid": lambda x: jnp.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "hardtanh": lambda x, min_val=-1.0, max_val=1.0: jnp.clip(x, min_val, max_val),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "elu": lambda x, alpha=1.0: jnp.where(x > 0, x, alpha * jnp.expm1(x)),
    "neg": jnp.negative,
    "abs": jnp.abs,
    "exp": jnp.exp,
    "sqrt": jnp.sqrt,
    "identity": lambda x: x,
    "contiguous": lambda x: x,
    "clone": lambda x: x,
    "detach": lambda x: x,
}
_BINARY = {
    "add": jnp.add, "iadd": jnp.add, "radd": jnp.add, "sub": jnp.subtract, "isub": jnp.subtract,
    "rsub": lambda a, b: b - a, "mul": jnp.multiply, "imul": jnp.multiply, "truediv": jnp.divide,
    "div": jnp.divide, "itruediv": jnp.divide, "pow": jnp.power, "maximum": jnp.maximum, "minimum": jnp.minimum,
}
_SCALAR_OPS = {"floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b}

# Every function/method name the interpreter lowers; ``torch_fx`` refuses the others at conversion time.
SUPPORTED_CALLS = frozenset({
    *_UNARY, *_BINARY, *_SCALAR_OPS, "cat", "concat", "stack", "flatten", "view", "reshape", "permute",
    "transpose", "unsqueeze", "squeeze", "size", "dim", "getattr", "getitem", "mean", "sum", "amax", "softmax",
    "log_softmax", "adaptive_avg_pool2d", "max_pool2d", "avg_pool2d", "interpolate", "upsample", "dropout",
    "dropout2d", "chunk", "split", "matmul", "linear", "float", "type_as", "expand_as", "sigmoid_", "relu_", "pad",
})

LAYER_KINDS = frozenset({"conv2d", "conv_transpose2d", "batch_norm", "linear", "act", "max_pool2d", "avg_pool2d",
                         "adaptive_avg_pool2d", "dropout", "flatten", "identity", "softmax", "upsample"})


# ------------------------------------------------------------------------------------------------ the module
class TorchGraph(nn.Module):
    """A PyTorch CNN converted by :func:`jinterp.models.from_torch`, as a Linen module.

    ``apply(variables, images, train=False)`` -> ``(logits, feats)``; ``images`` ``(N, H, W, C)`` float32;
    ``feats`` maps every module path (and every functional op's fx node name) to its output — NHWC for 4-D
    tensors, PyTorch's layout otherwise. A module called several times (a shared ``self.relu``) is under its
    path with its last call, as a forward hook would see it, and under ``path#0``, ``path#1``… per call.
    ``logits`` is the graph's output in the same convention.
    ``train=True`` uses batch statistics in batch norm (``mutable=["batch_stats"]`` returns PyTorch's running
    stat update) and dropout (``rngs={"dropout": key}``).
    ``edits`` maps layer names (as in ``feats``) to functions of that layer's output (NHWC for 4-D) whose result
    replaces it for everything downstream, e.g. a method's gate or a reconstruction fed back; ``feats`` then holds
    the edited value.
    """

    graph_json: str

    @nn.compact
    def __call__(self, x, train: bool = False, edits: Mapping[str, Any] | None = None):
        g = parse_graph(self.graph_json)
        if x.ndim != 4:
            raise ModelError(f"expected images (N, H, W, C), got shape {tuple(x.shape)}; add a batch axis")
        if g["input_channels"] and x.shape[-1] != g["input_channels"]:
            raise ShapeError(f"this model takes {g['input_channels']}-channel images (N, H, W, "
                             f"{g['input_channels']}), got shape {tuple(x.shape)}; convert the images (e.g. "
                             "grayscale to RGB) or give NHWC, not NCHW, arrays")
        env: dict[str, Any] = {g["input"]: _T(x, nhwc=True)}
        feats: dict[str, jax.Array] = {}
        layers: dict[str, nn.Module] = {}
        calls: dict[str, int] = {}
        for name, op, target, args, kwargs, aliases in g["nodes"]:
            a = _resolve(args, env)
            kw = _resolve(kwargs, env)
            try:
                if op == "module":
                    out = self._layer(target, g["layers"][target], layers, a, kw, train)
                elif op == "attr":
                    out = self._attr(target, g["layers"].get(target, {}))
                else:
                    out = _call(self, target, a, kw, train)
            except (ModelError, ShapeError) as e:
                raise type(e)(f"{e} (at graph node {name!r}, {op} {target!r})") from None
            if edits and isinstance(out, _T):
                hit = next((k for k in (target if op == "module" else name, *aliases) if k in edits), None)
                if hit is not None:
                    out = _edited(out, edits[hit](out.feature()), hit)
            env[name] = out
            if isinstance(out, _T):
                if op == "module" and target in g["shared"]:  # a module called several times
                    calls[target] = calls.get(target, 0) + 1
                    keys = (f"{target}#{calls[target] - 1}", target, *aliases)
                elif op == "module":
                    keys = (target, *aliases)
                elif op == "attr":
                    keys = ()
                else:
                    keys = (name, *aliases)
                for key in keys:
                    feats[key] = out.feature()
        out = _resolve(g["output"], env)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, _T):
            raise ModelError("the model's output is not a tensor; return the logits from forward()")
        return out.feature(), feats

    def _attr(self, target: str, spec: Mapping):
        if spec.get("buffer"):
            shape = tuple(spec["shape"])
            return _T(self.variable("constants", target, lambda: jnp.zeros(shape, jnp.float32)).value)
        return _T(self.param(target, nn.initializers.zeros, tuple(spec["shape"])))

    def _layer(self, path: str, spec: Mapping, layers: dict, args: list, kwargs: dict, train: bool):
        kind = spec["kind"]
        if path not in layers:
            layers[path] = _build_layer(path, spec)
        layer = layers[path]
        x = args[0]
        if not isinstance(x, _T):
            raise ModelError(f"module {path!r} got a non-tensor input")
        if kind == "conv2d":
            xa = x.as_nhwc
            if spec.get("in_channels") and xa.shape[-1] != spec["in_channels"]:
                raise ShapeError(f"module {path!r} expects {spec['in_channels']} input channels, got "
                                 f"{xa.shape[-1]}; if it is the model's first layer, give "
                                 f"{spec['in_channels']}-channel images (other data, or convert them) or build "
                                 f"the model for {xa.shape[-1]} input channels")
            if spec.get("same_pads"):
                (top, bottom), (left, right) = spec["same_pads"]
                xa = jnp.pad(xa, ((0, 0), (top, bottom), (left, right), (0, 0)))
            return _T(layer(xa), True)
        if kind == "conv_transpose2d":
            return _T(layer(x.as_nhwc), True)
        if kind == "batch_norm":
            use_batch = train or not spec["track_running_stats"]
            if x.nhwc or x.a.ndim == 2:
                return _T(layer(x.a, train=use_batch), x.nhwc)
            moved = jnp.moveaxis(x.a, 1, -1)
            return _T(jnp.moveaxis(layer(moved, train=use_batch), -1, 1))
        if kind == "linear":
            return _T(layer(x.torch))
        if kind == "dropout":
            return _dropout(self, x, spec["p"], spec.get("channels", False), train)
        return _call(self, spec["fn"], [x, *spec.get("args", [])], dict(spec.get("kwargs", {})), train)


def _edited(out: _T, new: jax.Array, key: str) -> _T:
    """The value an ``edits`` function returned, in the layout of ``out`` (NHWC for 4-D)."""
    new = jnp.asarray(new, out.a.dtype)
    want = out.feature().shape
    if tuple(new.shape) != tuple(want):
        raise ShapeError(f"the replacement of layer {key!r} has shape {tuple(new.shape)} but the layer outputs "
                         f"{tuple(want)}")
    return _T(new, nhwc=len(want) == 4)


def _build_layer(path: str, spec: Mapping) -> nn.Module:
    kind = spec["kind"]
    if kind == "conv2d":
        return jnn.Conv2d(spec["out_channels"], tuple(spec["kernel_size"]), tuple(spec["stride"]),
                          tuple(spec["padding"]), tuple(spec["dilation"]), spec["bias"], spec["groups"], name=path)
    if kind == "conv_transpose2d":
        return jnn.ConvTranspose2d(spec["out_channels"], tuple(spec["kernel_size"]), tuple(spec["stride"]),
                                   tuple(spec["padding"]), tuple(spec["output_padding"]), spec["bias"], name=path)
    if kind == "batch_norm":
        return jnn.BatchNorm2d(spec["momentum"], spec["eps"], spec["affine"], name=path)
    if kind == "linear":
        return jnn.Linear(spec["out_features"], spec["bias"], name=path)
    return None  # stateless layers run through _call


def _resolve(obj, env):
    if isinstance(obj, _Ref):
        return env[obj]
    if isinstance(obj, list):
        return [_resolve(o, env) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(o, env) for o in obj)
    if isinstance(obj, dict):
        return {k: _resolve(v, env) for k, v in obj.items()}
    return obj


def _dropout(mod: nn.Module, x: _T, p: float, channels: bool, train: bool) -> _T:
    if not train or p == 0.0:
        return x
    keep = 1.0 - p
    a = x.a
    if channels:  # Dropout2d: one draw per (sample, channel)
        shape = (a.shape[0], 1, 1, a.shape[3]) if x.nhwc else (*a.shape[:2], *([1] * (a.ndim - 2)))
    else:
        shape = a.shape
    mask = jax.random.bernoulli(mod.make_rng("dropout"), keep, shape)
    return _T(jnp.where(mask, a / keep, 0.0).astype(a.dtype), x.nhwc)


def _shape_arg(args) -> tuple:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def _call(mod: nn.Module, fn: str, a: list, kw: dict, train: bool):
    """One function or method call of the graph; ``a[0]`` is ``self`` for methods."""
    kw = {k: v for k, v in kw.items() if k not in ("inplace", "memory_format")}
    x = a[0] if a else None
    if fn in _UNARY:
        if isinstance(x, _T):
            return _T(_UNARY[fn](x.a, *a[1:], **kw), x.nhwc)
        return _UNARY[fn](x, *a[1:], **kw)
    if fn in ("relu_", "sigmoid_"):
        return _call(mod, fn[:-1], a, kw, train)
    if fn in _BINARY:
        alpha = kw.pop("alpha", 1)
        lhs, rhs = a[0], (kw.pop("other", None) if len(a) < 2 else a[1])
        if not isinstance(lhs, _T) and not isinstance(rhs, _T):  # shape arithmetic on Python numbers
            return _py_binary(fn, lhs, rhs)
        (u, v), nhwc = _same_layout([lhs, rhs])
        if alpha != 1:
            v = v * alpha
        return _T(_BINARY[fn](u, v), nhwc)
    if fn in _SCALAR_OPS:
        return _SCALAR_OPS[fn](a[0], a[1])
    if fn == "getattr":
        if a[1] == "shape":
            return x.shape
        if a[1] == "dtype":
            return x.a.dtype
        raise ModelError(f"tensor attribute {a[1]!r} is not supported")
    if fn == "size":
        dim = a[1] if len(a) > 1 else kw.get("dim")
        return x.shape if dim is None else x.shape[dim]
    if fn == "dim":
        return len(x.shape)
    if fn == "getitem":
        if isinstance(x, _T):
            idx = a[1] if isinstance(a[1], tuple) else (a[1],)
            if x.nhwc and len(idx) <= 4 and all(isinstance(i, slice) for i in idx):
                idx = idx + (slice(None),) * (4 - len(idx))  # slicing only: index the NHWC array directly
                return _T(x.a[tuple(idx[d] for d in _TO_NHWC)], True)
            return _T(x.torch[a[1]])
        return x[a[1]]
    if fn == "pad":
        return _pad(x, *a[1:], **kw)
    if fn in ("float", "type_as"):
        return _T(x.a.astype(jnp.float32), x.nhwc)
    if fn == "expand_as":
        return _T(jnp.broadcast_to(x.torch, a[1].shape))
    if fn in ("cat", "concat", "stack"):
        tensors = list(a[0])
        dim = a[1] if len(a) > 1 else kw.get("dim", 0)
        if fn != "stack" and all(t.nhwc or len(t.shape) == 4 for t in tensors) and len(tensors[0].shape) == 4:
            return _T(jnp.concatenate([t.as_nhwc for t in tensors], _NHWC_AXIS_OF_TORCH_DIM[dim % 4]), True)
        f = jnp.stack if fn == "stack" else jnp.concatenate
        return _T(f([t.torch for t in tensors], dim))
    if fn == "flatten":
        start = a[1] if len(a) > 1 else kw.get("start_dim", 0)
        end = a[2] if len(a) > 2 else kw.get("end_dim", -1)
        t = x.torch
        start, end = start % t.ndim, end % t.ndim
        return _T(t.reshape(*t.shape[:start], -1, *t.shape[end + 1:]))
    if fn in ("view", "reshape"):
        shape = _shape_arg(a[1:]) if len(a) > 1 else tuple(kw["shape"])
        return _T(x.torch.reshape(shape))
    if fn == "permute":
        dims = _shape_arg(a[1:]) if len(a) > 1 else tuple(kw["dims"])
        if x.nhwc and tuple(d % 4 for d in dims) == _TO_NHWC:
            return _T(x.a)  # NCHW -> NHWC permute: the NHWC array is exactly that tensor
        return _T(jnp.transpose(x.torch, dims))
    if fn == "transpose":
        d0, d1 = (a[1], a[2]) if len(a) > 2 else (kw["dim0"], kw["dim1"])
        return _T(jnp.swapaxes(x.torch, d0, d1))
    if fn == "unsqueeze":
        return _T(jnp.expand_dims(x.torch, a[1] if len(a) > 1 else kw["dim"]))
    if fn == "squeeze":
        t = x.torch
        dim = a[1] if len(a) > 1 else kw.get("dim")
        if dim is None:
            return _T(jnp.squeeze(t))
        dims = tuple(d for d in _dims(dim, t.ndim) if t.shape[d] == 1)
        return _T(jnp.squeeze(t, dims) if dims else t)
    if fn in ("chunk", "split"):
        t = x.torch
        n_or_size = a[1] if len(a) > 1 else kw.get("chunks", kw.get("split_size_or_sections"))
        dim = (a[2] if len(a) > 2 else kw.get("dim", 0)) % t.ndim
        size = t.shape[dim]
        if fn == "chunk":
            step = -(-size // n_or_size)
            bounds = list(range(step, size, step))
        elif isinstance(n_or_size, int):
            bounds = list(range(n_or_size, size, n_or_size))
        else:
            bounds = list(np.cumsum(n_or_size)[:-1])
        return tuple(_T(p) for p in jnp.split(t, bounds, axis=dim))
    if fn in ("mean", "sum", "amax"):
        dim = a[1] if len(a) > 1 else kw.get("dim", kw.get("axis"))
        keep = a[2] if len(a) > 2 else kw.get("keepdim", False)
        reduce = {"mean": jnp.mean, "sum": jnp.sum, "amax": jnp.max}[fn]
        nd = len(x.shape)
        dims = tuple(range(nd)) if dim is None else _dims(dim, nd)
        if not x.nhwc:
            return _T(reduce(x.a, axis=dims, keepdims=keep))
        axes = tuple(_NHWC_AXIS_OF_TORCH_DIM[d] for d in dims)
        r = reduce(x.a, axis=axes, keepdims=keep)
        if keep:
            return _T(r, True)
        remaining = [d for d in _TO_NHWC if d not in dims]  # the torch dims left, in NHWC axis order
        return _T(jnp.transpose(r, np.argsort(remaining)) if r.ndim > 1 else r)
    if fn in ("softmax", "log_softmax"):
        dim = a[1] if len(a) > 1 else kw.get("dim")
        if dim is None:
            raise ModelError(f"{fn} without dim is ambiguous; give dim=")
        f = jax.nn.softmax if fn == "softmax" else jax.nn.log_softmax
        return _T(f(x.torch, axis=dim))
    if fn == "adaptive_avg_pool2d":
        out = a[1] if len(a) > 1 else kw["output_size"]
        xa = x.as_nhwc
        out = (out, out) if isinstance(out, int) else tuple(xa.shape[1 + i] if o is None else o
                                                            for i, o in enumerate(out))
        return _T(jnn.adaptive_avg_pool2d(xa, out), True)
    if fn == "max_pool2d":
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        p = {**dict(zip(names, a[1:], strict=False)), **kw}
        if p.get("return_indices"):
            raise ModelError("max_pool2d with return_indices=True is not supported")
        if _pair(p.get("dilation", 1)) != (1, 1):
            raise ModelError("max_pool2d with dilation > 1 is not supported")
        stride = p.get("stride") or None
        return _T(jnn.max_pool2d(x.as_nhwc, _pair(p["kernel_size"]), _pair(stride) if stride else None,
                                 _pair(p.get("padding", 0)), bool(p.get("ceil_mode", False))), True)
    if fn == "avg_pool2d":
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        p = {**dict(zip(names, a[1:], strict=False)), **kw}
        if p.get("ceil_mode") or p.get("divisor_override"):
            raise ModelError("avg_pool2d with ceil_mode=True or divisor_override is not supported")
        stride = p.get("stride") or None
        return _T(jnn.avg_pool2d(x.as_nhwc, _pair(p["kernel_size"]), _pair(stride) if stride else None,
                                 _pair(p.get("padding", 0)), bool(p.get("count_include_pad", True))), True)
    if fn in ("interpolate", "upsample"):
        names = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
        p = {**dict(zip(names, a[1:], strict=False)), **kw}
        return _T(interpolate_nhwc(x.as_nhwc, **p), True)
    if fn in ("dropout", "dropout2d"):
        p = a[1] if len(a) > 1 else kw.get("p", 0.5)
        training = a[2] if len(a) > 2 else kw.get("training", True)
        return _dropout(mod, x, p, fn == "dropout2d", train and training)
    if fn == "matmul":
        return _T(jnp.matmul(a[0].torch, a[1].torch))
    if fn == "linear":
        w = a[1] if len(a) > 1 else kw["weight"]
        b = a[2] if len(a) > 2 else kw.get("bias")
        y = jnp.matmul(x.torch, w.torch.T)
        return _T(y + b.torch if b is not None else y)
    raise ModelError(f"operation {fn!r} is not supported by jinterp's converter")


def _pad(x: _T, pad, mode: str = "constant", value=None) -> _T:
    """``F.pad``: ``pad`` holds (before, after) pairs from the last torch dim backwards."""
    pad = list(pad)
    if any(p < 0 for p in pad):
        raise ModelError("F.pad with negative padding (cropping) is not supported; slice the tensor instead")
    nd = len(x.shape)
    widths = [(0, 0)] * nd
    for i in range(len(pad) // 2):
        widths[nd - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    modes = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
    if mode not in modes:
        raise ModelError(f"F.pad mode {mode!r} is not supported (constant, reflect, replicate, circular are)")
    extra = {"constant_values": value or 0.0} if mode == "constant" else {}
    if x.nhwc:
        return _T(jnp.pad(x.a, [widths[d] for d in _TO_NHWC], mode=modes[mode], **extra), True)
    return _T(jnp.pad(x.a, widths, mode=modes[mode], **extra))


def _py_binary(fn: str, a, b):
    import operator

    ops = {"add": operator.add, "iadd": operator.add, "radd": operator.add, "sub": operator.sub,
           "isub": operator.sub, "rsub": lambda u, v: v - u, "mul": operator.mul, "imul": operator.mul,
           "truediv": operator.truediv, "div": operator.truediv, "itruediv": operator.truediv, "pow": operator.pow,
           "maximum": max, "minimum": min}
    return ops[fn](a, b)
