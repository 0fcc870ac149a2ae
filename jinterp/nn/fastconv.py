"""Exact alternative formulations of 2-D convolution and transposed convolution (NHWC, PyTorch semantics).

XLA:CPU runs ``lax.conv_general_dilated`` through Eigen's spatial convolution. Its forward pass is acceptable, but
the convolutions that autodiff emits for gradients (input gradients of strided convs, and above all
*lhs-dilated* convolutions, i.e. transposed convolutions and their gradients) take a slow generic path: a ClaDec
decoder step ran ~4x slower than PyTorch. Each formulation here computes the same sums in a different order, as
matrix multiplications XLA:CPU runs well (YNNPACK/Eigen GEMM), so results agree with ``lax`` to float32 round-off:

* :func:`conv2d_lax_kgrad_unfused` — XLA's convolution, with the kernel gradient reading a materialized copy of
  the input so that XLA cannot fuse (and recompute, transposed) the input's producer chain into it.
* :func:`conv2d_im2col` — gather the ``kh·kw`` shifted (strided, dilated) views of the padded input into patches
  ``P`` of shape ``(N·Ho·Wo, kh·kw·Cin)`` and compute ``P @ W`` with the HWIO kernel reshaped to
  ``(kh·kw·Cin, Cout)``. Autodiff gives GEMMs for both gradients: ``dW = Pᵀ dY`` and ``dP = dY Wᵀ`` followed by
  the adjoint of the gather (pads and adds).
* :func:`conv_transpose2d_col2im` — PyTorch's own algorithm: one GEMM ``Z = X @ W`` with ``W`` reshaped to
  ``(Cin, kh·kw·Cout)``, then *col2im*: output pixel ``o = i·s - p + t`` receives ``Z[i, t]``. With the taps
  split as ``t = a·s + b`` (kernel zero-padded to a multiple of ``s``), ``o + p = (i + a)·s + b``, so col2im is a
  sum over ``a`` of ``Z[:, a]`` shifted by ``a`` rows (a pad), followed by interleaving ``(i + a, b)`` into one
  axis (a reshape). No multiply by the zeros that lhs dilation inserts; gradients are again GEMMs plus slices.
  Kernel taps that never reach the cropped output are dropped first (1x1 inputs: 4 of 16 taps for k=4, p=1).
* :func:`conv_transpose2d_pixels` — for inputs of a few pixels: one GEMM per input pixel with only the taps that
  reach the output (at 2x2 px with k=4, s=2, p=1, 9 of 16 per pixel), summed as padded copies.
* :func:`conv_transpose2d_subpixel` — the same map as one *stride-1* convolution producing ``s²·Cout`` channels
  (one per output phase ``b``) followed by depth-to-space; each phase uses the kernel taps ``t ≡ b + p (mod s)``
  in a common window of the input. Costs extra multiplies by zero taps (2.25x for k=4, s=2) but is a plain conv.

All functions take the kernel layouts of :mod:`jinterp.nn.ops` (HWIO for conv; ``(kh, kw, in, out)`` unflipped,
PyTorch orientation, for the transposed conv) and support ``groups=1`` only; ``ops`` falls back to ``lax`` for
grouped convolutions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def conv2d_lax(x: jax.Array, kernel: jax.Array, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
               groups: int = 1) -> jax.Array:
    """XLA's native convolution (the reference every other formulation is tested against)."""
    return lax.conv_general_dilated(x, kernel, tuple(stride), _pads(padding), rhs_dilation=tuple(dilation),
                                    dimension_numbers=_DN, feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_lax_kgrad_unfused(x: jax.Array, kernel: jax.Array, stride=(1, 1), padding=(0, 0),
                             dilation=(1, 1)) -> jax.Array:
    """:func:`conv2d_lax` (same forward, same ``dx``) whose kernel gradient reads a *materialized* copy of ``x``.

    Why: XLA:CPU computes ``dW`` as a convolution over ``x`` transposed to ``(Cin, H, W, N)`` and fuses the whole
    elementwise chain that produced ``x`` (train-mode BatchNorm, residual add, ReLU of up to three blocks) into that
    transpose, recomputing it in transposed order: ~40 % of a ResNet-20 backward (``experiments/README.md``).
    Barriers do not stop it (``optimization_barrier`` is removed before fusion; a trivial ``while`` is simplified
    away; a ``cond`` keeps the boundary but compiles its convolution naively, 20x slower). A matmul is a fusion
    boundary XLA keeps, so ``dW`` reads ``x @ I`` (``I`` the ``Cin x Cin`` identity): one small GEMM per conv, after
    which the transpose is a plain copy. ``x @ I`` equals ``x`` exactly for finite ``x`` (every product but one is
    a product with 0); an ``inf`` in ``x`` would spread NaN over its pixel's channels (training is broken then
    anyway). Shapes: ``x`` (N, H, W, Cin), ``kernel`` (kh, kw, Cin, Cout) -> (N, Ho, Wo, Cout); ``groups=1``.
    """
    return conv2d_lax(x, kernel, stride, padding, dilation)


def _kgrad_unfused_fwd(x, kernel, stride, padding, dilation):
    return conv2d_lax(x, kernel, stride, padding, dilation), (x, kernel)


def _kgrad_unfused_bwd(stride, padding, dilation, residuals, g):
    x, kernel = residuals
    _, vjp_x = jax.vjp(lambda a: conv2d_lax(a, kernel, stride, padding, dilation), x)
    x_copy = _materialized(x)
    _, vjp_w = jax.vjp(lambda w: conv2d_lax(x_copy, w, stride, padding, dilation), kernel)
    # The cotangent's transpose also holds a fused chain (the BatchNorm backward), but it keeps channels minor;
    # materializing it too measured 0.95-1.19x the time of this version (noise-level, not kept).
    return vjp_x(g)[0], vjp_w(g)[0]


def _materialized(a: jax.Array) -> jax.Array:
    """``a @ I`` over the last axis: the same values (finite ``a``) as a buffer XLA will not fuse producers into."""
    return jnp.dot(a, jnp.eye(a.shape[-1], dtype=a.dtype), precision=lax.Precision.HIGHEST)


conv2d_lax_kgrad_unfused.defvjp(_kgrad_unfused_fwd, _kgrad_unfused_bwd)


def _pads(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(ph, pw)`` (symmetric) or ``((lo, hi), (lo, hi))`` -> the latter."""
    return tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding)


def conv_out_size(size: int, k: int, stride: int, pads: tuple[int, int], dilation: int) -> int:
    """Output length of a convolution along one axis with padding ``(lo, hi)``."""
    return (size + pads[0] + pads[1] - dilation * (k - 1) - 1) // stride + 1


def im2col(x: jax.Array, kh: int, kw: int, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> jax.Array:
    """Patches ``(N, Ho, Wo, kh·kw·Cin)`` ordered (kh, kw, Cin) like a reshaped HWIO kernel.

    ``patch[n, y, x, (i, j, c)] = xpad[n, y·sh + i·dh, x·sw + j·dw, c]``, built from ``kh·kw`` strided slices (no
    multiplies, unlike ``lax.conv_general_dilated_patches`` which is itself a convolution). ``padding`` is
    ``(ph, pw)`` or ``((top, bottom), (left, right))``; negative values crop.
    """
    (sh, sw), (dh, dw) = stride, dilation
    (pt, pb), (pl, pr) = _pads(padding)
    n, h, w, c = x.shape
    ho, wo = conv_out_size(h, kh, sh, (pt, pb), dh), conv_out_size(w, kw, sw, (pl, pr), dw)
    xp = lax.pad(x, jnp.array(0, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0))) \
        if (pt or pb or pl or pr) else x
    if kh == kw == 1:
        return lax.slice(xp, (0, 0, 0, 0), (n, (ho - 1) * sh + 1, (wo - 1) * sw + 1, c), (1, sh, sw, 1))
    cols = [
        lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]
    return jnp.stack(cols, axis=3).reshape(n, ho, wo, kh * kw * c)


def conv2d_im2col(x: jax.Array, kernel: jax.Array, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> jax.Array:
    """``conv2d`` as patches @ kernel: ``Y[n, y, x, o] = Σ_(i,j,c) P[n, y, x, (i,j,c)] · W[i, j, c, o]``."""
    kh, kw, cin, cout = kernel.shape
    patches = im2col(x, kh, kw, stride, padding, dilation)
    return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout))


def _tap_outputs(out: int, tap: int, stride: int, pad: int, dilation: int, size: int) -> tuple[int, int]:
    """``[lo, hi)``: the outputs ``o`` whose input row ``o·stride + tap·dilation - pad`` lies inside ``[0, size)``."""
    inside = [o for o in range(out) if 0 <= o * stride + tap * dilation - pad < size]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def conv2d_taps(x: jax.Array, kernel: jax.Array, stride=(1, 1), padding=(0, 0), dilation=(1, 1)) -> jax.Array:
    """``conv2d`` for outputs of very few pixels as one GEMM per kernel tap over the outputs that tap reaches.

    ``Y[:, o] = Σ_(i, j) X[:, o·s + (i, j)·d - p] @ W[i, j]``: for each tap the input rows it reads inside the image
    form a strided slice, multiplied by ``W[i, j]`` (a contiguous ``(Cin, Cout)`` block: no kernel transpose) and
    padded into place. Taps that only read padding cost nothing, where oneDNN and im2col multiply them: at 2x2 px with
    a 3x3 kernel 16 of the 36 tap-pixel products are live. :mod:`jinterp.nn.ops` uses this for ``Ho·Wo <= 4``
    (ClaDec decoder entry 512->512 @2 px, f+b 2.2x faster than oneDNN, ``experiments/README.md``). The Python loop
    runs over the ``kh·kw`` static taps. Shapes as :func:`conv2d_im2col`; ``padding`` as :func:`im2col`.
    """
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    (sh, sw), (dh, dw) = stride, dilation
    (pt, pb), (pl, pr) = _pads(padding)
    ho, wo = conv_out_size(h, kh, sh, (pt, pb), dh), conv_out_size(w, kw, sw, (pl, pr), dw)
    y = None
    for i in range(kh):
        r0, r1 = _tap_outputs(ho, i, sh, pt, dh, h)
        for j in range(kw):
            c0, c1 = _tap_outputs(wo, j, sw, pl, dw, w)
            if r1 <= r0 or c1 <= c0:
                continue
            top, left = r0 * sh + i * dh - pt, c0 * sw + j * dw - pl
            rows = lax.slice(x, (0, top, left, 0), (n, top + (r1 - r0 - 1) * sh + 1, left + (c1 - c0 - 1) * sw + 1,
                                                    cin), (1, sh, sw, 1))
            term = lax.pad(jnp.dot(rows, kernel[i, j]), jnp.array(0, x.dtype),
                           ((0, 0, 0), (r0, ho - r1, 0), (c0, wo - c1, 0), (0, 0, 0)))
            y = term if y is None else y + term
    return y if y is not None else jnp.zeros((n, ho, wo, cout), jnp.result_type(x, kernel))


# ------------------------------------------------------------------------------------------- transposed


def conv_transpose_out_size(size: int, k: int, stride: int, pad: int, output_padding: int) -> int:
    """PyTorch's ``(size - 1)·stride - 2·pad + k + output_padding``."""
    return (size - 1) * stride - 2 * pad + k + output_padding


def conv_transpose2d_lax(x: jax.Array, kernel: jax.Array, stride=(2, 2), padding=(0, 0),
                         output_padding=(0, 0)) -> jax.Array:
    """XLA's formulation: a stride-1 conv of the lhs-dilated input with the spatially flipped kernel."""
    kh, kw = kernel.shape[:2]
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    return lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1),
        ((kh - 1 - ph, kh - 1 - ph + oh), (kw - 1 - pw, kw - 1 - pw + ow)),
        lhs_dilation=(sh, sw), dimension_numbers=_DN)


def _crop_or_pad(y: jax.Array, axis: int, start: int, length: int) -> jax.Array:
    """``y[start:start + length]`` along ``axis``, zero-extending past the end (PyTorch's output_padding)."""
    extra = start + length - y.shape[axis]
    if extra > 0:
        widths = [(0, 0)] * y.ndim
        widths[axis] = (0, extra)
        y = jnp.pad(y, widths)
    return lax.slice_in_dim(y, start, start + length, axis=axis)


def conv_transpose2d_col2im(x: jax.Array, kernel: jax.Array, stride=(2, 2), padding=(0, 0),
                            output_padding=(0, 0)) -> jax.Array:
    """Transposed conv as one GEMM and col2im (shift-adds), exactly PyTorch's ``conv_transpose2d``.

    ``Z[n, i, j, (t, u, o)] = Σ_c X[n, i, j, c] · W[t, u, c, o]``; output ``Y[i·s + t - p, j·s + u - p] += Z``.
    Taps ``t = a·s + b`` (``a < A = ceil(k/s)``): ``Y_full[(i+a)·s + b] = Σ_a Z[i, a, b]``, computed as ``A_h·A_w``
    padded copies of ``Z`` summed, then reshaped so that ``(m, b)`` becomes ``m·s + b``, then cropped by ``p``.
    """
    n, h, w, cin = x.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    out_h = conv_transpose_out_size(h, kernel.shape[0], sh, ph, oh)
    out_w = conv_transpose_out_size(w, kernel.shape[1], sw, pw, ow)
    # Taps that never reach the cropped output (e.g. 1x1 inputs: k=4, p=1 keeps taps 1-2 of 0-3, a quarter of the
    # GEMM) are dropped; their kernel gradient is exactly zero either way (the slice's adjoint pads with zeros).
    (th0, th1), (tw0, tw1) = _live_taps(h, kernel.shape[0], sh, ph, out_h), _live_taps(w, kernel.shape[1], sw, pw,
                                                                                       out_w)
    kernel = kernel[th0:th1, tw0:tw1]
    ph, pw = ph - th0, pw - tw0
    kh, kw, _, cout = kernel.shape
    ah, aw = -(-kh // sh), -(-kw // sw)
    # Kernel zero-padded to (ah·sh, aw·sw) taps; the extra taps only write outside the cropped output.
    wk = jnp.pad(kernel, ((0, ah * sh - kh), (0, aw * sw - kw), (0, 0), (0, 0)))
    wmat = jnp.transpose(wk, (2, 0, 1, 3)).reshape(cin, ah * sh * aw * sw * cout)
    z = jnp.dot(x.reshape(n * h * w, cin), wmat).reshape(n, h, w, ah, sh, aw, sw, cout)
    full = None
    for a in range(ah):
        for b in range(aw):
            term = jnp.pad(z[:, :, :, a, :, b, :, :],
                           ((0, 0), (a, ah - 1 - a), (b, aw - 1 - b), (0, 0), (0, 0), (0, 0)))
            full = term if full is None else full + term
    mh, mw = h + ah - 1, w + aw - 1
    full = jnp.transpose(full, (0, 1, 3, 2, 4, 5)).reshape(n, mh * sh, mw * sw, cout)
    return _crop_or_pad(_crop_or_pad(full, 1, ph, out_h), 2, pw, out_w)


def conv_transpose2d_pixels(x: jax.Array, kernel: jax.Array, stride=(2, 2), padding=(0, 0),
                            output_padding=(0, 0)) -> jax.Array:
    """Transposed conv for inputs of very few pixels: one GEMM per input pixel with only its live taps.

    Input pixel ``(i, j)`` writes ``Y[i·s + t - p, j·s + u - p] += X[:, i, j] @ W[t, u]`` for the taps whose output
    lies inside the (cropped) image, ``t`` in :func:`_live_taps` of that single row. col2im multiplies every pixel by
    all ``kh·kw`` taps and crops afterwards: at 2x2 px with k=4, s=2, p=1 that is 16 taps per pixel where 9 reach
    the output. The Python loop runs over the ``H·W`` pixels (static, few: :mod:`jinterp.nn.ops` uses this for
    ``H·W <= 4``). Shapes as :func:`conv_transpose2d_col2im`.
    """
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    out_h = conv_transpose_out_size(h, kh, sh, ph, oh)
    out_w = conv_transpose_out_size(w, kw, sw, pw, ow)
    y = None
    for i in range(h):
        t0, t1 = _live_taps(1, kh, sh, ph - i * sh, out_h)
        for j in range(w):
            u0, u1 = _live_taps(1, kw, sw, pw - j * sw, out_w)
            if t1 <= t0 or u1 <= u0:
                continue
            k_ij = kernel[t0:t1, u0:u1]
            wmat = jnp.transpose(k_ij, (2, 0, 1, 3)).reshape(cin, -1)
            z = jnp.dot(x[:, i, j, :], wmat).reshape(n, t1 - t0, u1 - u0, cout)
            r0, c0 = i * sh + t0 - ph, j * sw + u0 - pw  # first output row / column this pixel writes
            term = jnp.pad(z, ((0, 0), (r0, out_h - r0 - (t1 - t0)), (c0, out_w - c0 - (u1 - u0)), (0, 0)))
            y = term if y is None else y + term
    return y if y is not None else jnp.zeros((n, out_h, out_w, cout), x.dtype)


def _live_taps(size: int, k: int, stride: int, pad: int, out: int) -> tuple[int, int]:
    """``[lo, hi)``: the kernel taps ``t`` for which some input ``i < size`` writes inside the output,
    ``0 <= i·stride + t - pad < out``; the others only write into the cropped border."""
    return max(0, pad - (size - 1) * stride), min(k, out + pad)


def _phase_taps(k: int, s: int, p: int, r: int) -> tuple[int, int, int]:
    """For output phase ``r`` (``o = m·s + r``): first tap ``t_r ≡ r + p (mod s)``, input offset
    ``c_r = (r + p) // s`` and tap count ``J_r``: ``Y[m·s + r] = Σ_j X[m + c_r - j] · W[t_r + j·s]``."""
    t = (r + p) % s
    return t, (r + p) // s, max(0, -(-(k - t) // s))


def subpixel_kernel(kernel: jax.Array, stride=(2, 2), padding=(0, 0)) -> tuple[jax.Array, tuple[int, int]]:
    """The stride-1 HWIO kernel ``(Kh, Kw, Cin, sh·sw·Cout)`` of :func:`conv_transpose2d_subpixel` and the input
    offsets ``lo`` (window start relative to ``m``) per axis.

    Phase ``r`` reads ``X[m + lo + u]`` for ``u < K`` with weight ``W[t_r + (c_r - lo - u)·s]`` where that tap
    exists (``0 ≤ c_r - lo - u < J_r``), zero elsewhere. Output channels are ordered ``(r_h, r_w, Cout)``.
    """
    kh, kw, cin, cout = kernel.shape
    axes = []
    for k, s, p in ((kh, stride[0], padding[0]), (kw, stride[1], padding[1])):
        phases = [_phase_taps(k, s, p, r) for r in range(s)]
        lo = min(c - j + 1 for _, c, j in phases)
        hi = max(c for _, c, _ in phases)
        size = hi - lo + 1
        # sel[u, r] = tap index or -1: a gather matrix from the k taps to (window position, phase).
        sel = [[(t + (c - lo - u) * s) if 0 <= c - lo - u < j else -1 for (t, c, j) in phases] for u in range(size)]
        axes.append((lo, size, sel))
    (loh, kh2, selh), (low, kw2, selw) = axes
    # One-hot selection matrices E[u, r, t] so the kernel is an exact gather (products with 0/1 are exact).
    eh = jnp.asarray([[[1.0 if t == v else 0.0 for t in range(kh)] for v in row] for row in selh], kernel.dtype)
    ew = jnp.asarray([[[1.0 if t == v else 0.0 for t in range(kw)] for v in row] for row in selw], kernel.dtype)
    big = jnp.einsum("uat,vbq,tqio->uviabo", eh, ew, kernel, precision=lax.Precision.HIGHEST)
    return big.reshape(kh2, kw2, cin, stride[0] * stride[1] * cout), (loh, low)


def depth_to_space(y: jax.Array, sh: int, sw: int) -> jax.Array:
    """``(N, M, L, sh·sw·C)`` with channels ``(r_h, r_w, C)`` -> ``(N, M·sh, L·sw, C)``, pixel ``(m·sh + r_h, ...)``."""
    n, m, q, c = y.shape
    c //= sh * sw
    return jnp.transpose(y.reshape(n, m, q, sh, sw, c), (0, 1, 3, 2, 4, 5)).reshape(n, m * sh, q * sw, c)


def conv_transpose2d_subpixel(x: jax.Array, kernel: jax.Array, stride=(2, 2), padding=(0, 0),
                              output_padding=(0, 0), conv=None) -> jax.Array:
    """Transposed conv as a stride-1 conv with ``sh·sw·Cout`` output channels, then depth-to-space.

    ``conv(x, kernel, padding)`` is the stride-1 conv to use (:func:`conv2d_lax` or :func:`conv2d_im2col`,
    called with ``padding=((top, bottom), (left, right))``); default XLA's.
    """
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, output_padding
    big, (loh, low) = subpixel_kernel(kernel, stride, padding)
    out_h = conv_transpose_out_size(h, kh, sh, ph, oh)
    out_w = conv_transpose_out_size(w, kw, sw, pw, ow)
    mh, mw = -(-out_h // sh), -(-out_w // sw)
    k2h, k2w = big.shape[:2]
    # Window of output m starts at input m + lo; pad so that rows lo .. mh - 1 + lo + k2h - 1 exist.
    pads = ((-loh, mh - 1 + loh + k2h - h), (-low, mw - 1 + low + k2w - w))
    y = (conv or conv2d_lax)(x, big, padding=pads)
    y = depth_to_space(y, sh, sw)
    return y[:, :out_h, :out_w, :]
