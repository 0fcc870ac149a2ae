"""Explainer network: output shapes per layer pair, exact feed-back into the performer, a tiny training run
(loss decreases, performer untouched, exact and surrogate modes), vmapped sweep == separate runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jinterp import backbones
from jinterp.core import train, xla_options
from jinterp.errors import LayerError
from jinterp.methods.explainer import model as M
from jinterp.methods.explainer import program as P
from jinterp.methods.explainer.config import ExplainerConfig

WIDTHS = (8, 8, 16, 16)


@pytest.fixture(scope="module")
def convnet():
    perf = backbones.create("convnet", 6, widths=WIDTHS)
    variables = backbones.init(perf, jax.random.PRNGKey(0), (32, 32, 3))
    # Non-trivial BatchNorm statistics, so that feeding features back is a real check.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) % 0.7
        if "batch_stats" in str(p) else x, variables)
    return perf, variables


def _images(n=4, size=32, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch,layer,target,size", [
    ("convnet", "relu3", "relu4", 32),        # downsample x2
    ("convnet", "relu4", "relu4", 32),        # same size
    ("convnet", "relu3", "relu2", 32),        # upsample x2 (transposed conv)
    ("convnet", "relu2", "relu4", 32),        # downsample x4
    ("convnet", "relu3", "avgpool", 32),      # 1x1 target (adaptive pooling)
    ("resnet20", "layer2", "layer3", 32),
    ("resnet20", "layer1", "layer2.1", 32),
])
def test_output_shapes_for_layer_pairs(arch, layer, target, size):
    kw = {"widths": WIDTHS} if arch == "convnet" else {}
    perf = backbones.create(arch, 6, **kw)
    pv = backbones.variable_shapes(perf, (size, size, 3))
    feats = M.performer_features(perf, arch, (layer, target))
    f, fp = jax.eval_shape(feats, pv, jax.ShapeDtypeStruct((3, size, size, 3), jnp.uint8))
    ex = M.Explainer(out_shape=fp.shape[1:], filters=12)
    variables = jax.eval_shape(lambda: M.init_explainer(ex, jax.random.PRNGKey(1), f.shape[1:]))
    out, aux = jax.eval_shape(lambda v, x: ex.apply(v, x), variables, f)
    assert out.shape == fp.shape
    assert aux["a2"].shape == aux["y2"].shape == aux["mask2"].shape == (*f.shape[:3], 12)
    assert aux["p"].shape == (3,)
    assert variables["icnn"]["beta1"].shape == (12,)


@pytest.mark.parametrize("target", ["relu4", "pool3", "relu2", "conv3"])
def test_feeding_true_features_back_reproduces_the_logits(convnet, target):
    perf, pv = convnet
    imgs = jnp.asarray(_images())
    (ft,) = M.performer_features(perf, "convnet", (target,))(pv, imgs)
    logits = jax.jit(M.replaced_logits(perf, "convnet", target))
    ref, _ = perf.apply(pv, backbones.normalize(imgs, "convnet"))
    np.testing.assert_allclose(np.asarray(logits(pv, imgs, ft)), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # ... and a different replacement changes them (the injection is live).
    assert not np.allclose(np.asarray(logits(pv, imgs, ft * 0.0)), np.asarray(ref), atol=1e-4)


def test_feeding_back_resnet_stage_and_unsupported_layers():
    perf = backbones.create("resnet20", 10)
    pv = backbones.init(perf, jax.random.PRNGKey(0), (16, 16, 3))
    imgs = jnp.asarray(_images(2, 16))
    (ft,) = M.performer_features(perf, "resnet20", ("layer2",))(pv, imgs)
    ref, _ = perf.apply(pv, backbones.normalize(imgs, "resnet20"))
    got = M.replaced_logits(perf, "resnet20", "layer2")(pv, imgs, ft)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    with pytest.raises(LayerError, match="supported targets"):
        M.injection(backbones.create("vgg16"), "vgg16", "relu5_3")


def _setup(convnet, **overrides):
    perf, pv = convnet
    cfg = dataclasses.replace(ExplainerConfig.tiny(), filters=8, layer="relu3", target="relu4", **overrides)
    return P.build(cfg, perf, pv, _images(8))


TX = optax.adam(3e-3)


@pytest.fixture(scope="module")
def steps(convnet):
    """One compiled step per mode, shared by the tests below (compiling is what costs time here)."""
    out = {}
    for faithful in (False, True):
        s = _setup(convnet, faithful=faithful)
        out[faithful] = (s, P.make_step(s, TX, steps_per_epoch=5))
    return out


def test_the_train_step_is_compiled_with_reductions_outside_ynn(steps):
    """The program's step keeps the ICNN loss's leading-axis reductions out of YNNPACK (jinterp.core.xla_options)."""
    s, step = steps[False]
    state = P.init_state(s, TX, jax.random.PRNGKey(2))
    args = (state, s.perf_vars, jnp.asarray(_images(8)), jnp.float32(0.5), jnp.float32(0.1))
    plain = jax.jit(step.__wrapped__).lower(*args).compile().as_text()
    if jax.default_backend() != "cpu" or not xla_options.ynn_reduction_fusions(plain):
        pytest.skip("no YNNPACK reductions to keep out on this backend / XLA")
    assert xla_options.ynn_reduction_fusions(step.lower(*args).compile().as_text()) == []


@pytest.mark.slow
@pytest.mark.parametrize("faithful", [False, True])
def test_tiny_training_lowers_the_loss_and_leaves_the_performer_alone(steps, faithful):
    s, step = steps[faithful]
    assert s.cfg.surrogate is faithful
    state = P.init_state(s, TX, jax.random.PRNGKey(2))
    p0 = jax.tree.map(np.asarray, state.params)
    perf_before = jax.tree.map(np.asarray, s.perf_vars)
    imgs = jnp.asarray(_images(16, seed=3))
    losses = []
    for _ in range(15):
        state, m = step(state, s.perf_vars, imgs, jnp.float32(0.5), jnp.float32(0.1))
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    for a, b in zip(jax.tree.leaves(perf_before), jax.tree.leaves(s.perf_vars), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [not np.allclose(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(p0),
                                                               jax.tree.leaves(state.params), strict=True)]
    assert all(moved)
    betas = np.concatenate([np.asarray(v) for v in state.model_state["icnn"].values()])
    assert np.all(np.isfinite(betas)) and np.all((betas >= 0.5) & (betas <= 10.0))
    assert not np.allclose(betas, 2.0)  # beta moved toward its target
    assert float(state.model_state["batch_stats"]["norm_interp"]["rms"]) != 1.0


@pytest.mark.slow
def test_vmapped_sweep_equals_separate_runs(steps):
    s, sstep = steps[False]
    one = P.init_state(s, TX, jax.random.PRNGKey(6))
    lams, etas = jnp.asarray([0.0, 20.0]), jnp.asarray([0.1, 1.0])
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), one)
    vstep = P.make_step(s, TX, 5, num_models=2)
    singles = [jax.tree.map(jnp.copy, one), jax.tree.map(jnp.copy, one)]
    for t in range(3):
        imgs = jnp.asarray(_images(8, seed=10 + t))
        stacked, _ = vstep(stacked, s.perf_vars, imgs, lams, etas)
        for i in range(2):
            singles[i], _ = sstep(singles[i], s.perf_vars, imgs, lams[i], etas[i])
    for i in range(2):
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], stacked.params)),
                        jax.tree.leaves(singles[i].params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-4)
    # Different (lam, eta) give different models.
    diff = max(float(jnp.max(jnp.abs(x[0] - x[1]))) for x in jax.tree.leaves(stacked.params))
    assert diff > 1e-3, diff


def test_relative_error_and_config_validation():
    t = jnp.ones((2, 2, 2, 1))
    np.testing.assert_allclose(np.asarray(M.relative_error(t, 0.5 * t)), [0.25, 0.25])
    from jinterp.errors import ConfigError

    with pytest.raises(ConfigError):
        dataclasses.replace(ExplainerConfig.tiny(), beta_bounds=(0.0, 1.0)).validate()
    with pytest.raises(ConfigError, match="no default explainer layers"):
        dataclasses.replace(ExplainerConfig.tiny(), arch="alexnet").layers()
    assert isinstance(train.TrainState, type)
