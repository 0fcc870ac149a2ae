"""The synthparts TFDS builder writes array_record without TensorFlow and reads back the generator's bytes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")


def test_prepare_and_read_back(tmp_path):
    from jinterp.data import generate, load, prepare_synthparts

    prepare_synthparts(tmp_path, size=64, n_train=12, n_test=5, seed=1)
    files = sorted(p.name for p in (tmp_path / "synthparts" / "size64" / "1.0.0").iterdir())
    assert any(".array_record" in f for f in files), files
    src = tfds.data_source("synthparts/size64", data_dir=str(tmp_path))
    assert len(src["train"]) == 12 and len(src["test"]) == 5
    ref = generate(5, seed=1, split="test")
    for i in range(5):
        rec = src["test"][i]
        for k in ("image", "label", "object", "part", "color", "slot", "texture", "landmarks", "landmark_visible"):
            assert np.array_equal(np.asarray(rec[k]), ref[k][i]), k
    ds = load(f"tfds:synthparts/size64:{tmp_path}", "test")
    assert np.array_equal(ds.images, ref["image"]) and np.array_equal(ds.masks["part"], ref["part"])
    assert np.array_equal(ds.landmarks, ref["landmarks"]) and ds.class_names[0] == "lamp"
    assert ds.concepts["color"][1] == "red"
    if "tensorflow" not in sys.modules:  # nothing above needed TensorFlow
        assert not any(m.startswith("tensorflow.") and "datasets" not in m for m in sys.modules)


def test_missing_tfds_dir(tmp_path):
    from jinterp.data import load
    from jinterp.errors import MissingFileError

    with pytest.raises(MissingFileError, match="prepare"):
        load(f"tfds:synthparts/size64:{tmp_path / 'none'}")
    with pytest.raises(MissingFileError, match="not prepared"):
        load(f"tfds:synthparts/size64:{tmp_path}")


def test_lazy_tfds_decodes_per_batch_and_equals_the_eager_batches(tmp_path, monkeypatch):
    """``tfds:...,lazy=1`` decodes no record at open (only the small features are parsed), then each record once
    per batch however many columns (image + 4 masks) ask for it; its batches equal the eager reader's exactly."""
    from jinterp.data import BatchIterator, load, prepare_synthparts
    from jinterp.data.lazy import is_lazy

    prepare_synthparts(tmp_path, size=64, n_train=10, n_test=3, seed=2)
    spec = f"tfds:synthparts/size64:{tmp_path}"
    eager = load(spec, "train")
    decoded = []  # every full decode of a serialized example (image, masks and all)
    real = tfds.core.features.FeaturesDict.deserialize_example_np
    monkeypatch.setattr(tfds.core.features.FeaturesDict, "deserialize_example_np",
                        lambda self, *a, **kw: decoded.append(1) or real(self, *a, **kw))
    lazy = load(f"{spec}:lazy=1", "train")
    assert decoded == []  # nothing decoded up front
    assert is_lazy(lazy.images) and all(is_lazy(m) for m in lazy.masks.values())
    assert sorted(lazy.masks) == sorted(eager.masks) == ["color", "object", "part", "slot"]
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    np.testing.assert_array_equal(lazy.image_labels["texture"], eager.image_labels["texture"])
    np.testing.assert_array_equal(lazy.landmarks, eager.landmarks)
    np.testing.assert_array_equal(lazy.landmark_visible, eager.landmark_visible)
    assert lazy.class_names == eager.class_names and lazy.concepts == eager.concepts

    def batches(ds, prefetch):
        return list(BatchIterator(ds, 4, seed=3, num_epochs=1, prefetch=prefetch, masks=tuple(eager.masks),
                                  image_labels=("texture",), landmarks=True))

    first = next(iter(BatchIterator(lazy, 4, shuffle=False, prefetch=0, masks=tuple(eager.masks))))
    assert len(decoded) == 4 and np.asarray(first["image"]).shape == (4, 64, 64, 3)  # one batch: 4 records
    np.testing.assert_array_equal(np.asarray(first["part"]), eager.masks["part"][:4])
    decoded.clear()
    got, want = batches(lazy, 2), batches(eager, 0)
    assert len(decoded) == 10  # one epoch: every record decoded once, shared by the image and the 4 masks
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        for key in w:
            np.testing.assert_array_equal(np.asarray(g[key]), np.asarray(w[key]), err_msg=key)
    sub = lazy.take([7, 2])  # a subset stays lazy and reads the right records
    np.testing.assert_array_equal(np.asarray(sub.images), eager.images[[7, 2]])
    np.testing.assert_array_equal(np.asarray(sub.masks["part"]), eager.masks["part"][[7, 2]])
