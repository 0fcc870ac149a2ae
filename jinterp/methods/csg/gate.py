"""The class-specific gate G (K filters x C classes) on the last conv stage of a backbone (spec B.2).

    site = gate_site(model)                       # which feature map is gated and how logits follow from it
    G = init_gate(K, C, 0.5)
    logits, A, new_state = forward(model, site, variables, x, train=True, gate=G, labels=y, rng=key)
    G = renormalize(G)                            # after every gated optimizer step

* **Gated path** (training only, needs the label): ``A~ = A * G[:, y]`` broadcast over H, W, one gather-multiply
  for the whole batch, then the backbone's own head (GAP + linear for ResNets/ConvNet; pool + MLP for
  VGG/AlexNet) on ``A~``. The released code fills a zeros tensor sample by sample (:func:`gate_features_loop`
  reproduces that for the tests).
* **Standard path** and inference: the backbone unchanged (the gate is never applied at test time).

The gated map is the output of the last conv stage *after* its final ReLU (ResNet ``layer4``/CIFAR ``layer3``,
ConvNet ``relu<n>``, VGG's last conv ReLU, ClaDec-VGG ``conv4``, AlexNet ``features.11``). The gated forward
applies the whole backbone and recomputes the head from the gated map; under ``jit`` XLA drops the unused
ungated head. ``stages`` lists, for each architecture, regexes of its parameter groups from input to output so
that the trainer can free the top n stages as the released code does by position in the children list.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jinterp.backbones.alexnet import ALEXNET_CONVS, AlexNet
from jinterp.backbones.cifar_resnet import CifarResNet
from jinterp.backbones.convnet import ConvNet
from jinterp.backbones.resnet import ResNet
from jinterp.backbones.vgg import CLADEC_BLOCKS, VGG, ClaDecVGG
from jinterp.errors import ConfigError, ShapeError
from jinterp.nn import ops
from jinterp.nn.layers import Linear

PyTree = Any
Head = Callable[[PyTree, jax.Array, bool, jax.Array | None], jax.Array]

# The released renormalization divides by each filter's max gate; a max <= 0 gives inf/NaN there (spec B.2).
RENORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class GateSite:
    """Where the gate sits in one backbone.

    layer: the feature name of the gated map (``feats[layer]``, NHWC, K = last axis).
    head: ``(backbone_params, A, train, rng) -> logits``, the backbone's layers after ``layer``; None for a
      user's converted model, whose gated path replaces ``layer``'s output inside the forward
      (``model.apply(..., edits={layer: gate})``, see :func:`user_gate_site`).
    stages: regexes (matched against ``/``-joined param paths) of the stages below the head, input first.
    head_params: regex of the head's params.
    fc: the GAP-linear layer name when the head is GAP + one linear layer (CAM needs it), else None.
    """

    layer: str
    head: Head | None
    stages: tuple[str, ...]
    head_params: str
    fc: str | None = None


def _linear(params: PyTree, name: str, x: jax.Array) -> jax.Array:
    p = params[name]
    return Linear(p["kernel"].shape[-1], use_bias="bias" in p).apply({"params": p}, x)


def _gap_linear(fc: str, pool: Callable[[jax.Array], jax.Array]) -> Head:
    def head(params, a, train=False, rng=None):
        return _linear(params, fc, ops.flatten_nchw(pool(a)))

    return head


def _mlp_head(n_pool: int, adaptive: int, pre: str, names: tuple[str, ...], dropout: float,
              dropout_first: bool) -> Head:
    """VGG (pool, adaptive avgpool, [fc, relu, dropout] x2, fc) and AlexNet ([dropout, fc, relu] x2, fc)."""

    def head(params, a, train=False, rng=None):
        if n_pool:
            a = ops.max_pool2d(a, *((2, 2) if pre == "vgg" else (3, 2)))
        x = ops.flatten_nchw(ops.adaptive_avg_pool2d(a, adaptive))
        keys = jax.random.split(rng, 2) if (train and rng is not None and dropout > 0) else (None, None)

        def drop(x, k):
            if k is None:
                return x
            return nn.Dropout(dropout, deterministic=False).apply({}, x, rngs={"dropout": k})

        for i, name in enumerate(names[:-1]):
            if dropout_first:
                x = nn.relu(_linear(params, name, drop(x, keys[i])))
            else:
                x = drop(nn.relu(_linear(params, name, x)), keys[i])
        return _linear(params, names[-1], x)

    return head


def _alt(names: list[str]) -> str:
    return "^(" + "|".join(names) + ")/"


def gate_site(model: nn.Module) -> GateSite:
    """The :class:`GateSite` of a jinterp backbone module (ConvNet, CIFAR ResNets, ResNet-18/50, VGG-16(-BN),
    ClaDec VGG, AlexNet); ``ConfigError`` for other modules."""
    if isinstance(model, ConvNet):
        n = len(model.widths)
        return GateSite(f"relu{n}", _gap_linear("fc", lambda a: ops.adaptive_avg_pool2d(a, 1)),
                        tuple(_alt([f"conv{i}", f"bn{i}"]) for i in range(1, n + 1)), "^fc/", "fc")
    if isinstance(model, CifarResNet):
        n = (model.depth - 2) // 6
        return GateSite("layer3", _gap_linear("linear", lambda a: ops.avg_pool2d(a, a.shape[2])),
                        (_alt(["conv1", "bn1"]),) + tuple(_alt([f"layer{s}_{b}" for b in range(n)])
                                                          for s in (1, 2, 3)), "^linear/", "linear")
    if isinstance(model, ResNet):
        stages = [_alt(["conv1", "bn1"])]
        for s, count in enumerate(model.layers, start=1):
            stages.append(_alt([f"layer{s}_{b}" for b in range(count)]))
        return GateSite("layer4", _gap_linear("fc", lambda a: ops.adaptive_avg_pool2d(a, 1)), tuple(stages),
                        "^fc/", "fc")
    if isinstance(model, VGG):
        stages, block, i, last_relu = [], [], 0, None
        for v in model.cfg:
            if v == "M":
                stages.append(_alt(block))
                block = []
                i += 1
                continue
            block.append(f"features_{i}")
            i += 1
            if model.batch_norm:
                block.append(f"features_{i}")
                i += 1
            last_relu = i
            i += 1
        if block:
            stages.append(_alt(block))
        return GateSite(f"features.{last_relu}",
                        _mlp_head(1, 7, "vgg", ("classifier_0", "classifier_3", "classifier_6"), model.dropout,
                                  False), tuple(stages), "^classifier_", None)
    if isinstance(model, ClaDecVGG):
        def head(params, a, train=False, rng=None):
            x = ops.flatten_nchw(a)
            if train and rng is not None and model.dropout > 0:
                x = nn.Dropout(model.dropout, deterministic=False).apply({}, x, rngs={"dropout": rng})
            return _linear(params, "pred", x)

        return GateSite(CLADEC_BLOCKS[-1][0], head, tuple(_alt([b[0]]) for b in CLADEC_BLOCKS), "^pred/", None)
    if isinstance(model, AlexNet):
        last = ALEXNET_CONVS[-1][0]
        return GateSite(f"features.{last + 1}",
                        _mlp_head(1, 6, "alexnet", ("classifier_1", "classifier_4", "classifier_6"),
                                  model.dropout, True),
                        tuple(_alt([f"features_{c[0]}"]) for c in ALEXNET_CONVS), "^classifier_", None)
    raise ConfigError(f"no class-specific gate site known for {type(model).__name__}; supported: ConvNet, "
                      "CIFAR ResNets, ResNet-18/50, VGG-16(-BN), ClaDec VGG, AlexNet")


def _param_owners(params: PyTree, position: dict[str, int]) -> dict[str, str]:
    """``{module path: "/"-joined params prefix}`` in forward order, for the innermost module (a ``feats`` name)
    that owns each parameter. Converted PyTorch models key params by the whole path (``features.0``); Flax
    models nest them (``block/Conv_0``, NNX lists ``layers/0``), named ``block.Conv_0``, ``layers.0`` in feats."""
    owners: dict[str, str] = {}
    for key in traverse_util.flatten_dict(dict(params)):
        parts = [str(p) for p in key[:-1]]
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in position:
                owners.setdefault(".".join(parts[:i]), "/".join(parts[:i]))
                break
    return dict(sorted(owners.items(), key=lambda kv: position[kv[0]]))


def user_gate_site(layer_names: Sequence[str], params: PyTree, layer: str, head: str) -> GateSite:
    """The :class:`GateSite` of a user's model (``jinterp.models``: ``TorchGraph``, ``LinenModel``, ``NnxModel``, any
    model whose ``apply`` takes ``edits``): gate the output
    of module ``layer`` (its last conv stage's ReLU, typically) before the classifier ``head`` (a module after it).

    ``layer_names``: the model's ``feats`` names in forward order (``ModelInfo.layer_names``); ``params``: its
    ``variables["params"]`` (keyed by module path, or nested as Flax nests them). Reconstructed for models
    without jinterp's stage structure: the stages are the parameterized modules up to ``layer``, one per module,
    input first (``train_stages`` frees the top ones, as the released code frees the last children); the head's
    params are those of every module after ``layer`` (so ``head`` and anything between). ``fc`` (CAM) is ``head``
    when it is a linear layer taking the K channels of the gated map (GAP + linear), else None. Unknown names:
    LayerError with the nearest match.
    """
    from jinterp.backbones import registry

    order = list(layer_names)
    registry.check_layers(order, [layer, head])
    if order.index(head) <= order.index(layer):
        after = order[order.index(layer) + 1:]
        raise ConfigError(f"CSG head {head!r} is not after the gate layer {layer!r}; name the classifier after it "
                          f"(--set head=..., modules after {layer}: {', '.join(after[-6:]) or 'none'})")
    position = {n: i for i, n in enumerate(order)}
    owners = _param_owners(params, position)  # module path -> its params' "/"-joined prefix, forward order
    below = [m for m in owners if position[m] <= position[layer]]
    above = [m for m in owners if position[m] > position[layer]]
    if not above:
        raise ConfigError(f"no trainable module after the gate layer {layer!r}; gate an earlier layer")
    stages = tuple(f"^{re.escape(owners[m])}/" for m in below)
    head_params = "^(" + "|".join(re.escape(owners[m]) for m in above) + ")/"
    head_leaves = {k[-1]: v for k, v in traverse_util.flatten_dict(params).items()
                   if "/".join(map(str, k[:-1])) == owners.get(head)}
    kernel = head_leaves.get("kernel")
    fc = head if kernel is not None and getattr(kernel, "ndim", 0) == 2 else None
    return GateSite(layer, None, stages, head_params, fc)


# ------------------------------------------------------------------------------------------------- the gate
def init_gate(num_filters: int, num_classes: int, value: float = 0.5) -> jax.Array:
    """``G`` of shape ``(K, C)`` filled with ``value`` (the released init: 0.5)."""
    if num_filters < 1 or num_classes < 1:
        raise ShapeError(f"gate shape must be positive, got ({num_filters}, {num_classes})")
    return jnp.full((num_filters, num_classes), value, jnp.float32)


def gate_features(a: jax.Array, gate: jax.Array, labels: jax.Array) -> jax.Array:
    """``A * G[:, y]`` for every sample at once: ``a`` (B, H, W, K) or (B, K), ``gate`` (K, C), ``labels`` (B,)."""
    if gate.ndim != 2 or a.shape[-1] != gate.shape[0]:
        raise ShapeError(f"gate must be (K, C) with K = {a.shape[-1]} filters of the gated map, got "
                         f"{tuple(gate.shape)}")
    g = jnp.take(gate.T, labels, axis=0).astype(a.dtype)  # (B, K)
    return a * g.reshape(g.shape[:1] + (1,) * (a.ndim - 2) + g.shape[1:])


def gate_features_loop(a, gate, labels):
    """The released construction (a zeros tensor filled sample by sample); a reference for tests and benches."""
    out = jnp.zeros_like(a)
    for i in range(a.shape[0]):
        out = out.at[i].set(a[i] * gate[:, int(labels[i])])
    return out


def renormalize(gate: jax.Array, faithful: bool = False, eps: float = RENORM_EPS) -> jax.Array:
    """Projection after a gated step: ``G[k, :] <- clip(G[k, :] / max_c G[k, c], 0, 1)`` for every filter.

    ``faithful=True`` divides by the raw max as released (a filter whose gates all reach <= 0 gives inf/NaN or
    a sign flip); the default divides by ``max(max_c G, eps)``, so such a filter's gates become 0.
    """
    m = gate.max(axis=1, keepdims=True)
    if not faithful:
        m = jnp.maximum(m, eps)
    return jnp.clip(gate / m, 0.0, 1.0)


def l1(gate: jax.Array) -> jax.Array:
    """``||G||_1`` with PyTorch's subgradient ``sign(G)`` (0 at 0; ``jnp.abs`` would give 1 there). Gates sit
    at exactly 0 after clipping, so this decides whether the penalty keeps pushing them (it does not in torch)."""
    return jnp.sum(gate * jax.lax.stop_gradient(jnp.sign(gate)))


def sparsity_penalty(gate: jax.Array, ratio: float) -> jax.Array:
    """``max(0, ||G||_1 - ratio * K * C)``; multiplied by lambda in the loss."""
    return jax.nn.relu(l1(gate) - ratio * gate.size)


def density(gate: jax.Array) -> jax.Array:
    """``||G||_1 / (K * C)``."""
    return jnp.abs(gate).sum() / gate.size


# ---------------------------------------------------------------------------------------------- forward paths
def forward(model: nn.Module, site: GateSite, variables: PyTree, x: jax.Array, *, train: bool = False,
            gate: jax.Array | None = None, labels: jax.Array | None = None, rng: jax.Array | None = None
            ) -> tuple[jax.Array, jax.Array, PyTree]:
    """``(logits, A, new_model_state)``: the standard path (``gate=None``) or the gated path.

    ``A`` is the (ungated) gated-layer map. ``new_model_state`` holds the BatchNorm statistics updated in train
    mode (the input's non-param collections otherwise). The gated path needs ``labels``.
    """
    state = {k: v for k, v in variables.items() if k != "params"}
    k_model, k_head = jax.random.split(rng) if rng is not None else (jax.random.key(0), None)
    if gate is not None and labels is None:
        raise ShapeError("the gated path needs the labels (the gate column of each sample's class)")
    kw, ungated = {}, []
    if gate is not None and site.head is None:  # a user model: the gate edits the map inside its forward

        def gate_map(a):
            ungated.append(a)
            return gate_features(a, gate, labels)

        kw = {"edits": {site.layer: gate_map}}
    if train and state:
        (logits, feats), new_state = model.apply(variables, x, train=True, mutable=list(state),
                                                 rngs={"dropout": k_model}, **kw)
    else:
        logits, feats = model.apply(variables, x, train=train, rngs={"dropout": k_model} if train else None, **kw)
        new_state = state
    a = ungated[0] if ungated else feats[site.layer]
    if gate is not None and site.head is not None:
        logits = site.head(variables["params"], gate_features(a, gate, labels), train, k_head)
    return logits, a, dict(new_state)


def num_filters(model: nn.Module, site: GateSite, variables: PyTree, image_shape) -> int:
    """K of the gated map (no compute)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    shape = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)[1][site.layer], variables, x).shape
    return int(shape[-1])
