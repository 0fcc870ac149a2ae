"""jinterp/bench/data_readers.py compares pipelines on the same records: the ArrayRecord file holds the Broden
folder's JPEG bytes, and its batches equal the lazy Broden reader's images exactly."""

from __future__ import annotations

import numpy as np
import pytest


def test_array_record_batches_equal_the_lazy_broden_batches(tmp_path):
    pytest.importorskip("array_record")
    from jinterp.bench import data_readers
    from jinterp.data.broden_writer import write_synthparts_broden

    root = tmp_path / "broden"
    write_synthparts_broden(root, 7, size=224)
    data_readers.write_records(root)
    lazy = list(data_readers._batches("lazy", root, 7, 3, 0))
    records = list(data_readers._batches("array_record", root, 7, 3, 0))
    assert [len(b) for b in lazy] == [len(b) for b in records] == [3, 3, 1]
    for a, b in zip(lazy, records, strict=True):
        assert a.dtype == b.dtype == np.uint8 and a.shape[1:] == (224, 224, 3)
        np.testing.assert_array_equal(a, b)
    assert len({bytes(np.asarray(b[0]).tobytes()) for b in lazy}) == 3  # distinct images, not one repeated
