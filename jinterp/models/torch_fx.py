"""Any PyTorch CNN -> a jinterp model: trace with ``torch.fx``, lower onto :mod:`jinterp.nn` (see ``graph.py``).

``from_torch(module, example_input)`` returns ``(model, variables)``: a :class:`~jinterp.models.graph.TorchGraph`
Linen module and its variables, read from the module's parameters and buffers (eval statistics included).

Tracing is ``torch.fx.symbolic_trace`` with the layer types below as leaves; every other module (blocks,
``Sequential``…) is traced through, and its output is recorded under its module path as an alias of the node
that produced it. What cannot be lowered fails here, at conversion time, with a :class:`ModelError` naming the
operation, the module path and what to do.

Leaf layers: Conv2d (any stride/padding incl. ``'same'``/dilation/groups; zero padding), ConvTranspose2d
(groups=1, dilation=1), BatchNorm1d/2d, Linear, ReLU/ReLU6/LeakyReLU/GELU/SiLU/Hardswish/Hardsigmoid/Hardtanh/
ELU/Sigmoid/Tanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Dropout/Dropout2d, Flatten, Identity, Softmax,
Upsample. Functional ops: ``graph.SUPPORTED_CALLS``.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import ModelError, ShapeError
from jinterp.models import graph as graphlib


def _torch():
    try:
        import torch
        import torch.fx  # noqa: F401
    except ImportError:
        raise ModelError("converting a PyTorch model needs PyTorch (pip install 'jinterp[torch]'); a converted "
                         "model saved with jinterp.models.save_model reloads without it") from None
    return torch


def _leaf_types(torch):
    nn = torch.nn
    return (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.ReLU6,
            nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.ELU, nn.Sigmoid, nn.Tanh,
            nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity,
            nn.Softmax, nn.Upsample)


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(u) for u in v]


def _layer_spec(torch, path: str, m) -> dict:
    """The JSON config of one leaf layer; ``ModelError`` for a configuration jinterp cannot run."""
    nn = torch.nn

    def unsupported(what: str, fix: str):
        return ModelError(f"module {path!r} ({type(m).__name__}): {what} is not supported; {fix}")

    if isinstance(m, nn.ConvTranspose2d):
        if m.groups != 1 or _pair(m.dilation) != [1, 1] or m.padding_mode != "zeros":
            raise unsupported("groups/dilation/padding_mode other than 1/1/zeros",
                              "use a plain transposed conv or an Upsample + Conv2d")
        return {"kind": "conv_transpose2d", "out_channels": m.out_channels, "kernel_size": _pair(m.kernel_size),
                "stride": _pair(m.stride), "padding": _pair(m.padding), "output_padding": _pair(m.output_padding),
                "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise unsupported(f"padding_mode={m.padding_mode!r}", "use zero padding (F.pad before the conv "
                              "is not supported either)")
        spec = {"kind": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size),
                "stride": _pair(m.stride), "dilation": _pair(m.dilation), "groups": m.groups,
                "bias": m.bias is not None, "padding": [0, 0]}
        if m.padding == "same":  # PyTorch pads (total // 2) before and the rest after
            pads = []
            for k, d in zip(spec["kernel_size"], spec["dilation"], strict=True):
                total = d * (k - 1)
                pads.append([total // 2, total - total // 2])
            spec["same_pads"] = pads
        elif m.padding != "valid":
            spec["padding"] = _pair(m.padding)
        return spec
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.momentum is None:
            raise unsupported("momentum=None (cumulative moving average)", "set a momentum, e.g. 0.1")
        return {"kind": "batch_norm", "momentum": float(m.momentum), "eps": float(m.eps), "affine": m.affine,
                "track_running_stats": bool(m.track_running_stats and m.running_mean is not None)}
    if isinstance(m, nn.Linear):
        return {"kind": "linear", "out_features": m.out_features, "bias": m.bias is not None}
    acts = {nn.ReLU: ("relu", {}), nn.ReLU6: ("relu6", {}), nn.SiLU: ("silu", {}), nn.Hardswish: ("hardswish", {}),
            nn.Hardsigmoid: ("hardsigmoid", {}), nn.Sigmoid: ("sigmoid", {}), nn.Tanh: ("tanh", {}),
            nn.Identity: ("identity", {})}
    if type(m) in acts:
        fn, kw = acts[type(m)]
        return {"kind": "act", "fn": fn, "kwargs": kw}
    if isinstance(m, nn.Hardtanh):
        return {"kind": "act", "fn": "hardtanh", "kwargs": {"min_val": m.min_val, "max_val": m.max_val}}
    if isinstance(m, nn.LeakyReLU):
        return {"kind": "act", "fn": "leaky_relu", "kwargs": {"negative_slope": float(m.negative_slope)}}
    if isinstance(m, nn.GELU):
        return {"kind": "act", "fn": "gelu", "kwargs": {"approximate": m.approximate}}
    if isinstance(m, nn.ELU):
        return {"kind": "act", "fn": "elu", "kwargs": {"alpha": float(m.alpha)}}
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise unsupported("return_indices=True", "drop the indices (MaxUnpool is not supported)")
        return {"kind": "max_pool2d", "fn": "max_pool2d",
                "kwargs": {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                           "padding": _pair(m.padding), "dilation": _pair(m.dilation), "ceil_mode": m.ceil_mode}}
    if isinstance(m, nn.AvgPool2d):
        return {"kind": "avg_pool2d", "fn": "avg_pool2d",
                "kwargs": {"kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                           "padding": _pair(m.padding), "ceil_mode": m.ceil_mode,
                           "count_include_pad": m.count_include_pad, "divisor_override": m.divisor_override}}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        out = m.output_size
        out = [out, out] if isinstance(out, int) else list(out)
        return {"kind": "adaptive_avg_pool2d", "fn": "adaptive_avg_pool2d", "kwargs": {"output_size": out}}
    if isinstance(m, (nn.Dropout, nn.Dropout2d)):
        return {"kind": "dropout", "p": float(m.p), "channels": isinstance(m, nn.Dropout2d)}
    if isinstance(m, nn.Flatten):
        return {"kind": "flatten", "fn": "flatten", "args": [m.start_dim, m.end_dim]}
    if isinstance(m, nn.Softmax):
        return {"kind": "softmax", "fn": "softmax", "kwargs": {"dim": m.dim}}
    if isinstance(m, nn.Upsample):
        sf = m.scale_factor
        return {"kind": "upsample", "fn": "interpolate",
                "kwargs": {"size": m.size if m.size is None or isinstance(m.size, int) else list(m.size),
                           "scale_factor": sf if sf is None or isinstance(sf, (int, float)) else list(sf),
                           "mode": m.mode, "align_corners": m.align_corners}}
    raise unsupported("this layer type", "open an issue")  # unreachable: only _leaf_types get here


def _encode(torch, obj):
    """fx node arguments -> JSON (see graph.py)."""
    import torch.fx as fx

    if isinstance(obj, fx.Node):
        return {"$ref": obj.name}
    if isinstance(obj, torch.Size):
        return {"$tuple": [int(v) for v in obj]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(torch, o) for o in obj]}
    if isinstance(obj, list):
        return [_encode(torch, o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(torch, v) for k, v in obj.items()}
    if isinstance(obj, slice):
        return {"$slice": [_encode(torch, obj.start), _encode(torch, obj.stop), _encode(torch, obj.step)]}
    if obj is Ellipsis:
        return {"$ellipsis": 1}
    if isinstance(obj, torch.dtype):
        return {"$dtype": str(obj).replace("torch.", "")}
    if isinstance(obj, (torch.device, torch.memory_format, torch.layout)):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ModelError(f"cannot record a graph argument of type {type(obj).__name__} ({obj!r})")


def _call_name(node) -> str:
    if node.op == "call_method":
        return str(node.target)
    name = getattr(node.target, "__name__", str(node.target))
    return name


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return f"module {list(stack)[-1]!r}" if stack else "the top-level forward()"


def _trace(torch, module):
    import torch.fx as fx

    leaves = _leaf_types(torch)
    stack: list[str] = []
    aliases: dict[str, list[str]] = {}

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaves)

        def call_module(self, m, forward, args, kwargs):
            path = self.path_of_module(m)
            stack.append(path)
            out = super().call_module(m, forward, args, kwargs)
            stack.pop()
            if isinstance(out, fx.Proxy) and not self.is_leaf_module(m, path) and path:
                aliases.setdefault(out.node.name, []).append(path)
            return out

    tracer = Tracer()
    try:
        graph = tracer.trace(module)
    except ModelError:
        raise
    except Exception as e:
        where = f"module {stack[-1]!r}" if stack else "the top-level forward()"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"cannot trace {type(module).__name__} in {where}: {msg}. torch.fx needs a forward() without "
            "data-dependent control flow (if/for on tensor values, len()/iteration of tensors); rewrite it with "
            "tensor ops (torch.where) or compute that branch outside the model") from None
    return graph, aliases


def from_torch(module, example_input) -> tuple[graphlib.TorchGraph, dict]:
    """Convert a PyTorch CNN into ``(model, variables)``.

    Args:
      module: a ``torch.nn.Module`` (train or eval mode; its mode is left as it was).
      example_input: an NCHW tensor (or array) ``(N, C, H, W)``; the converted model is checked on its shape.

    Returns:
      ``model`` (a :class:`~jinterp.models.graph.TorchGraph`; ``model.apply(variables, images_nhwc,
      train=False) -> (logits, feats)``) and ``variables`` ``{"params", "batch_stats"[, "constants"]}`` as numpy-
      backed jax arrays, laid out as described in ``graph.py``.

    Raises ``ModelError`` naming the operation and module path for what cannot be lowered (data-dependent
    control flow included), ``ShapeError`` for an example input that is not 4-D.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    example = (example_input if isinstance(example_input, torch.Tensor)
               else torch.tensor(np.asarray(example_input, np.float32)))  # a copy: the array may be read-only
    if example.ndim != 4:
        raise ShapeError(f"example_input must be NCHW (N, C, H, W), got shape {tuple(example.shape)}")
    graph, aliases = _trace(torch, module)
    modules = dict(module.named_modules())
    params_by_name = dict(module.named_parameters())
    buffers_by_name = dict(module.named_buffers())

    nodes, layers = [], {}
    params: dict = {}
    batch_stats: dict = {}
    constants: dict = {}
    input_name, output = None, None
    for node in graph.nodes:
        if node.op == "placeholder":
            if input_name is not None:
                raise ModelError(f"{type(module).__name__}.forward takes more than one input ({node.name!r}); "
                                 "jinterp models take one image batch — wrap the model so forward(x) fills the rest")
            input_name = node.name
            continue
        if node.op == "output":
            output = _encode(torch, node.args[0])
            continue
        if node.op == "call_module":
            path = str(node.target)
            m = modules[path]
            if path not in layers:
                layers[path] = _layer_spec(torch, path, m)
                _collect_layer_variables(layers[path], path, m, params, batch_stats)
            op, target = "module", path
        elif node.op == "get_attr":
            target = str(node.target)
            if target in params_by_name:
                value = params_by_name[target]
                params[target] = _np(value)
                layers[target] = {"kind": "attr", "shape": list(value.shape)}
            elif target in buffers_by_name:
                value = buffers_by_name[target]
                constants[target] = _np(value)
                layers[target] = {"kind": "attr", "buffer": True, "shape": list(value.shape)}
            else:
                raise ModelError(f"graph node {node.name!r} reads attribute {target!r}, which is neither a "
                                 "parameter nor a buffer; register it with register_buffer")
            op = "attr"
        else:
            target = _call_name(node)
            if target not in graphlib.SUPPORTED_CALLS:
                raise ModelError(
                    f"cannot convert operation {target!r} (graph node {node.name!r}) in {_where(node)}: jinterp "
                    "does not lower it. Replace it with a supported layer/op (see jinterp.models.graph"
                    ".SUPPORTED_CALLS) or compute it outside the model")
            op = "function" if node.op == "call_function" else "method"
        nodes.append({"name": node.name, "op": op, "target": target, "args": _encode(torch, node.args),
                      "kwargs": _encode(torch, dict(node.kwargs)), "aliases": aliases.get(node.name, [])})
    graph_json = json.dumps({"format": graphlib.FORMAT, "input": input_name, "nodes": nodes, "layers": layers,
                             "output": output, "input_channels": int(example.shape[1])}, sort_keys=True)
    model = graphlib.TorchGraph(graph_json)
    variables = {"params": params, "batch_stats": batch_stats}
    if constants:
        variables["constants"] = constants
    variables = jax.tree.map(jnp.asarray, {k: v for k, v in variables.items() if v or k == "params"})
    _check_against_torch(torch, module, model, variables, example)
    return model, variables


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _collect_layer_variables(spec: dict, path: str, m, params: dict, batch_stats: dict) -> None:
    kind = spec["kind"]
    if kind == "conv2d":
        params[path] = {"kernel": _np(m.weight).transpose(2, 3, 1, 0)}  # OIHW -> HWIO
    elif kind == "conv_transpose2d":
        params[path] = {"kernel": _np(m.weight).transpose(2, 3, 0, 1)}  # (in, out, kh, kw) -> (kh, kw, in, out)
    elif kind == "linear":
        params[path] = {"kernel": _np(m.weight).T}
    elif kind == "batch_norm":
        if spec["affine"]:
            params[path] = {"scale": _np(m.weight), "bias": _np(m.bias)}
        n = m.num_features
        if spec["track_running_stats"]:
            batch_stats[path] = {"mean": _np(m.running_mean), "var": _np(m.running_var)}
        else:
            batch_stats[path] = {"mean": np.zeros(n, np.float32), "var": np.ones(n, np.float32)}
        return
    else:
        return
    if spec.get("bias"):
        params[path]["bias"] = _np(m.bias)


def _check_against_torch(torch, module, model, variables, example) -> None:
    """The converted graph's variable tree is exactly what the module creates and its output shape is PyTorch's:
    catches a lowering that silently reads the wrong layout."""
    x = jax.ShapeDtypeStruct((example.shape[0], example.shape[2], example.shape[3], example.shape[1]), jnp.float32)
    try:
        shapes = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x.shape, x.dtype), train=False), variables)
        created = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    except ModelError as e:
        raise ModelError(f"cannot convert {type(module).__name__}: {e}") from None
    want = jax.tree.map(lambda s: tuple(s.shape), dict(created))
    have = jax.tree.map(lambda s: tuple(np.shape(s)), dict(variables))
    if want != have:
        raise ModelError(f"internal: converted variables of {type(module).__name__} do not match the graph "
                         f"(module expects {_diff(want, have)}); please report this model")
    was_training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            ref = module(example[:1].float())
    except Exception as e:  # noqa: BLE001 - the user's module on the example input
        raise ShapeError(f"{type(module).__name__} fails in PyTorch on an example input of shape "
                         f"{tuple(example.shape)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                         "give the image shape (H, W, C) the model is made for") from None
    finally:
        for m, t in was_training.items():
            m.training = t
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    ref_shape = tuple(ref.shape)
    got = tuple(shapes[0].shape)
    if len(ref_shape) == 4:
        ref_shape = (ref_shape[0], ref_shape[2], ref_shape[3], ref_shape[1])
    got = (1, *got[1:]) if got else got
    if got != ref_shape:
        raise ModelError(f"internal: converted {type(module).__name__} outputs shape {got}, PyTorch {ref_shape}")


def _diff(want, have) -> str:
    from flax import traverse_util

    w, h = traverse_util.flatten_dict(want), traverse_util.flatten_dict(have)
    bad = [("/".join(k), w.get(k), h.get(k)) for k in set(w) | set(h) if w.get(k) != h.get(k)]
    return ", ".join(f"{k}: {a} vs {b}" for k, a, b in sorted(bad)[:5])


def example_input_for(image_shape, batch: int = 1):
    """A zero NCHW example input for ``image_shape`` ``(H, W, C)``."""
    h, w, c = (int(v) for v in image_shape)
    if min(h, w, c) < 1 or not math.isfinite(h * w * c):
        raise ShapeError(f"image_shape must be (H, W, C) with positive sizes, got {tuple(image_shape)}")
    return np.zeros((batch, c, h, w), np.float32)
