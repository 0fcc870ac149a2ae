"""Orbax checkpoints across processes: two local CPU processes joined with jax.distributed train, checkpoint into
one shared directory and stop; then both start over from a fresh state and a fresh Checkpointer, resume from the
checkpoint and finish; the final state equals an uninterrupted single-process training of as many steps on the same
global batches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"  # multihost_data.py: the data set, model and step of the two-process pipeline test


def _launch(stops: str, shared: Path, tag: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": os.pathsep.join([str(DATA), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
           "JINTERP_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JINTERP_NUM_PROCESSES": "2"}
    outs = [shared.parent / f"{tag}_p{pid}.npz" for pid in range(2)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_ckpt_worker.py"), str(pid), stops,
                               str(shared), str(outs[pid])], env={**env, "JINTERP_PROCESS_ID": str(pid)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
    return [dict(np.load(o)) for o in outs]


def test_two_processes_checkpoint_and_resume_equal_one_uninterrupted_process(tmp_path, monkeypatch):
    import jax

    monkeypatch.syspath_prepend(str(DATA))
    from multihost_data import make_dataset, train_step_and_state

    from jinterp.data import BatchIterator

    shared = tmp_path / "shared"
    got = _launch("2,5", shared, "run")
    # first: steps 1-2, checkpointed at 1 and 2 (committed, no tmp dirs); then a fresh state and Checkpointer
    # restore step 2 (state and data position) and run steps 3-5
    assert all(int(g["process_count"]) == 2 for g in got)
    assert [(int(g["0/start"]), int(g["1/start"])) for g in got] == [(0, 2), (0, 2)]
    assert [g["0/steps"].tolist() for g in got] == [[1, 2]] * 2
    assert [g["1/steps"].tolist() for g in got] == [[3, 4, 5]] * 2  # keep=3
    assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["3", "4", "5"]
    # the shared metrics log: one train line per step (process 0 alone writes it; two writers would double them)
    import json

    logged = [json.loads(line) for line in (shared / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [1, 2, 3, 4, 5]

    # one process, one device, no checkpoint: 5 steps over the same global batches (2 epochs of 3 batches)
    step_fn, state = train_step_and_state()
    it = BatchIterator(make_dataset([]), 4, seed=1, prefetch=0)
    for _ in range(5):
        state, _ = step_fn(state, next(it))
    leaves = jax.tree_util.tree_leaves_with_path(state)
    assert int(state.step) == 5 and len(leaves) > 10
    for pid in range(2):
        for path, leaf in leaves:
            np.testing.assert_allclose(got[pid][f"1/state{jax.tree_util.keystr(path)}"], np.asarray(leaf),
                                       rtol=1e-5, atol=1e-6,
                                       err_msg=f"state {jax.tree_util.keystr(path)} process {pid}")
    # the resume mattered: the state after step 2 differs from the final one
    moved = [not np.allclose(got[0][f"0/state{jax.tree_util.keystr(p)}"], np.asarray(v)) for p, v in leaves
             if "params" in jax.tree_util.keystr(p)]
    assert all(moved)
