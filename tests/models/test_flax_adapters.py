"""Linen and NNX models under the backbone contract ``apply(variables, x, train) -> (logits, feats)``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jinterp import models
from jinterp.errors import LayerError, ModelError, ShapeError


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.relu(x)


class LinenNet(nn.Module):
    def setup(self):
        self.block = LinenBlock()
        self.head = nn.Dense(4)

    def features(self, x, train: bool = False):
        return self.block(x, train)

    def __call__(self, x, train: bool = False):
        f = self.features(x, train)
        self.sow("intermediates", "pooled", f.mean((1, 2)))
        return self.head(f.mean((1, 2)))


def test_linen_model(tmp_path):
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    net = LinenNet()
    model, variables = models.from_linen(net, x)
    logits, feats = jax.jit(lambda v, im: model.apply(v, im, train=False))(variables, x)
    np.testing.assert_allclose(logits, net.apply(variables, x), atol=1e-6)
    assert {"block", "block.Conv_0", "block.BatchNorm_0", "head", "pooled"} <= set(feats)
    np.testing.assert_allclose(feats["block"], net.apply(variables, x, method=LinenNet.features), atol=1e-6)
    np.testing.assert_allclose(feats["pooled"], feats["block"].mean((1, 2)), atol=1e-6)
    (tlogits, tfeats), state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    mean = state["batch_stats"]["block"]["BatchNorm_0"]["mean"]
    conv_mean = tfeats["block.Conv_0"].mean((0, 1, 2))
    np.testing.assert_allclose(mean, 0.1 * conv_mean, atol=1e-5)  # momentum 0.9 from zeros: train mode ran
    with pytest.raises(ModelError):
        models.from_linen(net)


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.block = NnxBlock(rngs)
        self.layers = nnx.List([nnx.Linear(6, 5, rngs=rngs), nnx.Linear(5, 4, rngs=rngs)])

    def __call__(self, x):
        x = self.block(x).mean((1, 2))
        return self.layers[1](nnx.relu(self.layers[0](x)))


def test_nnx_model():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    net = NnxNet(nnx.Rngs(0))
    model, variables = models.from_nnx(net)
    assert set(variables) == {"params", "batch_stats", "nnx_state"}
    logits, feats = jax.jit(lambda v, im: model.apply(v, im, train=False))(variables, x)
    net.eval()
    np.testing.assert_allclose(logits, net(x), atol=1e-6)
    assert {"block", "block.conv", "block.bn", "layers.0", "layers.1"} <= set(feats)
    np.testing.assert_allclose(feats["block"], net.block(x), atol=1e-6)
    # changed params flow through nnx.merge: zeroing the last layer's kernel leaves its bias as the logits
    zeroed = jax.tree.map(lambda a: a, variables)
    zeroed["params"]["layers"][1]["kernel"] = jnp.zeros_like(zeroed["params"]["layers"][1]["kernel"])
    z, _ = model.apply(zeroed, x)
    np.testing.assert_allclose(z, jnp.broadcast_to(variables["params"]["layers"][1]["bias"], z.shape), atol=1e-6)
    (_, tfeats), state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(state["batch_stats"]["block"]["bn"]["mean"],
                               0.1 * tfeats["block.conv"].mean((0, 1, 2)), atol=1e-5)
    with pytest.raises(ModelError):
        models.from_nnx(LinenNet())


def _zero_then_double(model, variables, x, layer, head_bias):
    """Zeroing ``layer`` leaves the head's bias as the logits (everything downstream sees the edit); doubling it
    after a linear head doubles the logits minus one bias; feats hold the edited value."""
    logits, _ = model.apply(variables, x)
    zeroed, feats = jax.jit(lambda v, im: model.apply(v, im, edits={layer: jnp.zeros_like}))(variables, x)
    np.testing.assert_allclose(zeroed, jnp.broadcast_to(head_bias, zeroed.shape), atol=1e-6)
    assert float(jnp.abs(feats[layer]).max()) == 0.0 and float(jnp.abs(logits - zeroed).max()) > 1e-4
    return logits


def test_linen_edits_replace_a_submodule_output_downstream():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    model, variables = models.from_linen(LinenNet(), x)
    bias = variables["params"]["head"]["bias"]
    logits = _zero_then_double(model, variables, x, "block", bias)
    doubled, _ = model.apply(variables, x, edits={"block": lambda a: 2 * a})
    np.testing.assert_allclose(doubled, 2 * logits - bias, rtol=1e-5, atol=1e-5)
    ungated = []
    (_, feats), state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                    edits={"block.Conv_0": lambda a: ungated.append(a) or 0.5 * a})
    np.testing.assert_allclose(feats["block.Conv_0"], 0.5 * ungated[0], atol=1e-6)  # BN saw the edited map
    np.testing.assert_allclose(state["batch_stats"]["block"]["BatchNorm_0"]["mean"],
                               0.1 * feats["block.Conv_0"].mean((0, 1, 2)), atol=1e-5)
    with pytest.raises(ShapeError, match="replacement of layer 'block'"):
        model.apply(variables, x, edits={"block": lambda a: a[..., :2]})
    with pytest.raises(LayerError, match="blok"):
        model.apply(variables, x, edits={"blok": jnp.zeros_like})


def test_nnx_edits_replace_a_submodule_output_downstream():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    net = NnxNet(nnx.Rngs(0))
    model, variables = models.from_nnx(net)
    bias = variables["params"]["layers"][1]["bias"]
    logits = _zero_then_double(model, variables, x, "layers.0", bias)
    assert type(net.layers[0]) is nnx.Linear  # the user's module is untouched
    halved, feats = model.apply(variables, x, edits={"block": lambda a: 0.5 * a})
    np.testing.assert_allclose(feats["block"], 0.5 * model.apply(variables, x)[1]["block"], atol=1e-6)
    assert float(jnp.abs(halved - logits).max()) > 1e-5
    with pytest.raises(ShapeError, match="replacement of layer 'block'"):
        model.apply(variables, x, edits={"block": lambda a: a[..., :2]})
    with pytest.raises(LayerError, match="layers.7"):
        model.apply(variables, x, edits={"layers.7": jnp.zeros_like})
