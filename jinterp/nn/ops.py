"""Array ops with PyTorch semantics, NHWC.

These are the single place where jinterp calls XLA's convolution and pooling primitives, so a faster exact
formulation (see ``experiments/bench/conv.py``) replaces them for every backbone, decoder and explainer at once.

Convolution dispatch (decided at trace time; every path is exact to float32 round-off, see
``jinterp.nn.fastconv`` and ``tests/nn/test_fastconv.py``):
  * non-CPU backends or ``JINTERP_FASTCONV=0`` in the environment: XLA's native convolution.
  * CPU ``conv2d`` with outputs of at most 4 pixels (no groups): one GEMM per kernel tap over the outputs it
    reaches (:func:`fastconv.conv2d_taps`), which skips the taps that read only padding: ClaDec's decoder entry
    512->512 @2 px f+b 14.5 vs 31.8 ms with oneDNN, @1 px 1.3 vs 8.4 ms; at 4x4 px they were equal.
  * CPU ``conv2d`` otherwise (float32, any stride/padding/dilation/groups, more than one input channel): oneDNN's
    forward, backward-data and backward-weights primitives as XLA FFI custom calls (:mod:`jinterp.nn._onednn`, built at
    first use; ResNet-20 train step 0.68x the time of the path below, every ResNet-20 conv shape at 0.35-0.65x
    PyTorch's f+b, ``experiments/README.md``). With one input channel XLA's path stayed faster (30 vs 12 ms).
    Where the library cannot be built (one warning), or with ``JINTERP_ONEDNN=0``, the paths below apply.
  * grouped convs otherwise: XLA's native convolution.
  * CPU ``conv_transpose2d``, by input size (ClaDec decoder layers, batch 128, one alternating run on the loaded
    2-core machine, f+b time as a fraction of PyTorch's, ``experiments/README.md``):
    - at most 4 input pixels: one GEMM per input pixel with only the taps that reach the output
      (:func:`fastconv.conv_transpose2d_pixels`; 512->512 @1 px 0.17x, 512->256 @2 px 0.51x, where col2im, which
      multiplies every pixel by all taps and crops, took 0.77x and oneDNN 1.04x);
    - float32, at least 16 input pixels and 16 output channels: oneDNN, the transposed conv being the
      backward-data of the conv with the kernel's channel axes swapped (:func:`jinterp.nn._onednn.conv_transpose2d`;
      256->128 @4 px 0.92x, 128->64 @8 px 0.91x, where col2im took 1.5x and 2.0x);
    - otherwise GEMM + col2im (:func:`fastconv.conv_transpose2d_col2im`): with few output channels oneDNN's
      backward-data is poorly vectorized (64->1 @16 px forward 19 ms vs col2im's 3 ms).
    XLA's lhs-dilated convolution and its gradients were 2-13x slower than PyTorch.
  * CPU ``conv2d``: im2col + GEMM for 1x1 kernels and for small outputs (``Ho·Wo <= 16``, where Eigen's spatial
    convolution was up to 47x slower than PyTorch, e.g. 256->512 channels at 2x2 px); XLA's convolution
    otherwise (it was as fast as or faster than im2col there), with the kernel gradient reading a materialized
    input (:func:`fastconv.conv2d_lax_kgrad_unfused`: XLA otherwise recomputes the BatchNorm/residual/ReLU chain
    inside the transpose that feeds it: ResNet-20 train step 0.77x and CSG standard step 0.72x the time
    before, in one alternating run; steps whose conv inputs are plain arrays, e.g. the explainer's, unchanged).
  * CPU ``max_pool2d`` with kernel == stride and no padding: reshape + max with a fused first-maximum gradient
    (:func:`_max_pool_blocks`); XLA's select-and-scatter gradient was 3-5x slower than PyTorch's.

Kernel layouts (stored in Flax params):
  * ``conv2d``: ``(kh, kw, in, out)`` (HWIO) — ``torch_weight.transpose(2, 3, 1, 0)``.
  * ``conv_transpose2d``: ``(kh, kw, in, out)`` where ``in`` is the transposed conv's input channels, *not*
    spatially flipped — ``torch_weight.transpose(2, 3, 0, 1)`` of PyTorch's ``(in, out, kh, kw)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jinterp.nn import _onednn, fastconv

Pair = tuple[int, int]


def _pair(v: int | Sequence[int]) -> Pair:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


# Outputs with at most this many pixels use per-tap GEMMs, then (without oneDNN) im2col on CPU (module docstring).
_TAPS_MAX_OUT_PIXELS = 4
_IM2COL_MAX_OUT_PIXELS = 16


def fast_paths_enabled() -> bool:
    """True where the CPU formulations of :mod:`jinterp.nn.fastconv` apply: the default backend is the CPU and
    ``JINTERP_FASTCONV`` is not ``0`` (read at trace time, so already-compiled functions keep their path)."""
    return os.environ.get("JINTERP_FASTCONV", "1") != "0" and jax.default_backend() == "cpu"


def conv2d_formulation(x_shape, kernel_shape, stride=1, padding=0, dilation=1, groups: int = 1,
                       dtype=jnp.float32) -> str:
    """Which formulation :func:`conv2d` uses for these static shapes: ``"taps"``, ``"onednn"``, ``"lax"`` or
    ``"im2col"``
    (asking may build the oneDNN library, see :func:`jinterp.nn._onednn.available`)."""
    if not fast_paths_enabled():
        return "lax"
    kh, kw = kernel_shape[:2]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = fastconv.conv_out_size(x_shape[1], kh, sh, (ph, ph), dh)
    wo = fastconv.conv_out_size(x_shape[2], kw, sw, (pw, pw), dw)
    if groups == 1 and ho * wo <= _TAPS_MAX_OUT_PIXELS and min(ph, pw) >= 0:
        return "taps"
    if (os.environ.get("JINTERP_ONEDNN", "1") != "0" and jnp.dtype(dtype) == jnp.float32 and x_shape[-1] > 1
            and min(ph, pw) >= 0 and _onednn.available()):
        return "onednn"
    if groups != 1:
        return "lax"
    if (kh, kw) == (1, 1) or ho * wo <= _IM2COL_MAX_OUT_PIXELS:
        return "im2col"
    return "lax"


def conv2d(x: jax.Array, kernel: jax.Array, stride=1, padding=0, dilation=1, groups: int = 1) -> jax.Array:
    """``torch.nn.functional.conv2d`` on NHWC input with an HWIO kernel; symmetric integer padding."""
    args = (_pair(stride), _pair(padding), _pair(dilation))
    formulation = conv2d_formulation(x.shape, kernel.shape, stride, padding, dilation, groups,
                                     jnp.result_type(x, kernel))
    if formulation == "onednn":
        (ph, pw) = args[1]
        f32 = jnp.float32  # no-op casts for float32 operands (lax would reject mixed dtypes anyway)
        return _onednn.conv2d(x.astype(f32), kernel.astype(f32), args[0], ((ph, ph), (pw, pw)), args[2], groups)
    if formulation == "taps":
        return fastconv.conv2d_taps(x, kernel, *args)
    if formulation == "im2col":
        return fastconv.conv2d_im2col(x, kernel, *args)
    if groups == 1 and fast_paths_enabled():
        return fastconv.conv2d_lax_kgrad_unfused(x, kernel, *args)
    return fastconv.conv2d_lax(x, kernel, *args, groups=groups)


# oneDNN runs a transposed conv only from this many input pixels and output channels on; inputs of at most
# _PIXELS_T_MAX_IN_PIXELS pixels use one GEMM per pixel (see the module docstring).
_ONEDNN_T_MIN_IN_PIXELS = 16
_ONEDNN_T_MIN_OUT_CHANNELS = 16
_PIXELS_T_MAX_IN_PIXELS = 4


def conv_transpose2d_formulation(x_shape, kernel_shape, stride=1, padding=0, output_padding=0,
                                 dtype=jnp.float32) -> str:
    """Which formulation :func:`conv_transpose2d` uses for these static shapes: ``"onednn"``, ``"pixels"``,
    ``"col2im"`` or ``"lax"`` (asking may build the oneDNN library, see :func:`jinterp.nn._onednn.available`)."""
    if not fast_paths_enabled():
        return "lax"
    if x_shape[1] * x_shape[2] <= _PIXELS_T_MAX_IN_PIXELS:
        return "pixels"
    (sh, sw), (ph, pw), (oh, ow) = _pair(stride), _pair(padding), _pair(output_padding)
    if (os.environ.get("JINTERP_ONEDNN", "1") != "0" and jnp.dtype(dtype) == jnp.float32
            and x_shape[1] * x_shape[2] >= _ONEDNN_T_MIN_IN_PIXELS and kernel_shape[-1] >= _ONEDNN_T_MIN_OUT_CHANNELS
            and min(ph, pw) >= 0 and 0 <= oh < sh and 0 <= ow < sw and _onednn.available()):
        return "onednn"
    return "col2im"


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride=1, padding=0, output_padding=0) -> jax.Array:
    """``torch.nn.functional.conv_transpose2d`` on NHWC input.

    ``kernel`` is ``(kh, kw, in, out)`` with PyTorch's spatial orientation. Output size per axis:
    ``(H - 1) * stride - 2 * padding + k + output_padding``. CPU: oneDNN or GEMM + col2im by shape (module
    docstring); elsewhere XLA's lhs-dilated conv.
    """
    args = (_pair(stride), _pair(padding), _pair(output_padding))
    formulation = conv_transpose2d_formulation(x.shape, kernel.shape, *args, dtype=jnp.result_type(x, kernel))
    if formulation == "onednn":
        f32 = jnp.float32  # no-op casts for float32 operands
        return _onednn.conv_transpose2d(x.astype(f32), kernel.astype(f32), *args)
    if formulation == "pixels":
        return fastconv.conv_transpose2d_pixels(x, kernel, *args)
    if formulation == "col2im":
        return fastconv.conv_transpose2d_col2im(x, kernel, *args)
    return fastconv.conv_transpose2d_lax(x, kernel, *args)


def _pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    # PyTorch's rule, including "the last window must start inside the input or left padding".
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def max_pool2d(x: jax.Array, kernel_size, stride=None, padding=0, ceil_mode: bool = False) -> jax.Array:
    """``torch.nn.functional.max_pool2d`` on NHWC (padding with -inf, PyTorch's ceil-mode rule)."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    pads = []
    for axis in range(2):
        size = x.shape[1 + axis]
        out = _pool_out(size, k[axis], s[axis], p[axis], ceil_mode)
        hi = max((out - 1) * s[axis] + k[axis] - size - p[axis], 0)
        pads.append((p[axis], hi))
    if k == s and p == (0, 0) and fast_paths_enabled():
        return _max_pool_blocks(x, k, pads)
    # A Python scalar init (not an array) keeps reduce_window differentiable under jit.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)))


def _max_pool_blocks(x: jax.Array, k: tuple[int, int], pads) -> jax.Array:
    """Non-overlapping max pooling (kernel == stride, no padding) as a reshape + max, same values and gradient
    as ``reduce_window``. Why: XLA:CPU's gradient of ``reduce_window`` max (select-and-scatter) took 3-5x
    PyTorch's time and dominated the ConvNet train step; here the gradient is elementwise and fuses."""
    (kh, kw), ((_, hi_h), (_, hi_w)) = k, pads
    h = (x.shape[1] + hi_h) // kh * kh
    w = (x.shape[2] + hi_w) // kw * kw
    if hi_h or hi_w:  # ceil mode: the partial last window sees -inf padding, as in reduce_window
        x = jnp.pad(x, ((0, 0), (0, hi_h), (0, hi_w), (0, 0)), constant_values=-jnp.inf)
    return _block_max(x[:, :h, :w], kh, kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _block_max(x: jax.Array, kh: int, kw: int) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // kh, kh, w // kw, kw, c).max(axis=(2, 4))


def _block_max_fwd(x, kh, kw):
    return _block_max(x, kh, kw), x


def _block_max_bwd(kh, kw, x, g):
    # The whole cotangent goes to the first maximum of each window in row-major order, as XLA's
    # select-and-scatter (select = ge) and PyTorch's max-pool index do; ties are not split.
    n, h, w, c = x.shape
    xb = x.reshape(n, h // kh, kh, w // kw, kw, c)
    m = xb.max(axis=(2, 4))
    taken = jnp.zeros(m.shape, bool)
    rows = []
    for i in range(kh):  # a static loop over the kernel's few positions, unrolled into one fused kernel
        cols = []
        for j in range(kw):
            sel = (xb[:, :, i, :, j, :] == m) & ~taken
            taken = taken | sel
            cols.append(jnp.where(sel, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(cols, axis=3))  # (n, h/kh, w/kw, kw, c)
    gx = jnp.stack(rows, axis=2)  # (n, h/kh, kh, w/kw, kw, c)
    return (gx.reshape(n, h, w, c),)


_block_max.defvjp(_block_max_fwd, _block_max_bwd)


def avg_pool2d(x: jax.Array, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> jax.Array:
    """``torch.nn.functional.avg_pool2d`` on NHWC (floor mode)."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    pads = ((0, 0), (p[0], p[0]), (p[1], p[1]), (0, 0))
    summed = lax.reduce_window(x, 0.0, lax.add, (1, *k, 1), (1, *s, 1), pads)
    if count_include_pad:
        return summed / (k[0] * k[1])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    counts = lax.reduce_window(ones, 0.0, lax.add, (1, *k, 1), (1, *s, 1), pads)
    return summed / counts


def _adaptive_matrix(size: int, out: int, dtype) -> jax.Array:
    # Row i averages input indices [floor(i*size/out), ceil((i+1)*size/out)), PyTorch's bin edges.
    rows = []
    for i in range(out):
        start = (i * size) // out
        end = -(-((i + 1) * size) // out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size)])
    return jnp.asarray(rows, dtype)


def adaptive_avg_pool2d(x: jax.Array, output_size) -> jax.Array:
    """``torch.nn.functional.adaptive_avg_pool2d`` on NHWC, as two small averaging matmuls (exact bins)."""
    oh, ow = _pair(output_size)
    h, w = x.shape[1:3]
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    if (oh, ow) == (h, w):
        return x
    ah = _adaptive_matrix(h, oh, x.dtype)
    aw = _adaptive_matrix(w, ow, x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", ah, x, aw, precision=lax.Precision.HIGHEST)


def flatten_nchw(x: jax.Array) -> jax.Array:
    """Flatten NHWC features in PyTorch's C·H·W order, so converted fully connected weights apply unchanged."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
