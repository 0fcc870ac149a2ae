"""One process of the two-process pipeline test (tests/data/test_data_multihost.py): joins the job, iterates the
BatchIterator and saves the shards its devices hold, the dataset rows it decoded, the features
``jinterp.core.features.iter_features`` gives for its own rows, and the state after one sharded training step; then
opens a ``jinterp.core.run.Run`` on a work directory both processes share and writes a result and the files programs
write directly (arrays, figures, a report; ``multihost_data.write_outputs``) into it (only process 0 may write)."""

import sys

import jax
import numpy as np

from jinterp.core.distributed import maybe_initialize

pid, out = int(sys.argv[1]), sys.argv[2]
assert maybe_initialize()  # joins through the environment the test sets (as jinterp's CLI does at start)

from multihost_data import conv_features, make_dataset, tiny_convnet, train_step_and_state  # noqa: E402

from jinterp.core.features import iter_features  # noqa: E402
from jinterp.data import BatchIterator, data_mesh  # noqa: E402

decoded = []
ds = make_dataset(decoded)
record = {"process_count": np.asarray(jax.process_count())}
mesh = data_mesh()
model, variables, layer = tiny_convnet()
step_fn, state = train_step_and_state(mesh)
# the initial state (the same values on every process) as global arrays replicated over the two-process mesh
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
state = jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), replicated, lambda idx: np.asarray(x)[idx]),
                     state)
it = BatchIterator(ds, 4, seed=1, num_epochs=1, prefetch=1, masks=("part",), landmarks=True, mesh=mesh)
for step, batch in enumerate(it):
    batch["features"] = jax.jit(conv_features)(batch["image"])  # computed on the assembled global batch
    for key, arr in batch.items():
        assert arr.shape[0] == 4, (key, arr.shape)
        for shard in arr.addressable_shards:
            start = shard.index[0].start or 0
            record[f"{step}/{key}/{start}"] = np.asarray(shard.data)
    # feature extraction: each process runs the backbone on the rows it holds
    (local,) = [np.asarray(s.data) for s in batch["image"].addressable_shards]
    (feats,) = list(iter_features(model, variables, local, [layer], batch_size=len(local)))
    record[f"{step}/backbone/{pid}"] = feats[layer]
    if step == 0:  # one training step on the global batch: gradients and BatchNorm statistics cross processes
        state, metrics = step_fn(state, {k: batch[k] for k in ("image", "label", "mask")})
        for path, leaf in jax.tree_util.tree_leaves_with_path((state, metrics)):
            record[f"train{jax.tree_util.keystr(path)}"] = np.asarray(leaf.addressable_data(0))
record["decoded"] = np.asarray(decoded)

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

from multihost_data import write_outputs  # noqa: E402

from jinterp.core.run import Run  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    value: int = 1


with Run(Path(out).parent / "shared_run", ProbeConfig(), method="probe") as run:  # both processes: one workdir
    stage = run.stage("probe", fields={"value": 1}, paths=["result.json"])
    run.write_json("result.json", {"written_by": pid})
    wrote = []
    record.update(write_outputs(run, pid, wrote))  # the programs' direct writes (figures, arrays, a report)
    stage.finish()
    record["run_primary"] = np.asarray(run.primary)
    record["wrote"] = np.asarray(wrote, dtype=str)
np.savez(out, **record)
