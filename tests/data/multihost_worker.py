"""One process of the two-process pipeline test (tests/data/test_data_multihost.py): joins the job, iterates the
BatchIterator and saves the shards its devices hold plus the dataset rows it decoded."""

import sys

import jax
import numpy as np

port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=60)

from multihost_data import conv_features, make_dataset  # noqa: E402

from jinterp.data import BatchIterator  # noqa: E402

decoded = []
ds = make_dataset(decoded)
record = {"process_count": np.asarray(jax.process_count())}
it = BatchIterator(ds, 4, seed=1, num_epochs=1, prefetch=1, masks=("part",), landmarks=True)
for step, batch in enumerate(it):
    batch["features"] = jax.jit(conv_features)(batch["image"])  # computed on the assembled global batch
    for key, arr in batch.items():
        assert arr.shape[0] == 4, (key, arr.shape)
        for shard in arr.addressable_shards:
            start = shard.index[0].start or 0
            record[f"{step}/{key}/{start}"] = np.asarray(shard.data)
record["decoded"] = np.asarray(decoded)
np.savez(out, **record)
