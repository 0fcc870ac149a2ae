"""Linen layers with PyTorch semantics and PyTorch default initialization.

Parameter names: ``kernel``/``bias`` for convolutions and dense layers; BatchNorm has params ``scale``/``bias``
and batch_stats ``mean``/``var``. ``jinterp.backbones.torch_import`` relies on these names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jinterp.nn import ops


def _torch_uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` (NHWC in and out). Init: kaiming-uniform(a=√5) like PyTorch."""

    features: int
    kernel_size: int | Sequence[int] = 3
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    groups: int = 1

    @nn.compact
    def __call__(self, x):
        kh, kw = ops._pair(self.kernel_size)
        cin = x.shape[-1]
        fan_in = cin // self.groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        kernel = self.param("kernel", _torch_uniform(bound), (kh, kw, cin // self.groups, self.features))
        y = ops.conv2d(x, kernel.astype(x.dtype), self.stride, self.padding, self.dilation, self.groups)
        if self.use_bias:
            y = y + self.param("bias", _torch_uniform(bound), (self.features,)).astype(x.dtype)
        return y


class ConvTranspose2d(nn.Module):
    """``torch.nn.ConvTranspose2d`` (NHWC). Kernel ``(kh, kw, in, out)``; init like PyTorch (fan_in = out·k²)."""

    features: int
    kernel_size: int | Sequence[int] = 4
    stride: int | Sequence[int] = 2
    padding: int | Sequence[int] = 1
    output_padding: int | Sequence[int] = 0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kh, kw = ops._pair(self.kernel_size)
        cin = x.shape[-1]
        # PyTorch computes fan_in from weight dim 1, which for ConvTranspose is out_channels.
        bound = 1.0 / math.sqrt(self.features * kh * kw)
        kernel = self.param("kernel", _torch_uniform(bound), (kh, kw, cin, self.features))
        y = ops.conv_transpose2d(x, kernel.astype(x.dtype), self.stride, self.padding, self.output_padding)
        if self.use_bias:
            y = y + self.param("bias", _torch_uniform(bound), (self.features,)).astype(x.dtype)
        return y


class Linear(nn.Module):
    """``torch.nn.Linear``; kernel ``(in, out)`` (PyTorch weight transposed)."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        bound = 1.0 / math.sqrt(x.shape[-1])
        kernel = self.param("kernel", _torch_uniform(bound), (x.shape[-1], self.features))
        y = jnp.dot(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", _torch_uniform(bound), (self.features,)).astype(x.dtype)
        return y


class BatchNorm2d(nn.Module):
    """``torch.nn.BatchNorm2d`` semantics on the last axis.

    Train mode normalizes with the biased batch variance and updates the running stats with PyTorch's
    ``momentum`` (new = (1 - m)·old + m·batch) and the *unbiased* variance, as PyTorch does, so converted
    weights fine-tune the same way. Works for any rank (BatchNorm1d on (N, C) too).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    affine: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = x.shape[-1]
        mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        axes = tuple(range(x.ndim - 1))
        if train:
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                mean_v.value = (1 - self.momentum) * mean_v.value + self.momentum * mean
                var_v.value = (1 - self.momentum) * var_v.value + self.momentum * unbiased
        else:
            mean, var = mean_v.value, var_v.value
        inv = jax.lax.rsqrt(var + self.epsilon)
        if self.affine:
            inv = inv * self.param("scale", nn.initializers.ones, (c,))
            shift = self.param("bias", nn.initializers.zeros, (c,)) - mean * inv
        else:
            shift = -mean * inv
        return (x * inv.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)
