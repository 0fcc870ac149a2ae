"""Flax user models where a method edits the model's forward: CSG's gate on a named layer and the explainer's
reconstruction fed back (both through ``apply(..., edits=...)``, as for converted PyTorch models)."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jinterp import models
from jinterp.core.config import apply_overrides
from jinterp.errors import ConfigError
from jinterp.methods.csg import gate as gates
from jinterp.models import given


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        return nn.relu(x)


class LinenCNN(nn.Module):
    """Feats: block1 (32x32x8), block2 (32x32x16), block3 (16x16x16), fc; each block post-ReLU."""

    num_classes: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(8, name="block1")(x, train)
        x = Block(16, name="block2")(x, train)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = Block(16, name="block3")(x, train)
        return nn.Dense(self.num_classes, name="fc")(x.mean((1, 2)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.layers = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.Linear(8, 4, rngs=rngs)])

    def __call__(self, x):
        x = nnx.relu(self.layers[0](nnx.relu(self.conv(x))))
        return self.layers[1](x.mean((1, 2)))


@pytest.fixture(scope="module")
def linen():
    model, variables = models.from_linen(LinenCNN(), jnp.zeros((1, 32, 32, 3)))
    stats = jax.tree.map(lambda a: a + 0.1, variables["batch_stats"])  # eval mode must use these
    return model, {**variables, "batch_stats": stats}


def _names(model, variables, shape):
    return models.load_model(given.register(model, variables), image_shape=shape)[2].layer_names


def test_csg_gate_site_and_gated_forward_on_a_linen_model(linen):
    model, variables = linen
    names = _names(model, variables, (32, 32, 3))
    site = gates.user_gate_site(names, variables["params"], "block3", "fc")
    assert site.fc == "fc" and site.head_params == "^(fc)/"
    assert site.stages == tuple(f"^block{i}/{m}/" for i in (1, 2, 3) for m in ("conv", "bn"))
    x = jax.random.uniform(jax.random.key(0), (5, 32, 32, 3))
    labels = jnp.asarray([0, 1, 2, 5, 3])
    g = jax.random.uniform(jax.random.key(1), (16, 6))
    logits, a, _ = gates.forward(model, site, variables, x, gate=g, labels=labels)
    _, feats = model.apply(variables, x)
    np.testing.assert_allclose(a, feats["block3"], atol=1e-6)  # A is the ungated map
    fc = variables["params"]["fc"]
    want = gates.gate_features(a, g, labels).mean((1, 2)) @ fc["kernel"] + fc["bias"]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)  # the head saw A * G[:, y]
    std, _, _ = gates.forward(model, site, variables, x)
    np.testing.assert_allclose(std, model.apply(variables, x)[0], atol=1e-6)
    # train mode: BN statistics of the gated forward update, the gated map feeds the head
    tl, _, state = gates.forward(model, site, variables, x, train=True, gate=g, labels=labels,
                                 rng=jax.random.key(2))
    assert set(state) == {"batch_stats"} and tl.shape == (5, 6)
    assert not np.allclose(state["batch_stats"]["block3"]["bn"]["mean"],
                           variables["batch_stats"]["block3"]["bn"]["mean"])


def test_csg_gate_site_on_an_nnx_model_finds_list_modules():
    model, variables = models.from_nnx(NnxCNN(nnx.Rngs(0)))
    names = _names(model, variables, (8, 8, 3))
    site = gates.user_gate_site(names, variables["params"], "layers.0", "layers.1")
    assert site.stages == ("^conv/", "^layers/0/") and site.head_params == "^(layers/1)/" and site.fc == "layers.1"
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 3))
    g = jax.random.uniform(jax.random.key(1), (8, 4))
    labels = jnp.asarray([0, 3, 1])
    logits, a, _ = gates.forward(model, site, variables, x, gate=g, labels=labels)
    p = variables["params"]["layers"][1]
    gated = jax.nn.relu(gates.gate_features(a, g, labels))  # layers.0 is pre-ReLU; the ReLU follows the gate
    np.testing.assert_allclose(logits, gated.mean((1, 2)) @ p["kernel"] + p["bias"],
                               rtol=1e-5, atol=1e-5)


def test_explainer_feedback_on_a_linen_model(linen):
    from jinterp.methods.explainer.program import _user_replaced_logits

    model, variables = linen
    logits = _user_replaced_logits(model, "unit", "block3")
    images = (np.random.default_rng(0).uniform(size=(4, 32, 32, 3)) * 255).astype(np.uint8)
    zero = logits(variables, images, jnp.zeros((4, 16, 16, 16)))
    np.testing.assert_allclose(zero, jnp.broadcast_to(variables["params"]["fc"]["bias"], zero.shape), atol=1e-6)
    recon = jnp.ones((4, 16, 16, 16))
    np.testing.assert_allclose(logits(variables, images, recon),
                               recon.mean((1, 2)) @ variables["params"]["fc"]["kernel"]
                               + variables["params"]["fc"]["bias"], rtol=1e-5, atol=1e-5)


def test_a_model_without_edits_is_named_in_one_line(linen):
    from jinterp import backbones
    from jinterp.methods.explainer.program import _user_replaced_logits

    with pytest.raises(ConfigError, match="does not take; pass the model as a PyTorch, Linen or NNX") as e:
        _user_replaced_logits(backbones.create("convnet", 6), "unit", "relu3")
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_explainer_and_csg_runs_on_a_linen_model(linen, tmp_path):
    from jinterp.methods.csg import CSGConfig
    from jinterp.methods.csg import run as csg_run
    from jinterp.methods.explainer import ExplainerConfig
    from jinterp.methods.explainer import run as explainer_run

    model, variables = linen
    cfg = apply_overrides(ExplainerConfig.tiny(), ["data=synthparts:size=32,n_train=128,n_test=64",
                                                   "layer=block2", "target=block3", "steps=3", "sweep_steps=0",
                                                   "batch_size=16", "eval_batch_size=32"])
    res = explainer_run(cfg, tmp_path / "ex", progress=False, model=model, variables=variables).to_json()
    assert res["in_shape"] == [32, 32, 16] and res["out_shape"] == [16, 16, 16]
    assert res["performer_unchanged"] and np.isfinite(res["accuracy_replaced"])
    cfg = apply_overrides(CSGConfig.tiny(), ["gate_layer=block3", "head=fc", "epochs=3", "warmup_epochs=1",
                                             "mask_period=2", "mask_epoch_min=1", "train_size=100", "test_size=50",
                                             "eval_size=50", "adv_size=8", "pgd_steps=1", "batch_size=25",
                                             "baseline=false", "seeds=1"])
    res = csg_run(cfg, tmp_path / "csg", progress=False, model=model, variables=variables).to_json()
    assert res["gate_layer"] == "block3" and res["num_filters"] == 16
    gate = np.load(tmp_path / "csg" / "gate.npy")
    assert gate.shape == (16, 6) and np.ptp(gate, axis=1).max() > 1e-3  # class-specific columns
    trained = np.load(tmp_path / "csg" / "csg_params.npz")
    fc = [k for k in trained.files if k.endswith("fc/kernel")]
    assert fc and not np.allclose(trained[fc[0]], variables["params"]["fc"]["kernel"])
    label = json.loads((tmp_path / "csg" / "config.json").read_text())["stages"]["backbone"]["fields"]["model"]
    assert label.startswith("python:jinterp.models.flax_adapters.LinenModel@")


def test_csg_gate_site_on_a_converted_torch_model_keys_params_by_path(torch):
    from torch import nn as tnn

    torch.manual_seed(0)
    net = tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.Conv2d(4, 8, 3), tnn.ReLU(),
                         tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(8, 5)).eval()
    model, variables = models.from_torch(net, torch.zeros(1, 3, 12, 12))
    names = _names(model, variables, (12, 12, 3))
    site = gates.user_gate_site(names, variables["params"], "4", "7")
    assert site.stages == ("^0/", "^1/", "^3/") and site.head_params == "^(7)/" and site.fc == "7"
