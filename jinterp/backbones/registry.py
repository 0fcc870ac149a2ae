"""Architecture registry: names → Linen modules, layer names, shape-correct init, input normalization."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jinterp.backbones.alexnet import AlexNet
from jinterp.backbones.cifar_resnet import CifarResNet
from jinterp.backbones.convnet import ConvNet
from jinterp.backbones.resnet import ResNet
from jinterp.backbones.vgg import VGG, VGG16_CFG, ClaDecVGG
from jinterp.data import pipeline
from jinterp.errors import ConfigError, LayerError, ShapeError


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How to build one registered architecture.

    Attributes:
      build: ``(num_classes, **kwargs) -> nn.Module``.
      num_classes: default number of classes.
      input_shape: default ``(H, W, C)``.
      normalization: preset of ``jinterp.data.NORMALIZATIONS`` the model expects its input normalized with.
      first_conv / head: PyTorch state_dict keys of the first conv weight and the last layer's bias (used to
        infer input channels and the number of classes from a checkpoint).
    """

    build: Callable[..., nn.Module]
    num_classes: int
    input_shape: tuple[int, int, int]
    normalization: str
    first_conv: str
    head: str


def _cifar(depth: int) -> ArchSpec:
    return ArchSpec(functools.partial(CifarResNet, depth), 10, (32, 32, 3), "cifar",
                    "conv1.weight", "linear.bias")


_SPECS: dict[str, ArchSpec] = {
    "vgg16": ArchSpec(functools.partial(VGG, VGG16_CFG, False), 1000, (224, 224, 3), "imagenet",
                      "features.0.weight", "classifier.6.bias"),
    "vgg16_bn": ArchSpec(functools.partial(VGG, VGG16_CFG, True), 1000, (224, 224, 3), "imagenet",
                         "features.0.weight", "classifier.6.bias"),
    "vgg11_bn_cladec": ArchSpec(ClaDecVGG, 10, (32, 32, 3), "unit", "conv0.conv1.weight", "pred.bias"),
    "alexnet": ArchSpec(AlexNet, 1000, (224, 224, 3), "imagenet", "features.0.weight", "classifier.6.bias"),
    "resnet18": ArchSpec(functools.partial(ResNet, "basic", (2, 2, 2, 2)), 1000, (224, 224, 3), "imagenet",
                         "conv1.weight", "fc.bias"),
    "resnet50": ArchSpec(functools.partial(ResNet, "bottleneck", (3, 4, 6, 3)), 1000, (224, 224, 3),
                         "imagenet", "conv1.weight", "fc.bias"),
    "resnet20": _cifar(20),
    "resnet32": _cifar(32),
    "resnet44": _cifar(44),
    "resnet56": _cifar(56),
    "convnet": ArchSpec(ConvNet, 6, (64, 64, 3), "unit", "conv1.weight", "fc.bias"),
}

ARCHS: tuple[str, ...] = tuple(_SPECS)
NORMALIZATION: dict[str, str] = {arch: spec.normalization for arch, spec in _SPECS.items()}


def spec(arch: str) -> ArchSpec:
    """The ``ArchSpec`` of ``arch``; ``ConfigError`` listing the valid names when unknown."""
    try:
        return _SPECS[arch]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(arch), ARCHS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown backbone {arch!r}; valid archs: {', '.join(ARCHS)}.{hint}") from None


def create(arch: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build the Linen module of ``arch`` (weights come from :func:`init` or ``torch_import.from_torch``).

    ``kwargs`` go to the module (e.g. ``dropout=0.3`` for VGG/AlexNet/ClaDec, ``widths=(16, 32, 64, 64)`` for
    ``convnet``). ``model.apply(variables, x, train=False)`` returns ``(logits, feats)``.
    """
    s = spec(arch)
    n = s.num_classes if num_classes is None else int(num_classes)
    if n < 1:
        raise ConfigError(f"{arch}: num_classes must be >= 1, got {num_classes}")
    # Lists become tuples: modules must stay hashable (jit and init caches key on them).
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return s.build(num_classes=n, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{arch}: bad keyword argument(s) {sorted(kwargs)}: {e}") from None


def arch_kwargs_from(arch: str, variables: Mapping) -> dict:
    """The module kwargs that saved ``variables`` fix beyond the arch name: ConvNet's ``widths``, read off its
    conv kernels (other archs: none). With :func:`create`, rebuilds the module any variables file was saved from."""
    if arch != "convnet":
        return {}
    p = variables["params"]
    n = sum(1 for k in p if k.startswith("conv"))
    return {"widths": tuple(int(p[f"conv{i}"]["kernel"].shape[-1]) for i in range(1, n + 1))}


def default_input_shape(arch: str) -> tuple[int, int, int]:
    """``(H, W, C)`` the architecture is meant for (224 px ImageNet, 32 px CIFAR/ClaDec, 64 px convnet)."""
    return spec(arch).input_shape


def _default_shape_for(model: nn.Module) -> tuple[int, int, int]:
    if isinstance(model, (CifarResNet, ClaDecVGG)):
        return (32, 32, 3)
    if isinstance(model, ConvNet):
        return (64, 64, 3)
    return (224, 224, 3)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ShapeError(f"image_shape must be (H, W, C) with positive sizes, got {tuple(image_shape)}")
    return shape


def init(model: nn.Module, key: jax.Array, image_shape: Sequence[int] | None = None) -> dict:
    """Shape-correct random variables ``{"params": ..., "batch_stats": ...}`` (PyTorch default init), jitted.

    ``image_shape`` is ``(H, W, C)`` (default: the architecture's usual input); C fixes the first conv's
    input channels, and H, W matter for ClaDec's 512-wide ``pred`` only.
    """
    shape = _check_image_shape(image_shape or _default_shape_for(model))
    return _compiled_init(model, shape, jax.typeof(key))(key)


@functools.lru_cache(maxsize=32)
def _compiled_init(model: nn.Module, shape: tuple[int, int, int], key_type) -> Callable:
    x = jnp.zeros((1, *shape), jnp.float32)
    lowered = jax.jit(lambda k: model.init(k, x, train=False)).lower(jax.ShapeDtypeStruct(key_type.shape,
                                                                                          key_type.dtype))
    # Init is dozens of small RNG kernels run once: for small nets XLA:CPU's optimizing backend spends far longer
    # compiling them than it saves (ResNet-20: 18 s vs 2.6 s on a loaded 2-core machine); for VGG-16's 138M
    # draws the optimized code wins (5 s vs 18 s to run). Deterministic; values may differ between the two
    # compiles in the last bit (FMA contraction of the uniform's scale-and-shift).
    n = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(lowered.out_info))
    fast_compile = jax.default_backend() == "cpu" and n < _FAST_COMPILE_MAX_PARAMS
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0} if fast_compile else None)


_FAST_COMPILE_MAX_PARAMS = 50_000_000  # ResNet-50 (25.6M) below, AlexNet (61M) and VGG-16 above


def variable_shapes(model: nn.Module, image_shape: Sequence[int] | None = None) -> dict:
    """The tree of ``jax.ShapeDtypeStruct`` that :func:`init` would return; no compute."""
    shape = _check_image_shape(image_shape or _default_shape_for(model))
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


@functools.lru_cache(maxsize=64)
def _layer_names(arch: str, kwargs: tuple) -> tuple[str, ...]:
    model = create(arch, **dict(kwargs))
    order: list[str] = []

    def run(x):
        (_, feats), _ = model.init_with_output(jax.random.key(0), x, train=False)
        order.extend(feats)  # tracing runs this Python once: it keeps the forward order, which pytrees sort
        return 0

    jax.eval_shape(run, jax.ShapeDtypeStruct((1, *default_input_shape(arch)), jnp.float32))
    return tuple(order)


def layer_names(arch: str, **kwargs) -> tuple[str, ...]:
    """Names of ``arch``'s intermediates (the keys of ``feats``) in forward order; cached, no real compute.

    Note that a dict returned from a jitted function has its keys sorted; use this for the network order.
    """
    spec(arch)
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return _layer_names(arch, key)


def check_layers(arch_or_names: str | Iterable[str], layers: str | Iterable[str]) -> tuple[str, ...]:
    """Validate ``layers`` against an arch's ``layer_names`` (or an explicit list of valid names).

    Returns the layers as a tuple; raises ``LayerError`` listing the valid names when one is unknown.
    """
    if isinstance(arch_or_names, str):
        valid, owner = layer_names(arch_or_names), arch_or_names
    else:
        valid, owner = tuple(arch_or_names), "this backbone"
    wanted = (layers,) if isinstance(layers, str) else tuple(layers)
    known = set(valid)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LayerError(f"unknown layer {name!r} for {owner}.{hint} Valid layers: {', '.join(valid)}")
    return wanted


def normalize(images, arch_or_scheme: str) -> jax.Array:
    """Map images to what a backbone expects: its ``NORMALIZATION`` preset of ``jinterp.data.NORMALIZATIONS``.

    ``images`` is ``(..., H, W, C)`` uint8 in [0, 255] or float in [0, 1]; the result is float32.
    """
    scheme = NORMALIZATION.get(arch_or_scheme, arch_or_scheme)
    if scheme not in pipeline.NORMALIZATIONS:
        raise ConfigError(f"unknown arch or normalization {arch_or_scheme!r}; valid: "
                          f"{', '.join((*pipeline.NORMALIZATIONS, *ARCHS))}")
    return pipeline.normalize(images, scheme)
