"""Pipeline: shuffling, padding, sharding over 8 simulated devices, resuming, preprocessing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jinterp.data import BatchIterator, Dataset, Position, data_mesh, load, normalize, preprocess
from jinterp.errors import ConfigError, ShapeError


@pytest.fixture(scope="module")
def ds():
    return load("synthparts:size=32,n_train=50,n_test=8,seed=2")


def _collect(it, k=None):
    out = []
    for b in it:
        out.append(jax.tree.map(np.asarray, b))
        if k is not None and len(out) == k:
            break
    return out


def test_epochs_visit_everything_once_with_padding(ds):
    it = BatchIterator(ds, 16, seed=1, num_epochs=2, prefetch=0)
    assert it.steps_per_epoch == 4
    bs = _collect(it)
    assert len(bs) == 8 and it.position() == Position(2, 0)
    e0 = np.concatenate([b["index"][b["mask"]] for b in bs[:4]])
    e1 = np.concatenate([b["index"][b["mask"]] for b in bs[4:]])
    assert sorted(e0) == list(range(50)) and sorted(e1) == list(range(50)) and not np.array_equal(e0, e1)
    last = bs[3]
    assert last["mask"].sum() == 2 and np.all(last["index"][2:] == -1) and np.all(last["image"][2:] == 0)
    assert np.array_equal(last["image"][:2], ds.images[last["index"][:2]])
    assert np.array_equal(bs[0]["label"], ds.labels[bs[0]["index"]])
    again = _collect(BatchIterator(ds, 16, seed=1, num_epochs=1))  # prefetching gives the same batches
    assert all(np.array_equal(a["index"], b["index"]) for a, b in zip(again, bs[:4], strict=True))
    assert len(_collect(BatchIterator(ds, 16, drop_remainder=True, num_epochs=1))) == 3


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_from_position(ds, prefetch):
    ref = _collect(BatchIterator(ds, 8, seed=4, num_epochs=3, prefetch=prefetch))
    it = BatchIterator(ds, 8, seed=4, num_epochs=3, prefetch=prefetch)
    head = _collect(it, 9)  # stops inside epoch 1
    pos = it.position()
    assert pos == Position(1, 2)
    it.close()
    tail = _collect(BatchIterator(ds, 8, seed=4, num_epochs=3, prefetch=prefetch, position=pos.to_dict()))
    assert len(head) + len(tail) == len(ref)
    for a, b in zip(head + tail, ref, strict=True):
        assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["image"], b["image"])


def test_sharded_over_8_devices_matches_one_device(ds):
    assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
    mesh = data_mesh()
    kw = dict(seed=0, num_epochs=1, masks=("part",), image_labels=("texture",), landmarks=True)
    b8 = next(BatchIterator(ds, 16, mesh=mesh, **kw))
    b1 = next(BatchIterator(ds, 16, **kw))
    img = b8["image"]
    assert img.sharding.spec == PartitionSpec("data") and len(img.addressable_shards) == 8
    assert img.addressable_shards[0].data.shape == (2, 32, 32, 3)
    assert b8["part"].dtype == jnp.int32 and b8["landmarks"].shape == (16, 4, 2)

    @jax.jit
    def stats(b):
        x = preprocess(b, normalization="imagenet")["image"]
        m = b["mask"][:, None, None, None]
        return jnp.sum(jnp.where(m, x, 0), axis=(0, 1, 2)), jnp.where(b["mask"], b["label"], 0).sum()

    s8, s1 = stats(b8), stats(b1)
    np.testing.assert_allclose(np.asarray(s8[0]), np.asarray(s1[0]), rtol=1e-5)
    assert int(s8[1]) == int(s1[1])
    with pytest.raises(ShapeError, match="divisible by the 8 devices"):
        BatchIterator(ds, 12, mesh=mesh)


def test_bad_requests(ds):
    with pytest.raises(ConfigError, match="not in dataset"):
        BatchIterator(ds, 4, masks=("nope",))
    with pytest.raises(ConfigError, match="outside"):
        BatchIterator(ds, 4, position=Position(0, 99))
    plain = Dataset(images=ds.images, labels=ds.labels, num_classes=6, class_names=ds.class_names)
    with pytest.raises(ConfigError, match="no landmarks"):
        BatchIterator(plain, 4, landmarks=True)


def test_normalize_presets():
    x = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
    np.testing.assert_allclose(normalize(x, "unit"), 1.0)
    np.testing.assert_allclose(normalize(x, "imagenet")[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    assert normalize(jnp.zeros((1, 2, 2, 1), jnp.uint8), "mnist").dtype == jnp.float32
    # RGB statistics on gray images use their channel means; other channel mismatches are errors.
    gray = normalize(jnp.zeros((1, 2, 2, 1), jnp.uint8), "cifar10_stats")
    np.testing.assert_allclose(gray, -np.mean([0.4914, 0.4822, 0.4465]) / np.mean([0.2470, 0.2435, 0.2616]),
                               rtol=1e-6)
    with pytest.raises(ShapeError):
        normalize(jnp.zeros((1, 2, 2, 2), jnp.uint8), "cifar10_stats")
    # Float input is taken as [0, 1] pixels, not rescaled again.
    np.testing.assert_allclose(normalize(jnp.ones((1, 2, 2, 3)), "unit"), 1.0)
    with pytest.raises(ConfigError):
        normalize(x, "bogus")


def test_augment_moves_masks_and_landmarks_with_the_image(ds):
    b = next(BatchIterator(ds, 16, masks=("slot",), landmarks=True, num_epochs=1, shuffle=False))
    f = jax.jit(lambda b, k: preprocess(b, k, normalization="unit", flip=True, crop_pad=3, map_keys=("slot",)))
    out = jax.tree.map(np.asarray, f(b, jax.random.key(3)))
    again = jax.tree.map(np.asarray, f(b, jax.random.key(3)))
    assert np.array_equal(out["image"], again["image"])  # keyed: reproducible
    changed = 0
    for i in range(16):
        for j in np.nonzero(out["landmark_visible"][i])[0]:
            ys, xs = np.nonzero(out["slot"][i] == j + 1)
            if not len(ys):  # cropped away entirely
                continue
            x, y = out["landmarks"][i, j]
            assert xs.min() - 1 <= x <= xs.max() + 2 and ys.min() - 1 <= y <= ys.max() + 2
        changed += not np.array_equal(out["slot"][i], np.asarray(b["slot"][i]))
    assert changed > 0
