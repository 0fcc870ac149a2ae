"""Train state, optimizer construction and the jitted steps (tiny Linen CNN, random data)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from coretoy import setup

from jinterp.core import sharding as shd
from jinterp.core import train
from jinterp.core.config import OptimConfig
from jinterp.errors import ConfigError, ShapeError


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_one_train_step():
    """Flax-examples style: one step updates params and BN stats, counts the step, reports finite metrics."""
    _, state, step, it = setup()
    before = _host(state)
    state, metrics = step(state, next(it))
    after = _host(state)
    assert int(after.step) == 1
    m = jax.device_get(metrics)
    assert set(m) >= {"loss", "accuracy", "grad_norm", "lr"}
    assert all(np.isfinite(v) for v in m.values())
    assert m["lr"] == 0.0  # linear warmup starts at 0
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.model_state, after.model_state)
    assert all(jax.tree.leaves(changed))  # BatchNorm running statistics moved
    np.testing.assert_array_equal(after.rng, before.rng)  # the loop key is fixed; steps fold the step in


def test_loss_decreases_on_toy_problem():
    _, state, step, it = setup()
    losses = []
    for _ in range(20):
        state, m = step(state, next(it))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_same_seed_same_result_and_donation():
    _, s1, step1, it1 = setup()
    _, s2, step2, it2 = setup()
    for _ in range(3):
        old = s1
        s1, _ = step1(s1, next(it1))
        s2, _ = step2(s2, next(it2))
    assert old.params["fc"]["kernel"].is_deleted()  # the state buffers were donated
    jax.tree.map(np.testing.assert_array_equal, _host(s1), _host(s2))


def test_eight_devices_equal_one_device():
    """The same step on a 1-device mesh and an 8-device mesh (batch sharded, params replicated)."""
    assert len(jax.devices()) == 8, "tests/conftest.py should simulate 8 CPU devices"
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = shd.make_mesh(devices)
        _, state, step, it = setup(mesh=mesh)
        state = shd.replicate(state, mesh)
        for _ in range(3):
            state, metrics = step(state, shd.shard_batch(next(it), mesh))
        assert state.params["fc"]["kernel"].sharding.is_fully_replicated
        results.append((_host(state), jax.device_get(metrics)))
    (s1, m1), (s8, m8) = results
    # Cross-device reductions sum in another order: equal up to float32 rounding.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1, s8)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)


def test_batch_not_divisible_by_devices():
    mesh = shd.make_mesh(jax.devices())
    with pytest.raises(ShapeError, match="not divisible by the 8 devices"):
        shd.shard_batch({"image": np.zeros((12, 8, 8, 3), np.uint8)}, mesh)


def test_bf16_compute_keeps_float32_params():
    _, state, step, it = setup(compute_dtype=jnp.bfloat16)
    state, m = step(state, next(it))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state.model_state)} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(float(m["loss"]))


def test_freeze_by_regex():
    _, state, step, it = setup(optim=OptimConfig(name="sgd", lr=0.1, freeze=(r"^conv1/",)))
    before = _host(state.params)
    for _ in range(2):
        state, _ = step(state, next(it))
    after = _host(state.params)
    np.testing.assert_array_equal(before["conv1"]["kernel"], after["conv1"]["kernel"])
    np.testing.assert_array_equal(before["conv1"]["bias"], after["conv1"]["bias"])
    assert not np.array_equal(before["fc"]["kernel"], after["fc"]["kernel"])


def test_freeze_pattern_must_match():
    params = {"conv1": {"kernel": jnp.zeros((3, 3))}}
    with pytest.raises(ConfigError, match="matches no parameter.*conv1/kernel"):
        train.make_optimizer(OptimConfig(freeze=("nope",)), 10, params)


def test_schedules():
    cos = train.make_schedule(OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10), 110)
    assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.5)
    assert float(cos(10)) == pytest.approx(1.0) and float(cos(110)) == pytest.approx(0.0, abs=1e-6)
    step = train.make_schedule(OptimConfig(lr=1.0, schedule="step", decay_steps=(0.5, 75), decay_factor=0.1), 100)
    assert [float(step(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    const = train.make_schedule(OptimConfig(lr=0.3, schedule="constant"), 5)
    assert float(const(4)) == pytest.approx(0.3)


def test_clipping_and_coupled_weight_decay():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2), 100.0), "b": jnp.zeros((2,))}
    tx, _ = train.make_optimizer(OptimConfig(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.5,
                                             schedule="constant", clip_norm=1.0), 10)
    upd, _ = tx.update(grads, tx.init(params), params)
    # clip (norm 200 -> 1, each entry 0.5), then + wd * w on kernels only, then -lr.
    np.testing.assert_allclose(upd["w"], -np.full((2, 2), 0.5 + 0.5), rtol=1e-6)
    np.testing.assert_allclose(upd["b"], 0.0)
    assert optax.tree.norm(grads) > 1


@pytest.mark.parametrize("mode", ["none", "flip", "flip_crop"])
def test_augment_shapes_and_determinism(mode):
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)), jnp.uint8)
    a = train.augment_images(x, jax.random.PRNGKey(0), mode, pad=2)
    b = train.augment_images(x, jax.random.PRNGKey(0), mode, pad=2)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)


def test_eval_with_mask():
    model, state, _, it = setup()
    ev = train.make_eval_step(train.make_classifier_eval(model, mean=(0.5,) * 3, std=(0.25,) * 3))
    batch = next(it)
    padded = {k: np.concatenate([v, v[:4]]) for k, v in batch.items()}
    padded["mask"][-4:] = False
    r1 = train.evaluate(ev, state, [batch])
    r2 = train.evaluate(ev, state, [padded])
    assert r1["count"] == r2["count"] == 16
    assert r1["accuracy"] == pytest.approx(r2["accuracy"]) and r1["loss"] == pytest.approx(r2["loss"])


def test_tree_names_and_regex_mask():
    tree = {"layer1": {"conv": {"kernel": 1}}, "fc": {"bias": 2}}
    assert train.tree_names(tree) == ["fc/bias", "layer1/conv/kernel"]
    assert train.regex_mask(tree, ["^layer1"]) == {"layer1": {"conv": {"kernel": True}}, "fc": {"bias": False}}
