"""ClaDec's loss, the cached α = 0 path, the vmapped α sweep and RefAE's prefix encoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jinterp import backbones
from jinterp.methods.cladec import evaluation, refae, training
from jinterp.methods.cladec.decoder import init_decoder, init_decoders, make_decoder

IMG = (16, 16, 3)
LAYER = "relu3"  # 4x4x8 at 16 px: conv entry + 2 transposed convs


@pytest.fixture(scope="module")
def setup():
    model = backbones.create("convnet", 5, widths=(4, 8, 8, 8))
    variables = backbones.init(model, jax.random.key(0), IMG)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, *IMG), dtype=np.uint8)
    labels = rng.integers(0, 5, (8,)).astype(np.int32)
    encode = evaluation.make_encode(model, "convnet", LAYER)
    act = jax.jit(encode)(variables, training.to_unit(images))
    decoder = make_decoder(act.shape[1:], IMG, 4, LAYER)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels), "act": act}
    return {"model": model, "variables": variables, "batch": batch, "decoder": decoder, "encode": encode,
            "classify": evaluation.make_classify(model, "convnet")}


def test_loss_equals_hand_computation(setup):
    s = setup
    params = init_decoder(s["decoder"], jax.random.key(1))
    xhat = np.asarray(s["decoder"].apply({"params": params}, s["batch"]["act"]), np.float64)
    x = np.asarray(s["batch"]["image"], np.float64) / 255.0
    logits = np.asarray(s["model"].apply(s["variables"], jnp.asarray(xhat, jnp.float32), train=False)[0], np.float64)
    y = np.asarray(s["batch"]["label"])
    mse = np.mean((xhat - x) ** 2)
    m = logits.max(1, keepdims=True)
    ce = np.mean(np.log(np.exp(logits - m).sum(1)) + m[:, 0] - logits[np.arange(len(y)), y])
    loss_fn = jax.jit(lambda p, a: training.cladec_loss(p, a, s["batch"], s["variables"], decoder=s["decoder"],
                                                        classify=s["classify"]))
    for alpha in (0.0, 0.3, 1.0):
        loss, aux = loss_fn(params, alpha)
        np.testing.assert_allclose(float(loss), (1 - alpha) * mse + alpha * ce, rtol=1e-5)
        np.testing.assert_allclose(float(aux["rec"]), mse, rtol=1e-5)
        np.testing.assert_allclose(float(aux["ce"]), ce, rtol=1e-5)
    loss0, aux0 = jax.jit(lambda p: training.cladec_loss(p, 0.0, s["batch"], {}, decoder=s["decoder"],
                                                          use_ce=False))(params)
    np.testing.assert_allclose(float(loss0), mse, rtol=1e-5)
    assert np.isnan(float(aux0["ce"]))  # never computed on the cached path


def test_cached_alpha0_path_gives_the_uncached_gradient(setup):
    s = setup
    params = init_decoder(s["decoder"], jax.random.key(2))
    kw = {"decoder": s["decoder"], "classify": s["classify"], "encode": s["encode"]}

    def grad(batch, use_ce):
        f = lambda p: training.cladec_loss(p, 0.0, batch, s["variables"], use_ce=use_ce, **kw)[0]
        return jax.jit(jax.grad(f))(params)

    cached = grad(s["batch"], False)                                      # activations from the cache, no C
    no_cache = {k: v for k, v in s["batch"].items() if k != "act"}
    uncached = grad(no_cache, False)                                      # a = f_l(x) computed in the step
    faithful = grad(s["batch"], True)                                     # official: 0·CE through C
    for other in (uncached, faithful):
        for a, b in zip(jax.tree.leaves(cached), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(cached)) > 0


def test_vmap_sweep_equals_separately_trained_decoders(setup):
    s = setup
    alphas = (0.0, 0.1, 0.5)
    keys = jax.random.split(jax.random.key(3), len(alphas))
    stacked = init_decoders(s["decoder"], keys)
    tx = training.torch_adam(1e-2, 1e-3)
    data = {k: v for k, v in s["batch"].items()}
    idx = [jnp.asarray([0, 2, 4, 6]), jnp.asarray([7, 5, 3, 1])]

    step = training.make_sweep_step(s["decoder"], tx, classify=s["classify"], use_ce=True, donate=False)
    state = training.new_state(stacked, tx, jax.random.key_data(jax.random.key(4)))
    for i in idx:
        state, metrics = step(state, i, data, jnp.asarray(alphas), s["variables"])
    alone = {use_ce: training.make_sweep_step(s["decoder"], tx, classify=s["classify"], use_ce=use_ce, donate=False)
             for use_ce in (False, True)}
    for k, alpha in enumerate(alphas):
        # alone: K = 1, and α = 0 on the cached path without the classifier
        use_ce = alpha > 0
        one = alone[use_ce]
        st = training.new_state(jax.tree.map(lambda p, k=k: p[k:k + 1], stacked), tx,
                                jax.random.key_data(jax.random.key(4)))
        for i in idx:
            st, m1 = one(st, i, data, jnp.asarray([alpha]), s["variables"] if use_ce else {})
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(st.params), strict=True):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[0]), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(float(metrics[f"rec/{k}"]), float(m1["rec/0"]), rtol=1e-5)
    # the decoders did move, and differently per α
    p0 = jax.tree.leaves(stacked)[0]
    p1 = jax.tree.leaves(state.params)[0]
    assert not np.allclose(p0, p1)


def test_step_schedule_follows_the_official_decay():
    sched = training.step_schedule(3e-4, 64, 10)
    assert float(sched(289)) == pytest.approx(3e-4)
    assert float(sched(290)) == pytest.approx(3e-5)
    assert float(sched(580)) == pytest.approx(3e-6)
    assert float(training.step_schedule(3e-4, 64, 10, decay=False)(600)) == pytest.approx(3e-4)


def _flat_paths(tree):
    return set(traverse_util.flatten_dict(dict(tree), sep="/"))


def test_refae_encoder_is_the_classifier_prefix():
    arch, layer, blocks, shape = "convnet", "relu2", ["conv1", "bn1", "conv2", "bn2"], (16, 16, 3)
    model = backbones.create(arch, 10, widths=(4, 8, 8, 8))
    variables = backbones.init(model, jax.random.key(5), shape)
    enc = refae.make_encoder(arch, model, variables, shape, layer)
    # exactly the parameters of the blocks up to the layer, and their BatchNorms' statistics
    want = {p for p in _flat_paths(variables["params"]) if p.split("/")[0] in blocks}
    assert set(enc.trainable) == want
    assert set(enc.stats_modules) == {"bn1", "bn2"}
    params, stats, frozen = enc.split(variables)
    x = jax.random.uniform(jax.random.key(6), (2, *shape))
    code, _ = jax.jit(lambda p, s, f, x: enc(p, s, f, x, train=False))(params, stats, frozen, x)
    _, feats = model.apply(variables, backbones.normalize(x, arch), train=False)
    np.testing.assert_allclose(np.asarray(code), np.asarray(feats[layer]), rtol=1e-5, atol=1e-6)


def test_refae_step_trains_only_the_prefix_and_its_statistics():
    model = backbones.create("convnet", 5, widths=(4, 8, 8, 8))
    variables = backbones.init(model, jax.random.key(7), IMG)
    enc = refae.make_encoder("convnet", model, variables, IMG, LAYER)
    params, stats, frozen = enc.split(variables)
    assert not any(p.startswith(("conv4", "bn4", "fc")) for p in params)
    assert set(frozen["params"]) == {"conv4/kernel", "bn4/scale", "bn4/bias", "fc/kernel", "fc/bias"}
    decoder = make_decoder((4, 4, 8), IMG, 4)
    tx = training.torch_adam(1e-2, 1e-5)
    state = training.new_state({"encoder": params, "decoder": init_decoder(decoder, jax.random.key(8))}, tx,
                               jax.random.key_data(jax.random.key(9)), stats)
    step = refae.make_refae_step(enc, decoder, tx, donate=False)
    data = {"image": jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, *IMG), dtype=np.uint8))}
    new, metrics = step(state, jnp.arange(8), data, frozen)
    assert np.isfinite(float(metrics["loss"]))
    assert set(new.model_state) == set(stats)
    moved = [k for k in stats if not np.allclose(new.model_state[k], stats[k])]
    assert moved and all(k.split("/")[0] in ("bn1", "bn2", "bn3") for k in moved)
    for k, v in params.items():
        assert not np.allclose(new.params["encoder"][k], v), k


def test_refae_on_official_flat_layer_prefix_and_faithful_dropout():
    """vgg11_bn_cladec's ``flat``: the encoder is every conv block (not ``pred``), its eval code is the
    classifier's, and ``faithful`` dropout (official HEAD slice keeps Dropout(0.5)) masks the training code."""
    model = backbones.create("vgg11_bn_cladec", 10)
    shape = (32, 32, 1)
    variables = backbones.init(model, jax.random.key(10), shape)
    x = jax.random.uniform(jax.random.key(11), (4, *shape))
    codes = {}
    for p in (0.0, 0.5):
        enc = refae.make_encoder("vgg11_bn_cladec", model, variables, shape, "flat", code_dropout=p)
        params, stats, frozen = enc.split(variables)
        assert set(enc.trainable) == {k for k in _flat_paths(variables["params"]) if not k.startswith("pred")}
        assert set(frozen["params"]) == {"pred/kernel", "pred/bias"}
        codes[p], _ = jax.jit(lambda pr, s, f, x, e=enc: e(pr, s, f, x, train=True, rng=jax.random.key(12)))(
            params, stats, frozen, x)
    code, _ = jax.jit(lambda pr, s, f, x, e=enc: e(pr, s, f, x, train=False))(params, stats, frozen, x)
    _, feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(np.asarray(code), np.asarray(feats["flat"]), rtol=1e-5, atol=1e-6)
    plain, dropped = np.asarray(codes[0.0]), np.asarray(codes[0.5])
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 2 * plain[kept], rtol=1e-5)
    nonzero = plain != 0
    assert 0.35 < (kept[nonzero]).mean() < 0.65
