"""Every convolution formulation equals XLA's native one (forward and both gradients) to float32 round-off, and
the layers equal PyTorch's."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jinterp.nn import fastconv, ops
from jinterp.nn.layers import Conv2d, ConvTranspose2d

RTOL = 2e-5  # relative to the largest |value|: float32 round-off of sums of up to a few hundred products


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(float(np.max(np.abs(b))), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=rtol)


def _rand(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32))


def _check_vjp(f, g_ref, x, w):
    """Forward and (dx, dw) of ``f`` equal those of ``g_ref`` for a random cotangent (one jit: one compile)."""
    out_shape = jax.eval_shape(g_ref, x, w).shape
    ct = _rand(np.random.default_rng(1), *out_shape)

    @jax.jit
    def both(x, w, ct):
        y, vjp = jax.vjp(f, x, w)
        y_ref, vjp_ref = jax.vjp(g_ref, x, w)
        return (y, *vjp(ct)), (y_ref, *vjp_ref(ct))

    got, ref = both(x, w, ct)
    for a, b in zip(got, ref, strict=True):
        _close(a, b)


# --------------------------------------------------------------------------------------------- conv2d

CONV_CASES = [  # (n, h, w, cin, cout, k, stride, padding, dilation)
    (2, 8, 8, 3, 5, 3, 1, 1, 1),
    (2, 9, 7, 4, 6, 3, 2, 1, 1),
    (2, 7, 7, 2, 3, 1, 2, 0, 1),
    (1, 11, 11, 3, 4, 7, 2, 3, 1),
    (2, 8, 8, 3, 4, 3, 1, 2, 2),
    (2, 2, 2, 8, 16, 3, 1, 1, 1),
    (3, 5, 6, 2, 3, 2, 1, 0, 1),
]


# The formulations that take any stride, padding (asymmetric, negative: crops) and dilation.
GEMM_CONVS = {"im2col": fastconv.conv2d_im2col, "taps": fastconv.conv2d_taps}


@pytest.mark.parametrize("name", GEMM_CONVS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gemm_formulations_match_lax(case, name):
    n, h, w, cin, cout, k, s, p, d = case
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, k, k, cin, cout)
    args = ((s, s), (p, p), (d, d))
    _check_vjp(lambda a, b: GEMM_CONVS[name](a, b, *args), lambda a, b: fastconv.conv2d_lax(a, b, *args), x, kern)


@pytest.mark.parametrize("name", GEMM_CONVS)
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), cin=st.integers(1, 4),
       cout=st.integers(1, 4), kh=st.integers(1, 4), kw=st.integers(1, 4), s=st.integers(1, 3),
       pt=st.integers(-1, 3), pb=st.integers(0, 3), d=st.integers(1, 2))
def test_conv2d_gemm_formulations_hypothesis(name, n, h, w, cin, cout, kh, kw, s, pt, pb, d):
    pads = ((pt, pb), (pb, pt))
    if min(h + pt + pb - d * (kh - 1) - 1, w + pt + pb - d * (kw - 1) - 1) < 0:
        return  # empty output
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, kh, kw, cin, cout)
    _check_vjp(lambda a, b: GEMM_CONVS[name](a, b, (s, s), pads, (d, d)),
               lambda a, b: fastconv.conv2d_lax(a, b, (s, s), pads, (d, d)), x, kern)


@pytest.mark.parametrize("name", GEMM_CONVS)
def test_gemm_formulations_asymmetric_and_negative_padding(name):
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, 2, 6, 5, 3), _rand(rng, 3, 2, 3, 4)
    pads = ((2, -1), (0, 1))
    _check_vjp(lambda a, b: GEMM_CONVS[name](a, b, (1, 1), pads),
               lambda a, b: fastconv.conv2d_lax(a, b, (1, 1), pads), x, kern)


def test_conv2d_taps_vmap_and_only_live_taps():
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, 3, 2, 2, 2, 4), _rand(rng, 3, 3, 3, 4, 5)
    got = jax.vmap(lambda a, b: fastconv.conv2d_taps(a, b, (1, 1), (1, 1)))(x, kern)
    ref = jax.vmap(lambda a, b: fastconv.conv2d_lax(a, b, (1, 1), (1, 1)))(x, kern)
    _close(got, ref)
    # At 2x2 px with a 3x3 kernel and padding 1 every one of the 9 taps reaches some output, with 16 live
    # tap-pixel products in all: the GEMMs' rows sum to 16 per image.
    hlo = jax.jit(lambda a, b: fastconv.conv2d_taps(a, b, (1, 1), (1, 1))).lower(x[0], kern[0]).as_text()
    dots = re.findall(r"stablehlo.dot_general %\S+, %\S+, contracting_dims = \[3\] x \[0\][^:]*: "
                      r"\(tensor<2x(\d+)x(\d+)x4xf32>", hlo)
    assert len(dots) == 9 and sum(int(a) * int(b) for a, b in dots) == 16


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_kgrad_unfused_matches_lax(case):
    n, h, w, cin, cout, k, s, p, d = case
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, k, k, cin, cout)
    args = ((s, s), (p, p), (d, d))
    _check_vjp(lambda a, b: fastconv.conv2d_lax_kgrad_unfused(a, b, *args),
               lambda a, b: fastconv.conv2d_lax(a, b, *args), x, kern)


def test_conv2d_kgrad_unfused_second_order_and_vmap():
    """Gradients of gradients (a penalty on dW) and a vmap over stacked kernels (the explainer/α sweeps) match."""
    rng = np.random.default_rng(3)
    x, kerns = _rand(rng, 2, 6, 6, 3), _rand(rng, 4, 3, 3, 3, 5)

    def penalty(conv, k):
        dw = jax.grad(lambda kk: jnp.sum(jnp.tanh(conv(x, kk, (1, 1), (1, 1), (1, 1)))))(k)
        return jnp.sum(dw ** 2)

    got = jax.jit(jax.grad(lambda k: penalty(fastconv.conv2d_lax_kgrad_unfused, k)))(kerns[0])
    ref = jax.jit(jax.grad(lambda k: penalty(fastconv.conv2d_lax, k)))(kerns[0])
    _close(got, ref)

    def batched(conv):
        loss = lambda k: jnp.sum(jnp.sin(conv(x, k, (2, 2), (1, 1), (1, 1))))  # noqa: E731
        return jax.jit(jax.vmap(jax.grad(loss)))(kerns)

    _close(batched(fastconv.conv2d_lax_kgrad_unfused), batched(fastconv.conv2d_lax))


def _transposes_reading_the_chain(conv) -> list[str]:
    """Optimized-HLO fusions of a conv's gradient that transpose the conv input while recomputing the
    BatchNorm/ReLU chain that produced it (more than one operand)."""
    import re

    def loss(k, x, scale):
        h = jax.nn.relu(x * scale + 1.0)  # an elementwise producer chain, as BN + ReLU in a ResNet
        return jnp.sum(conv(h, k, (1, 1), (1, 1), (1, 1)) ** 2)

    rng = np.random.default_rng(0)
    x, k = _rand(rng, 8, 16, 16, 16), _rand(rng, 3, 3, 16, 16)
    hlo = jax.jit(jax.grad(loss)).lower(k, x, 2.0).compile().as_text()
    entry = hlo.split("ENTRY", 1)[1]
    # The input transposed for the kernel gradient: (Cin, H, W, N) = f32[16,16,16,8].
    fusions = [ln for ln in entry.splitlines() if re.search(r"= f32\[16,16,16,8\]\S* fusion\(", ln)]
    assert fusions, "expected the kernel gradient to read a transposed copy of the input"
    return [ln for ln in fusions if "%x" in ln.split("fusion(", 1)[1]]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU fusion behaviour")
def test_conv2d_kgrad_unfused_keeps_the_chain_out_of_the_transpose():
    assert _transposes_reading_the_chain(fastconv.conv2d_lax), "XLA no longer fuses the chain: drop the workaround"
    assert not _transposes_reading_the_chain(fastconv.conv2d_lax_kgrad_unfused)


# ------------------------------------------------------------------------------------ conv_transpose2d

CONVT_CASES = [  # (n, h, w, cin, cout, k, stride, padding, output_padding)
    (2, 4, 4, 3, 5, 4, 2, 1, 0),  # ClaDec decoder layer
    (2, 1, 1, 6, 5, 4, 2, 1, 0),  # 1 -> 2 px
    (2, 5, 3, 2, 3, 3, 2, 1, 1),
    (2, 4, 4, 2, 3, 3, 1, 0, 0),
    (1, 3, 3, 2, 3, 5, 3, 2, 2),
    (2, 6, 5, 2, 2, 2, 2, 0, 0),
    (2, 4, 4, 2, 3, 4, 2, 3, 1),
    (1, 2, 1, 2, 3, 5, 2, 2, 1),  # col2im drops taps that never reach the output (2 of 5 along W)
]

FORMULATIONS = {
    "col2im": fastconv.conv_transpose2d_col2im,
    "pixels": fastconv.conv_transpose2d_pixels,
    "subpixel": fastconv.conv_transpose2d_subpixel,
    "subpixel_im2col": lambda x, w, s, p, op: fastconv.conv_transpose2d_subpixel(
        x, w, s, p, op, conv=lambda a, b, padding: fastconv.conv2d_im2col(a, b, (1, 1), padding)),
}


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose2d_formulations_match_lax(case, name):
    n, h, w, cin, cout, k, s, p, op = case
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, k, k, cin, cout)
    args = ((s, s), (p, p), (op, op))
    f = FORMULATIONS[name]
    _check_vjp(lambda a, b: f(a, b, *args), lambda a, b: fastconv.conv_transpose2d_lax(a, b, *args), x, kern)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(1, 6), cin=st.integers(1, 4),
       cout=st.integers(1, 4), kh=st.integers(1, 5), kw=st.integers(1, 5), s=st.integers(1, 3),
       p=st.integers(0, 2), op=st.integers(0, 2), name=st.sampled_from(sorted(FORMULATIONS)))
def test_conv_transpose2d_hypothesis(n, h, w, cin, cout, kh, kw, s, p, op, name):
    op = min(op, s - 1)  # PyTorch requires output_padding < stride
    if (h - 1) * s - 2 * p + kh + op < 1 or (w - 1) * s - 2 * p + kw + op < 1:
        return  # empty output
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, kh, kw, cin, cout)
    args = ((s, s), (p, p), (op, op))
    f = FORMULATIONS[name]
    _check_vjp(lambda a, b: f(a, b, *args), lambda a, b: fastconv.conv_transpose2d_lax(a, b, *args), x, kern)


# ---------------------------------------------------------------------------------------- ops dispatch


def test_dispatch_choices(monkeypatch):
    monkeypatch.setenv("JINTERP_ONEDNN", "0")  # the choices without oneDNN (tests/nn/test_onednn.py: with it)
    assert ops.conv2d_formulation((8, 32, 32, 16), (3, 3, 16, 16), 1, 1) == "lax"
    assert ops.conv2d_formulation((8, 32, 32, 16), (1, 1, 16, 32), 2, 0) == "im2col"
    assert ops.conv2d_formulation((8, 2, 2, 256), (3, 3, 256, 512), 1, 1) == "taps"
    assert ops.conv2d_formulation((8, 4, 4, 256), (3, 3, 256, 512), 2, 1) == "taps"
    assert ops.conv2d_formulation((8, 4, 4, 256), (3, 3, 256, 512), 1, 1) == "im2col"
    assert ops.conv2d_formulation((8, 2, 2, 256), (3, 3, 64, 512), 1, 1, groups=4) == "lax"
    assert ops.conv_transpose2d_formulation((8, 2, 2, 512), (4, 4, 512, 256), 2, 1) == "pixels"
    assert ops.conv_transpose2d_formulation((8, 8, 8, 128), (4, 4, 128, 64), 2, 1) == "col2im"
    monkeypatch.setenv("JINTERP_FASTCONV", "0")
    assert ops.conv2d_formulation((8, 2, 2, 256), (3, 3, 256, 512), 1, 1) == "lax"


@pytest.mark.parametrize("fast", ["1", "0"])
def test_ops_paths_match_lax(monkeypatch, fast):
    monkeypatch.setenv("JINTERP_FASTCONV", fast)
    rng = np.random.default_rng(0)
    for shape, kshape, s, p in [((2, 2, 2, 8), (3, 3, 8, 6), 1, 1), ((2, 6, 6, 4), (1, 1, 4, 5), 2, 0),
                                ((2, 7, 7, 3), (3, 3, 3, 4), 2, 1)]:
        x, kern = _rand(rng, *shape), _rand(rng, *kshape)
        _check_vjp(lambda a, b, s=s, p=p: ops.conv2d(a, b, s, p),
                   lambda a, b, s=s, p=p: fastconv.conv2d_lax(a, b, (s, s), (p, p)), x, kern)
    x, kern = _rand(rng, 2, 3, 3, 4), _rand(rng, 4, 4, 4, 5)
    _check_vjp(lambda a, b: ops.conv_transpose2d(a, b, 2, 1),
               lambda a, b: fastconv.conv_transpose2d_lax(a, b, (2, 2), (1, 1), (0, 0)), x, kern)


# ------------------------------------------------------------------------------------ layers vs torch


@pytest.mark.parametrize("cfg", [dict(k=4, s=2, p=1, op=0, h=3), dict(k=3, s=2, p=1, op=1, h=4),
                                 dict(k=4, s=2, p=1, op=0, h=1), dict(k=3, s=1, p=1, op=0, h=5)])
def test_conv_transpose2d_layer_matches_torch(torch, cfg):
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((2, cfg["h"], cfg["h"], 6)).astype(np.float32)
    layer = ConvTranspose2d(5, cfg["k"], cfg["s"], cfg["p"], cfg["op"])
    variables = layer.init(jax.random.key(0), jnp.asarray(xn))
    y = layer.apply(variables, jnp.asarray(xn))
    kern = np.asarray(variables["params"]["kernel"])  # (kh, kw, in, out)
    bias = np.array(variables["params"]["bias"])
    ref = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(xn.transpose(0, 3, 1, 2).copy()), torch.from_numpy(kern.transpose(2, 3, 0, 1).copy()),
        torch.from_numpy(bias), stride=cfg["s"], padding=cfg["p"], output_padding=cfg["op"])
    _close(y, ref.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("cfg", [dict(k=3, s=1, p=1, d=1, h=8), dict(k=3, s=2, p=1, d=1, h=7),
                                 dict(k=1, s=2, p=0, d=1, h=6), dict(k=3, s=1, p=1, d=1, h=2),
                                 dict(k=3, s=1, p=2, d=2, h=6), dict(k=7, s=2, p=3, d=1, h=9)])
def test_conv2d_layer_matches_torch(torch, cfg):
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((2, cfg["h"], cfg["h"], 4)).astype(np.float32)
    layer = Conv2d(6, cfg["k"], cfg["s"], cfg["p"], cfg["d"])
    variables = layer.init(jax.random.key(0), jnp.asarray(xn))
    y = layer.apply(variables, jnp.asarray(xn))
    kern = np.asarray(variables["params"]["kernel"])  # HWIO
    bias = np.array(variables["params"]["bias"])
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(xn.transpose(0, 3, 1, 2).copy()), torch.from_numpy(kern.transpose(3, 2, 0, 1).copy()),
        torch.from_numpy(bias), stride=cfg["s"], padding=cfg["p"], dilation=cfg["d"])
    _close(y, ref.numpy().transpose(0, 2, 3, 1))
