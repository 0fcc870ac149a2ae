"""Per-host shards: two local CPU processes joined with jax.distributed each read only their half of every global
batch; the assembled global batches, conv features computed on them under jit, backbone features each process
extracts (``jinterp.core.features``) from its rows, and one sharded training step (``jinterp.core.train``) equal the
single-process ones; a ``Run`` both open on one work directory is written by process 0 only: its JSON, and the files
programs write directly (arrays, figures, an HTML report, through ``jinterp.core.run.write_file``), which equal the
single-process run's."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def test_two_processes_read_disjoint_halves_that_assemble_to_the_single_process_batches(tmp_path):
    import jax
    from multihost_data import (
        OUTPUT_FILES,
        N,
        conv_features,
        make_dataset,
        tiny_convnet,
        train_step_and_state,
        write_outputs,
    )

    from jinterp.core.features import iter_features
    from jinterp.core.run import Run
    from jinterp.data import BatchIterator

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
           # how a launcher tells jinterp.core.distributed.maybe_initialize to join a job
           "JINTERP_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JINTERP_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_worker.py"), str(pid),
                               str(tmp_path / f"p{pid}.npz")], env={**env, "JINTERP_PROCESS_ID": str(pid)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
    got = [dict(np.load(tmp_path / f"p{pid}.npz")) for pid in range(2)]
    assert all(int(g["process_count"]) == 2 for g in got)

    single = list(BatchIterator(make_dataset([]), 4, seed=1, num_epochs=1, prefetch=0, masks=("part",),
                                landmarks=True))
    assert len(single) == 3  # 10 examples: the last batch holds 2 real rows and 2 padding rows
    for step, batch in enumerate(single):
        batch["features"] = conv_features(batch["image"])
        for key, arr in batch.items():
            full = np.asarray(arr)
            for pid, start in ((0, 0), (1, 2)):  # process p's one device holds rows [2p, 2p + 2)
                np.testing.assert_allclose(got[pid][f"{step}/{key}/{start}"], full[start:start + 2],
                                           rtol=1e-5, atol=1e-5, err_msg=f"step {step} {key} process {pid}")
        # backbone features: process p extracted rows [2p, 2p + 2) of the batch itself
        model, variables, layer = tiny_convnet()
        (feats,) = list(iter_features(model, variables, np.asarray(batch["image"]), [layer], batch_size=4))
        for pid in range(2):
            np.testing.assert_allclose(got[pid][f"{step}/backbone/{pid}"], feats[layer][2 * pid:2 * pid + 2],
                                       rtol=1e-5, atol=1e-6, err_msg=f"step {step} backbone process {pid}")
    # one training step on the first global batch, on one device, equals the step sharded over two processes
    step_fn, state = train_step_and_state()
    state, metrics = step_fn(state, {k: single[0][k] for k in ("image", "label", "mask")})
    leaves = jax.tree_util.tree_leaves_with_path((state, metrics))
    assert len(leaves) > 10
    for pid in range(2):
        for path, leaf in leaves:
            np.testing.assert_allclose(got[pid][f"train{jax.tree_util.keystr(path)}"], np.asarray(leaf), rtol=1e-5,
                                       atol=1e-6, err_msg=f"train state {jax.tree_util.keystr(path)} process {pid}")
    assert int(state.step) == 1 and float(metrics["grad_norm"]) > 0
    # each process decoded only its own rows: together every example once, no overlap
    read = [set(g["decoded"].tolist()) for g in got]
    assert not read[0] & read[1] and read[0] | read[1] == set(range(N))
    assert len(got[0]["decoded"]) + len(got[1]["decoded"]) == N
    # one shared work directory: process 1 neither took the lock (it would have been refused) nor wrote anything
    assert [bool(g["run_primary"]) for g in got] == [True, False]
    shared = tmp_path / "shared_run"
    assert sorted(p.name for p in shared.iterdir()) == list(OUTPUT_FILES)  # lock released, no tmp files
    assert sorted(p.name for p in (shared / "figures").iterdir()) == ["bars.png", "grid.png"]
    assert json.loads((shared / "result.json").read_text()) == {"written_by": 0}
    assert json.loads((shared / "config.json").read_text())["stages"]["probe"]["status"] == "done"
    # the files programs write directly: process 0 wrote each once, process 1 none, and process 1 read back the
    # file process 0 had just written (write_file's barrier)
    assert sorted(Path(f).name for f in got[0]["wrote"]) == ["bars.png", "grid.png", "params.npz", "report.html",
                                                             "scores.npz"]
    assert got[1]["wrote"].size == 0
    # and they equal the files a single process writes (their content names the writer: process 1's would differ)
    single_dir = tmp_path / "single_run"
    with Run(single_dir, ProbeConfig(), method="probe") as run:
        wrote = []
        single_read = write_outputs(run, 0, wrote)
    assert len(wrote) == 5
    for pid in range(2):
        for key, value in single_read.items():
            np.testing.assert_array_equal(got[pid][key], value, err_msg=f"{key} read back by process {pid}")
    for name in ("report.html", "figures/grid.png", "figures/bars.png"):
        assert (shared / name).read_bytes() == (single_dir / name).read_bytes(), name
    for name in ("params.npz", "scores.npz"):  # np.savez stamps the time into the zip: compare the arrays
        with np.load(shared / name) as a, np.load(single_dir / name) as b:
            assert sorted(a.files) == sorted(b.files) and int(a["pid"]) == 0, name
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:  # the config the worker's Run records
    value: int = 1
