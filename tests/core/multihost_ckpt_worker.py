"""One process of the two-process checkpoint test (tests/core/test_multihost_checkpoint.py): joins the job, trains
the tiny ConvNet of ``tests/data/multihost_data.py`` with ``jinterp.core.loop.train_loop`` on the per-host shards
of a ``BatchIterator``, checkpointing every step through ``jinterp.core.checkpoint.Checkpointer`` (Orbax) into a
directory both processes share; once per stop in STOPS (e.g. ``2,5``): a fresh initial state and a fresh
Checkpointer that resume from the latest step in the directory (as a relaunched job would), training up to that
stop. Saves, per stop, the step it started from, the committed steps and its replica of the state.

    python multihost_ckpt_worker.py PID STOPS SHARED_DIR OUT.npz
"""

import sys
from pathlib import Path

import jax
import numpy as np

from jinterp.core.distributed import maybe_initialize

pid, stops, shared, out = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], Path(sys.argv[3]), sys.argv[4]
assert maybe_initialize()  # joins through the environment the test sets (as jinterp's CLI does at start)

from multihost_data import make_dataset, train_step_and_state  # noqa: E402

from jinterp.core.checkpoint import Checkpointer  # noqa: E402
from jinterp.core.loop import restore_or_init, train_loop  # noqa: E402
from jinterp.data import BatchIterator, data_mesh  # noqa: E402

mesh = data_mesh()
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
record = {"process_count": np.asarray(jax.process_count())}
for run, num_steps in enumerate(stops):  # each run starts from a fresh state and a fresh Checkpointer, as a new job
    step_fn, state = train_step_and_state(mesh)
    state = jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), replicated,
                                                                lambda idx, x=x: np.asarray(x)[idx]), state)
    with Checkpointer(shared / "checkpoints", keep=3, config={"lr": 0.1}) as ckpt:
        state, start, data_state = restore_or_init(ckpt, state)
        it = BatchIterator(make_dataset([]), 4, seed=1, prefetch=0, mesh=mesh, position=data_state)
        # one log directory for both processes: only process 0 writes metrics.jsonl
        state = train_loop(state, train_step=step_fn, train_iter=it, num_steps=num_steps,
                           workdir=shared / "log", checkpointer=ckpt, ckpt_every=1, progress=False)
    record[f"{run}/start"] = np.asarray(start)
    record[f"{run}/steps"] = np.asarray(sorted(int(p.name) for p in (shared / "checkpoints").iterdir()))
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        record[f"{run}/state{jax.tree_util.keystr(path)}"] = np.asarray(leaf.addressable_data(0))
np.savez(out, **record)
