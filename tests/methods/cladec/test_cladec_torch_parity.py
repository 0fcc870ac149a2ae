"""ClaDec against a PyTorch implementation of the official code: decoder forward, one train step, upsampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.backbones import torch_import
from jinterp.methods.cladec import evaluation, training
from jinterp.methods.cladec.decoder import init_decoder, make_decoder
from jinterp.methods.cladec.program import resize_nearest


@pytest.mark.parametrize("in_shape", [(64,), (32, 2, 2), (16, 8, 8)])
def test_decoder_forward_matches_pytorch(tcl, torch, in_shape):
    torch.manual_seed(0)
    net = tcl.ClaDecNet(in_shape, 1, channel_mult=8, image_size=32).eval()
    act_nhwc = np.random.default_rng(0).normal(size=(3, *in_shape[1:], in_shape[0]) if len(in_shape) == 3
                                               else (3, *in_shape)).astype(np.float32)
    dec = make_decoder(act_nhwc.shape[1:], (32, 32, 1), 8)
    params = tcl.to_flax(net)
    ours = jax.tree.map(np.shape, init_decoder(dec, jax.random.key(0)))
    assert jax.tree.map(np.shape, params) == ours  # same layers, same shapes
    with torch.no_grad():
        want = net(tcl.nhwc_to_nchw(act_nhwc)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(dec.apply)({"params": params}, act_nhwc))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_one_cladec_step_matches_pytorch(tcl, torch):
    """Decoder + frozen VGG-11-like classifier + Adam(wd): the same loss and the same updated weights."""
    ref = tcl.reference()
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    y = rng.integers(0, 10, (4,)).astype(np.int64)
    act = rng.normal(size=(4, 2, 2, 32)).astype(np.float32)
    cls = ref.randomize(tcl.classifier(1, 10), 0, torch.rand(8, 1, 32, 32)).eval().requires_grad_(False)
    variables = torch_import.from_torch("vgg11_bn_cladec", cls.state_dict())
    torch.manual_seed(2)
    net = tcl.ClaDecNet((32, 2, 2), 1, channel_mult=8, image_size=32)
    params = tcl.to_flax(net)
    dec = make_decoder((2, 2, 32), (32, 32, 1), 8)
    tx = training.torch_adam(1e-3, 1e-5)
    opt = tcl.adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    step = training.make_sweep_step(dec, tx, classify=evaluation.make_classify(cls_model(), "vgg11_bn_cladec"),
                                    use_ce=True, donate=False)
    state = training.new_state(jax.tree.map(lambda p: jnp.asarray(p)[None], params), tx,
                               jax.random.key_data(jax.random.key(0)))
    data = {"image": jnp.asarray(x), "label": jnp.asarray(y, jnp.int32), "act": jnp.asarray(act)}
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    for _ in range(2):
        state, metrics = step(state, jnp.arange(4), data, jnp.asarray([0.25]), variables)
        loss_t = tcl.cladec_step(net, opt, cls, xt, torch.from_numpy(y), tcl.nhwc_to_nchw(act), 0.25)
        np.testing.assert_allclose(0.75 * float(metrics["rec/0"]) + 0.25 * float(metrics["ce/0"]), loss_t,
                                   rtol=1e-5)
    after = tcl.to_flax(net)
    moved = 0.0
    for a, b, p0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(after), jax.tree.leaves(params), strict=True):
        # Adam divides by sqrt(v): a weight whose gradient is ~0 moves by up to lr either way on round-off, so
        # the bound is a small fraction of the lr (1e-3) rather than float32 epsilon.
        np.testing.assert_allclose(np.asarray(a[0]), b, atol=2e-5)
        moved = max(moved, float(np.abs(b - p0).max()))
    assert moved > 1e-3  # the weights did move by about two lr steps


def cls_model():
    from jinterp import backbones

    return backbones.create("vgg11_bn_cladec", 10)


def test_nearest_upsampling_matches_pytorch_interpolate(torch):
    x = np.random.default_rng(3).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)).float(), size=32)
    np.testing.assert_array_equal(resize_nearest(x, 32), want.numpy().transpose(0, 2, 3, 1).astype(np.uint8))
