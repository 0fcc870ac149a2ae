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
