"""Feature extraction: agreement with a direct apply, fixed-shape batching, caching, clear errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.core import features
from jinterp.data.pipeline import standardize
from jinterp.errors import DataError, LayerError, ShapeError


class TinyNet(nn.Module):
    """Two convs and a head; returns (logits, named feats) like every jinterp backbone."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        c1 = nn.relu(nn.Conv(4, (3, 3), name="c1")(x))
        c2 = nn.relu(nn.Conv(6, (3, 3), strides=2, name="c2")(c1))
        pooled = c2.mean(axis=(1, 2))
        logits = nn.Dense(3, name="head")(pooled)
        return logits, {"conv1": c1, "conv2": c2, "pool": pooled}


@pytest.fixture(scope="module")
def net():
    model = TinyNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    images = np.random.default_rng(0).integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)
    return model, variables, images


def _direct(model, variables, images, layer):
    logits, feats = model.apply(variables, jnp.asarray(images, jnp.float32) / 255.0)
    return np.asarray(logits if layer == "logits" else feats[layer])


def test_extract_matches_direct_apply_with_padded_last_batch(net):
    model, variables, images = net
    out = features.extract(model, variables, images, ["conv2", "pool", "logits"], batch_size=4)
    assert set(out) == {"conv2", "pool", "logits"}
    assert out["conv2"].shape == (11, 4, 4, 6)
    for layer in out:
        np.testing.assert_allclose(out[layer], _direct(model, variables, images, layer), rtol=1e-5, atol=1e-5)


def test_one_compilation_for_any_dataset_length(net):
    model, variables, images = net
    features.extract(model, variables, images[:7], ["conv1"], batch_size=4)
    features.extract(model, variables, images[:9], ["conv1"], batch_size=4)
    fn = features._compiled_extractor(model, ("conv1",), features.preset("unit"))
    assert fn._cache_size() == 1


def test_streaming_over_chunks_equals_whole_array(net):
    model, variables, images = net
    streamed = [f["pool"] for f in features.iter_features(model, variables, [images[:5], images[5:]], ["pool"],
                                                           batch_size=4)]
    whole = features.extract(model, variables, images, ["pool"], batch_size=4)["pool"]
    np.testing.assert_allclose(np.concatenate(streamed), whole, rtol=1e-6)


def test_preprocess_runs_inside_the_jit(net):
    model, variables, images = net
    pre = functools.partial(standardize, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = features.extract(model, variables, images, ["pool"], batch_size=8, preprocess=pre)["pool"]
    x = (images.astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(out, np.asarray(model.apply(variables, x)[1]["pool"]), rtol=1e-5, atol=1e-5)


def test_disk_cache_is_written_then_reused(net, tmp_path):
    model, variables, images = net
    first = features.extract(model, variables, images, ["conv1", "pool"], batch_size=4, cache_dir=tmp_path)
    assert isinstance(first["conv1"], np.memmap)
    (entry,) = list(tmp_path.iterdir())
    assert (entry / "complete.json").exists()
    stamp = (entry / "conv1.npy").stat().st_mtime_ns
    again = features.extract(model, variables, images, ["conv1", "pool"], batch_size=4, cache_dir=tmp_path)
    assert (entry / "conv1.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again["pool"], first["pool"])
    np.testing.assert_allclose(again["pool"], _direct(model, variables, images, "pool"), rtol=1e-5, atol=1e-5)
    # Other variables -> another fingerprint, not a stale hit.
    other = jax.tree_util.tree_map(lambda a: a * 2, variables)
    features.extract(model, other, images, ["conv1", "pool"], batch_size=4, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_incomplete_cache_is_not_reused(net, tmp_path):
    model, variables, images = net
    features.extract(model, variables, images, ["pool"], batch_size=4, cache_dir=tmp_path)
    (entry,) = list(tmp_path.iterdir())
    (entry / "complete.json").unlink()
    np.save(entry / "pool.npy", np.zeros((11, 6), np.float32))  # as if a killed run left garbage
    out = features.extract(model, variables, images, ["pool"], batch_size=4, cache_dir=tmp_path)
    np.testing.assert_allclose(out["pool"], _direct(model, variables, images, "pool"), rtol=1e-5, atol=1e-5)


def test_unknown_layer_lists_valid_names(net):
    model, variables, images = net
    with pytest.raises(LayerError) as err:
        features.extract(model, variables, images, ["conv9"])
    msg = str(err.value)
    assert "conv9" in msg and "conv1" in msg and "pool" in msg and "logits" in msg


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (np.zeros((8, 8, 3), np.uint8), ShapeError, "4-D NHWC"),
        (np.zeros((2, 8, 8, 3), np.int64), ShapeError, "dtype"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), ShapeError, "NaN"),
        (np.zeros((0, 8, 8, 3), np.uint8), DataError, "empty"),
    ],
)
def test_bad_images_get_clear_errors(net, bad, error, words):
    model, variables, _ = net
    with pytest.raises(error, match=words):
        features.extract(model, variables, bad, ["pool"])


def test_feature_shapes_without_compute(net):
    model, variables, _ = net
    shapes = features.feature_shapes(model, variables, (8, 8, 3), ["conv1", "conv2", "logits"])
    assert shapes == {"conv1": (8, 8, 4), "conv2": (4, 4, 6), "logits": (3,)}


def test_arch_name_brings_its_own_normalization():
    from jinterp import backbones

    model = backbones.create("convnet")
    variables = backbones.init(model, jax.random.key(0), (32, 32, 3))
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = features.extract("convnet", variables, images, ["avgpool"], batch_size=4)["avgpool"]
    _, feats = model.apply(variables, backbones.normalize(images, "convnet"))
    np.testing.assert_allclose(out, np.asarray(feats["avgpool"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="unknown arch or normalization"):
        features.extract(model, variables, images, ["avgpool"], preprocess="caffe")


def test_in_a_multi_process_job_only_process_0_extracts_the_cache_and_the_others_read_it(net, tmp_path, monkeypatch):
    """Process 1 of two (simulated): it must not compute or write features, wait at the barrier (during which
    process 0 writes the cache) and then read process 0's cache."""
    from jax.experimental import multihost_utils

    from jinterp.core import run as run_module

    model, variables, images = net
    reference = features.extract(model, variables, images, ["pool"], batch_size=4, cache_dir=tmp_path / "p0")
    (entry0,) = list((tmp_path / "p0").iterdir())
    shared = tmp_path / "shared"
    barriers = []

    def barrier(name):  # process 0 finishes its extraction while process 1 waits here
        barriers.append(name)
        import shutil

        shutil.copytree(entry0, shared / entry0.name, dirs_exist_ok=True)

    monkeypatch.setattr(features, "_process_layout", lambda: (2, False))
    monkeypatch.setattr(run_module, "_process_layout", lambda: (2, False))
    monkeypatch.setattr(features, "is_primary", lambda: False)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barrier)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: x)  # process 0 has no cache either
    monkeypatch.setattr(features, "iter_features", lambda *a, **k: pytest.fail("process 1 computed features"))
    got = features.extract(model, variables, images, ["pool"], batch_size=4, cache_dir=shared)
    assert len(barriers) == 1
    np.testing.assert_array_equal(got["pool"], reference["pool"])
