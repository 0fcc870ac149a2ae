"""write_synthparts_broden: synthparts laid out as a Broden folder reads back as synthparts' own annotations."""

import numpy as np

from jinterp.data import SynthPartsConfig, broden_concepts, generate, read_broden
from jinterp.data.broden_writer import write_synthparts_broden


def test_synthparts_broden_round_trips_through_the_broden_reader(tmp_path):
    n, size = 6, 32
    number = write_synthparts_broden(tmp_path, n, size=size, seed=0, chunk=4)  # chunks: same images as one call
    ref = generate(n, seed=0, config=SynthPartsConfig(size=size))
    for lazy in (False, True):
        ds = read_broden(tmp_path, lazy=lazy)
        assert len(ds) == n and ds.image_shape == (size, size, 3)
        for c in ("color", "object", "part"):
            # Broden stores masks at half size; the reader resizes them back by repeating each pixel
            half = ref[c][:, ::2, ::2]
            assert np.array_equal(np.asarray(ds.masks[c]), half.repeat(2, 1).repeat(2, 2)), (c, lazy)
            assert ds.concepts[c][1:] == tuple(number[c]), c
        # texture 0 ("plain") is no label; code k is synthparts' texture k (seed 0 has all five)
        assert ds.image_labels["texture"].tolist() == ref["texture"].tolist()
        err = np.abs(np.asarray(ds.images, np.float32) - ref["image"]).mean()
        assert err < 8, err  # JPEG at quality 90
    cs = broden_concepts(read_broden(tmp_path), size=(size // 2, size // 2))
    assert cs.num_concepts == len(set().union(*number.values()))  # no name shared by two categories in synthparts
