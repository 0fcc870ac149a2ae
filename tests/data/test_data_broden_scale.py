"""jinterp/bench/broden_scale.py's streamed dissection (lazy Broden, one prefetching stream per pass, concept
labels built a chunk at a time, chunk tallies summed) equals the dissection of the whole set held in memory."""

import jax
import numpy as np

from jinterp import backbones
from jinterp.bench.broden_scale import streamed_dissection
from jinterp.core.features import iter_features
from jinterp.data import broden_concepts, read_broden
from jinterp.data.broden_writer import write_synthparts_broden
from jinterp.metrics import dissection as dis


def test_chunked_streamed_dissection_equals_the_in_memory_one(tmp_path):
    write_synthparts_broden(tmp_path, 40, size=32, seed=1)
    model = backbones.create("convnet", num_classes=3, widths=(4, 8))
    variables = backbones.init(model, jax.random.key(2), (32, 32, 3))
    # chunks of 16 images in batches of 8: 3 chunks, the last one short
    table, result, th, first = streamed_dissection(read_broden(tmp_path, lazy=True), model, variables, "relu2",
                                                   batch_size=8, chunk=16, label_size=16)

    whole = read_broden(tmp_path)
    concepts = broden_concepts(whole, size=(16, 16))
    acts = [out["relu2"] for out in iter_features(model, variables, whole.images, ["relu2"], batch_size=8)]
    ref_table, ref_result = dis.dissect(lambda: iter(acts), concepts, batch_size=8, max_labels=32)
    assert table.shape == ref_table.shape == (8, concepts.num_concepts)
    np.testing.assert_allclose(table, ref_table, rtol=1e-6, atol=1e-7)
    assert ref_table.max() > 0.05  # units overlap concepts: the comparison is not of two all-zero tables
    np.testing.assert_array_equal(result.best_concept, ref_result.best_concept)
