"""oneDNN convolutions through XLA FFI (``jinterp.nn._onednn``): exact against ``lax.conv_general_dilated`` (and the
transposed conv against ``fastconv.conv_transpose2d_lax``) for the forward pass and both gradients, under ``vmap``,
and dispatched to by ``ops.conv2d`` / ``ops.conv_transpose2d`` on the CPU.

Skipped, with the build's reason, where the library cannot be built (no network for the wheels, no ``g++``).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jinterp.errors import ModelError, ShapeError
from jinterp.nn import _onednn, fastconv, ops

RTOL = 1e-5  # relative to the largest |value|: float32 round-off, different summation order


def _onednn_or_skip():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = _onednn.available()
    if not ok:
        pytest.skip(f"oneDNN convolutions unavailable: {[str(w.message) for w in caught]}")


@pytest.fixture(autouse=True)
def _needs_onednn(monkeypatch):
    monkeypatch.delenv("JINTERP_ONEDNN", raising=False)
    monkeypatch.delenv("JINTERP_FASTCONV", raising=False)
    _onednn_or_skip()


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(float(np.max(np.abs(b))), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=rtol)


def _rand(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape).astype(np.float32))


def _lax(x, w, stride, padding, dilation, groups):
    return lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


CASES = [  # (n, h, w, cin, cout, (kh, kw), stride, ((top, bottom), (left, right)), dilation, groups)
    (2, 8, 8, 3, 5, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    (3, 9, 7, 4, 6, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    (2, 10, 11, 6, 8, (3, 2), (2, 1), ((1, 0), (2, 1)), (1, 1), 2),  # asymmetric everything, 2 groups
    (2, 11, 11, 4, 4, (3, 3), (2, 2), ((0, 0), (0, 0)), (2, 1), 4),  # dilation, depthwise
    (2, 6, 6, 5, 7, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),  # 1x1 stride 2
    (1, 2, 2, 16, 32, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),  # 2x2 px
    (2, 7, 7, 3, 4, (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),  # ResNet stem
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}h{c[1]}w{c[2]}c{c[3]}-{c[4]}k{c[5]}s{c[6]}"
                         f"p{c[7]}d{c[8]}g{c[9]}".replace(" ", ""))
def test_forward_and_both_gradients_match_lax(case):
    n, h, w, cin, cout, k, stride, padding, dilation, groups = case
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, *k, cin // groups, cout)
    args = (stride, padding, dilation, groups)
    ct = _rand(rng, *jax.eval_shape(lambda a, b: _lax(a, b, *args), x, kern).shape)

    @jax.jit
    def both(x, kern, ct):
        y, vjp = jax.vjp(lambda a, b: _onednn.conv2d(a, b, *args), x, kern)
        y_ref, vjp_ref = jax.vjp(lambda a, b: _lax(a, b, *args), x, kern)
        return (y, *vjp(ct)), (y_ref, *vjp_ref(ct))

    got, ref = both(x, kern, ct)
    for a, b in zip(got, ref, strict=True):
        _close(a, b)


def test_cached_primitives_are_keyed_by_the_whole_geometry():
    """conv.cc keeps one primitive per geometry. Two convolutions with the same input, kernel and output shapes and
    the same padding that differ only in stride and dilation (8 px, 3x3: stride 2 dilation 2 and stride 1 dilation
    3 both give 2 px) must not share one: each is compared with lax after the other has been cached."""
    rng = np.random.default_rng(1)
    x, kern = _rand(rng, 2, 8, 8, 3), _rand(rng, 3, 3, 3, 4)
    ct = _rand(rng, 2, 2, 2, 4)
    pad = ((0, 0), (0, 0))
    for _ in range(2):  # the second round runs on primitives cached by the first
        for stride, dilation in (((2, 2), (2, 2)), ((1, 1), (3, 3))):
            args = (stride, pad, dilation, 1)
            y, vjp = jax.vjp(lambda a, b, args=args: _onednn.conv2d(a, b, *args), x, kern)
            y_ref, vjp_ref = jax.vjp(lambda a, b, args=args: _lax(a, b, *args), x, kern)
            for a, b in zip((y, *vjp(ct)), (y_ref, *vjp_ref(ct)), strict=True):
                _close(a, b)


@pytest.mark.parametrize("axes", [(0, None), (None, 0), (0, 0)], ids=["images", "models", "both"])
def test_vmap_matches_lax(axes):
    """vmap over the input only (folded into N), the kernel only (a loop per model) and both."""
    rng = np.random.default_rng(0)
    b, args = 3, ((2, 1), ((1, 0), (1, 1)), (1, 1), 1)
    x = _rand(rng, b, 2, 7, 6, 4) if axes[0] == 0 else _rand(rng, 2, 7, 6, 4)
    kern = _rand(rng, b, 3, 3, 4, 5) if axes[1] == 0 else _rand(rng, 3, 3, 4, 5)

    def grads(conv):
        def loss(x, k):
            return jnp.sum(jnp.sin(conv(x, k, *args)))
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=axes))(x, kern)

    (y, (dx, dk)), (y_ref, (dx_ref, dk_ref)) = grads(_onednn.conv2d), grads(_lax)
    for a, r in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
        _close(a, r)


def test_ops_conv2d_dispatches_to_onednn_and_switches_off(monkeypatch):
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, 2, 8, 8, 4), _rand(rng, 3, 3, 4, 6)

    def hlo():
        return jax.jit(jax.grad(lambda a, b: jnp.sum(ops.conv2d(a, b, 2, 1) ** 2), argnums=(0, 1))) \
            .lower(x, kern).as_text()

    assert ops.conv2d_formulation(x.shape, kern.shape, 2, 1) == "onednn"
    text = hlo()
    for kind in ("fwd", "bwd_data", "bwd_weights"):
        assert f"jinterp_onednn_conv_{kind}" in text
    assert ops.conv2d_formulation((2, 8, 8, 1), (3, 3, 1, 6), 2, 1) != "onednn"  # one input channel: XLA's
    assert ops.conv2d_formulation(x.shape, kern.shape, 2, 1, dtype=jnp.bfloat16) != "onednn"
    for var in ("JINTERP_ONEDNN", "JINTERP_FASTCONV"):
        monkeypatch.setenv(var, "0")
        assert ops.conv2d_formulation(x.shape, kern.shape, 2, 1) != "onednn"
        assert "jinterp_onednn_conv" not in hlo()
        monkeypatch.delenv(var)


def test_failed_build_warns_once_and_ops_falls_back_to_xla(monkeypatch):
    def broken_build():
        raise FileNotFoundError("no g++ here")

    monkeypatch.setattr(_onednn, "build", broken_build)
    with pytest.warns(RuntimeWarning, match="oneDNN convolutions unavailable .*no g\\+\\+ here.*XLA"):
        assert _onednn.available.__wrapped__() is False
    monkeypatch.setattr(_onednn, "available", lambda: False)
    with pytest.raises(ModelError, match="oneDNN convolutions are unavailable"):
        _onednn.conv2d(jnp.ones((1, 3, 3, 2)), jnp.ones((1, 1, 2, 2)))
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, 2, 8, 8, 4), _rand(rng, 3, 3, 4, 6)
    assert ops.conv2d_formulation(x.shape, kern.shape, 1, 1) == "lax"
    _close(jax.jit(lambda a, b: ops.conv2d(a, b, 1, 1))(x, kern), _lax(x, kern, (1, 1), ((1, 1), (1, 1)), (1, 1), 1))


# ------------------------------------------------------------------------------------------- transposed

T_CASES = [  # (n, h, w, cin, cout, (kh, kw), stride, padding, output_padding)
    (2, 4, 4, 6, 5, (4, 4), (2, 2), (1, 1), (0, 0)),  # ClaDec's decoder layer
    (2, 5, 3, 3, 4, (3, 3), (2, 2), (1, 1), (1, 1)),  # output_padding
    (2, 3, 4, 5, 2, (3, 2), (3, 2), (0, 1), (2, 1)),  # output_padding > padding (zero bottom pad), asymmetric
    (1, 1, 1, 8, 6, (4, 4), (2, 2), (1, 1), (0, 0)),  # 1x1 input
    (2, 4, 5, 4, 3, (3, 3), (1, 1), (2, 0), (0, 0)),  # stride 1, padding > 0
    (2, 3, 3, 3, 1, (5, 5), (2, 2), (2, 2), (1, 1)),  # one output channel
]


@pytest.mark.parametrize("case", T_CASES, ids=lambda c: f"n{c[0]}h{c[1]}w{c[2]}c{c[3]}-{c[4]}k{c[5]}s{c[6]}"
                         f"p{c[7]}op{c[8]}".replace(" ", ""))
def test_conv_transpose_forward_and_both_gradients_match_lax(case):
    n, h, w, cin, cout, k, stride, padding, output_padding = case
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, n, h, w, cin), _rand(rng, *k, cin, cout)
    args = (stride, padding, output_padding)
    out = jax.eval_shape(lambda a, b: fastconv.conv_transpose2d_lax(a, b, *args), x, kern).shape
    assert out[1:3] == tuple(fastconv.conv_transpose_out_size(*v) for v in zip((h, w), k, stride, padding,
                                                                                output_padding, strict=True))
    ct = _rand(rng, *out)

    @jax.jit
    def both(x, kern, ct):
        y, vjp = jax.vjp(lambda a, b: _onednn.conv_transpose2d(a, b, *args), x, kern)
        y_ref, vjp_ref = jax.vjp(lambda a, b: fastconv.conv_transpose2d_lax(a, b, *args), x, kern)
        return (y, *vjp(ct)), (y_ref, *vjp_ref(ct))

    got, ref = both(x, kern, ct)
    for a, b in zip(got, ref, strict=True):
        _close(a, b)


@pytest.mark.parametrize("axes", [(0, None), (None, 0), (0, 0)], ids=["images", "models", "both"])
def test_conv_transpose_vmap_matches_lax(axes):
    """vmap over the input only (folded into N), the kernel only (one oneDNN call per model, as in ClaDec's
    α sweep) and both; stride 2 with output_padding."""
    rng = np.random.default_rng(1)
    b, args = 3, ((2, 2), (1, 1), (1, 0))
    x = _rand(rng, b, 2, 3, 4, 5) if axes[0] == 0 else _rand(rng, 2, 3, 4, 5)
    kern = _rand(rng, b, 4, 3, 5, 6) if axes[1] == 0 else _rand(rng, 4, 3, 5, 6)

    def grads(conv):
        def loss(x, k):
            return jnp.sum(jnp.sin(conv(x, k, *args)))
        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)), in_axes=axes))(x, kern)

    (y, (dx, dk)), (y_ref, (dx_ref, dk_ref)) = grads(_onednn.conv_transpose2d), grads(fastconv.conv_transpose2d_lax)
    for a, r in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
        _close(a, r)


def test_ops_conv_transpose2d_dispatch_by_shape_and_switches(monkeypatch):
    rng = np.random.default_rng(0)
    x, kern = _rand(rng, 2, 4, 4, 8), _rand(rng, 4, 4, 8, 16)

    def grads():
        return jax.jit(jax.grad(lambda a, b: jnp.sum(ops.conv_transpose2d(a, b, 2, 1, 1) ** 2), argnums=(0, 1)))

    assert ops.conv_transpose2d_formulation(x.shape, kern.shape, 2, 1, 1) == "onednn"
    text = grads().lower(x, kern).as_text()
    for kind in ("fwd", "bwd_data", "bwd_weights"):
        assert f"jinterp_onednn_conv_{kind}" in text
    ref = jax.grad(lambda a, b: jnp.sum(fastconv.conv_transpose2d_lax(a, b, (2, 2), (1, 1), (1, 1)) ** 2),
                   argnums=(0, 1))(x, kern)
    for a, b in zip(grads()(x, kern), ref, strict=True):
        _close(a, b)
    # Shapes kept off oneDNN: tiny inputs (one GEMM per pixel), few output channels, bf16, output_padding >= stride.
    assert ops.conv_transpose2d_formulation((2, 2, 2, 8), kern.shape, 2, 1) == "pixels"
    assert ops.conv_transpose2d_formulation((2, 3, 3, 8), kern.shape, 2, 1) == "col2im"
    assert ops.conv_transpose2d_formulation(x.shape, (4, 4, 8, 1), 2, 1) == "col2im"
    assert ops.conv_transpose2d_formulation(x.shape, kern.shape, 2, 1, dtype=jnp.bfloat16) == "col2im"
    assert ops.conv_transpose2d_formulation(x.shape, kern.shape, 1, 1, 1) == "col2im"
    with pytest.raises(ShapeError, match="output_padding < stride"):
        _onednn.conv_transpose2d(x, kern, (2, 2), (1, 1), (2, 0))
    monkeypatch.setenv("JINTERP_ONEDNN", "0")
    assert ops.conv_transpose2d_formulation(x.shape, kern.shape, 2, 1) == "col2im"
    assert "jinterp_onednn_conv" not in grads().lower(x, kern).as_text()
    monkeypatch.setenv("JINTERP_FASTCONV", "0")
    assert ops.conv_transpose2d_formulation(x.shape, kern.shape, 2, 1) == "lax"
    assert "jinterp_onednn_conv" not in grads().lower(x, kern).as_text()
