"""ClaDec's decoder family (official ``cladec.py::ClaDecNet``), built from a layer's activation shape.

The official rules (spec A.3.3), written for any image size ``H`` instead of the hard-coded 32:

* **entry**: a flat activation (``(N, D)``, or spatial size 1x1) goes through ``Linear(D, max(D, base)) + ReLU``
  and is reshaped to a 1x1 map; a spatial one ``(N, S, S, C)`` through ``Conv2d(C, C, 3x3, padding 1) + ReLU``.
* **upsampling**: ``k = log2(H / S)`` transposed convolutions (kernel 4, stride 2, padding 1, bias), each doubling
  H and W: ``entry -> base·2^(k-2) -> … -> base·2 -> base -> C_in``, ReLU after all but the last. With
  ``nLay = round(log2(H/S) - 2)`` this is the official stack (``ConvTranspose2d(first, base·2^nLay)``, then
  ``base·2^j -> base·2^(j-1)`` for ``j = nLay…1``, then ``base -> C_in``).
* **output**: sigmoid, so ``x̂ ∈ [0, 1]^{H×W×C_in}``. No BatchNorm (the official ``bn`` is the identity).

Extensions where the official formula breaks (``nLay < 0``): ``k = 1`` is a single transposed conv to ``C_in``;
``k = 0`` (a layer at full image resolution) ends in a 3x3 conv to ``C_in``. An image size that is not
``S·2^k`` (or non-square ratios) raises :class:`~jinterp.errors.ShapeError`.

Parameter names: ``entry`` (Linear or Conv2d), ``up<i>`` (hidden transposed convs), ``out``; kernels in
:mod:`jinterp.nn` layouts (PyTorch semantics, NHWC).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jinterp.errors import ShapeError
from jinterp.nn.layers import Conv2d, ConvTranspose2d, Linear


@dataclasses.dataclass(frozen=True)
class DecoderPlan:
    """The static shape of one decoder.

    act_shape: per-example activation shape, ``(D,)`` or ``(S, S, C)`` (NHWC without N).
    image_shape: ``(H, W, C_in)`` of the reconstruction.
    entry: ``"dense"`` or ``"conv"``; entry_width: its output channels.
    widths: output channels of the transposed convs in order (the last is ``C_in`` unless ``k = 0``).
    """

    act_shape: tuple[int, ...]
    image_shape: tuple[int, int, int]
    base_width: int
    entry: str
    entry_width: int
    widths: tuple[int, ...]

    @property
    def num_upsamplings(self) -> int:
        return len(self.widths)

    def describe(self) -> str:
        h = 1 if self.entry == "dense" else self.act_shape[0]
        parts = [f"{'Linear' if self.entry == 'dense' else 'Conv3x3'} -> {self.entry_width}@{h}px"]
        for w in self.widths:
            h *= 2
            parts.append(f"CT -> {w}@{h}px")
        if not self.widths:
            parts.append(f"Conv3x3 -> {self.image_shape[2]}@{h}px")
        return " | ".join(parts) + " | sigmoid"


def plan_decoder(act_shape: Sequence[int], image_shape: Sequence[int], base_width: int = 64,
                 layer: str = "the layer") -> DecoderPlan:
    """Decoder shape for activations ``act_shape`` (without batch axis) -> images ``image_shape`` (H, W, C).

    Raises ShapeError when the image size is not the activation's spatial size times a power of two.
    """
    act_shape = tuple(int(d) for d in act_shape)
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ShapeError(f"image_shape must be (H, W, C), got {image_shape}")
    h, w, c_in = image_shape
    if len(act_shape) == 1:
        s_h = s_w = 1
        dense, d = True, act_shape[0]
    elif len(act_shape) == 3:
        s_h, s_w, c = act_shape
        dense, d = (s_h == 1 and s_w == 1), c
    else:
        raise ShapeError(f"{layer}: activations must be (N, D) or (N, H, W, C), got per-example shape {act_shape}")
    ratios = (h / s_h, w / s_w)
    ks = [math.log2(r) if r >= 1 else -1.0 for r in ratios]
    if ratios[0] != ratios[1] or not all(k >= 0 and k == int(k) for k in ks):
        hint = [s_h * 2 ** max(int(math.log2(max(h / s_h, 1))), 0), s_w * 2 ** max(int(math.log2(max(w / s_w, 1))), 0)]
        raise ShapeError(
            f"{layer}: the decoder doubles the {s_h}x{s_w} activation map with each transposed convolution, so it "
            f"cannot reach {h}x{w} images (the image size must be {s_h}x{s_w} times the same power of two, e.g. "
            f"{hint[0]}x{hint[1]}); resize the images (--set image_size=...) or choose another layer")
    k = int(ks[0])
    if dense and k == 0 and (h, w) != (1, 1):
        raise ShapeError(f"{layer}: a flat activation decodes to 2^k pixels; {h}x{w} is not reachable")
    entry_width = max(d, base_width) if dense else d
    widths = tuple(base_width * 2 ** (k - 2 - i) for i in range(k - 1)) + ((c_in,) if k >= 1 else ())
    return DecoderPlan(act_shape, image_shape, int(base_width), "dense" if dense else "conv", entry_width, widths)


class Decoder(nn.Module):
    """``D_φ``: activations ``(N, *plan.act_shape)`` -> reconstructions ``(N, H, W, C_in)`` in [0, 1]."""

    plan: DecoderPlan

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        plan = self.plan
        if tuple(a.shape[1:]) != plan.act_shape:
            raise ShapeError(f"decoder built for activations {plan.act_shape} got {tuple(a.shape[1:])}")
        n = a.shape[0]
        if plan.entry == "dense":
            a = nn.relu(Linear(plan.entry_width, name="entry")(a.reshape(n, -1)))
            a = a.reshape(n, 1, 1, plan.entry_width)
        else:
            a = nn.relu(Conv2d(plan.entry_width, 3, padding=1, name="entry")(a))
        for i, width in enumerate(plan.widths[:-1]):
            a = nn.relu(ConvTranspose2d(width, 4, 2, 1, name=f"up{i}")(a))
        if plan.widths:
            a = ConvTranspose2d(plan.widths[-1], 4, 2, 1, name="out")(a)
        else:
            a = Conv2d(plan.image_shape[2], 3, padding=1, name="out")(a)
        return jax.nn.sigmoid(a)


def make_decoder(act_shape: Sequence[int], image_shape: Sequence[int], base_width: int = 64,
                 layer: str = "the layer") -> Decoder:
    """The decoder module for one layer (see :func:`plan_decoder`)."""
    return Decoder(plan_decoder(act_shape, image_shape, base_width, layer))


def init_decoder(decoder: Decoder, key: jax.Array) -> dict:
    """PyTorch-default-initialised ``params`` of ``decoder`` (no other collections)."""
    return _compiled_init(decoder, jax.typeof(key))(key)


def init_decoders(decoder: Decoder, keys: jax.Array) -> dict:
    """Stacked params of ``len(keys)`` independently initialised decoders (leading axis = model)."""
    init = _compiled_init(decoder, jax.typeof(keys[0]))
    return jax.tree.map(lambda *ps: jnp.stack(ps), *[init(k) for k in keys])


@functools.lru_cache(maxsize=32)
def _compiled_init(decoder: Decoder, key_type) -> Callable:
    # A handful of RNG kernels run once: XLA:CPU's optimizing backend took 25-35 s to compile them on the loaded
    # 2-core machine, level 0 about 6 s (the same trade-off as jinterp.backbones.init). Deterministic.
    x = jnp.zeros((1, *decoder.plan.act_shape), jnp.float32)
    lowered = jax.jit(lambda k: decoder.init(k, x)["params"]).lower(
        jax.ShapeDtypeStruct(key_type.shape, key_type.dtype))
    fast = jax.default_backend() == "cpu"
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0} if fast else None)


def num_params(params) -> int:
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))
