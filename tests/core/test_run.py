"""The run skeleton (jinterp.core.run): fingerprinted stages, config.json record, lock, storage errors, --config."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jinterp.core import config as C
from jinterp.core.run import LOCK_FILE, Run, check_workdir, load_config
from jinterp.errors import CheckpointError, ConfigError, StorageError

REPO = Path(__file__).resolve().parents[2]


def _stage(r: Run, a: int, *, resumable: bool = False):
    return r.stage("train", fields={"a": a, "nested": {"b": 1}}, inputs={"data": "d0"}, paths=["out"],
                   resumable=resumable)


def _make_output(r: Run, text: str) -> None:
    (r.workdir / "out").mkdir(exist_ok=True)
    (r.workdir / "out" / "x.txt").write_text(text)


def test_stage_is_reused_only_under_the_same_fingerprint(tmp_path):
    cfg = C.TrainBackboneConfig.tiny()
    with Run(tmp_path, cfg, method="test") as r:
        st = _stage(r, 1)
        assert not st.reusable
        _make_output(r, "a=1")
        st.finish()
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["method"] == "test" and record["config"]["steps"] == cfg.steps
    assert record["stages"]["train"]["status"] == "done" and record["stages"]["train"]["fields"]["a"] == 1
    with Run(tmp_path, cfg, method="test") as r:
        assert _stage(r, 1).reusable  # same settings: reuse
    with Run(tmp_path, cfg, method="test") as r:
        st = _stage(r, 2)  # other settings: the old output is gone before the stage recomputes
        assert not st.reusable and not (tmp_path / "out").exists()
        assert json.loads((tmp_path / "config.json").read_text())["stages"]["train"]["status"] == "running"
        _make_output(r, "a=2")
        st.finish()
    assert json.loads((tmp_path / "config.json").read_text())["stages"]["train"]["fields"]["a"] == 2


def test_unfinished_stage_with_the_same_fingerprint_resumes(tmp_path):
    cfg = C.TrainBackboneConfig.tiny()
    with Run(tmp_path, cfg, method="test") as r:
        _stage(r, 1, resumable=True)
        _make_output(r, "partial")  # killed before finish()
    with Run(tmp_path, cfg, method="test") as r:
        st = _stage(r, 1, resumable=True)
        assert not st.reusable and (tmp_path / "out" / "x.txt").read_text() == "partial"  # kept to resume


def test_resumable_stage_of_other_settings_is_refused_then_restart_discards_it(tmp_path):
    cfg = C.TrainBackboneConfig.tiny()
    with Run(tmp_path, cfg, method="test") as r:
        _stage(r, 1, resumable=True)
        _make_output(r, "checkpoint of a=1")
    with pytest.raises(CheckpointError) as e, Run(tmp_path, cfg, method="test") as r:
        _stage(r, 2, resumable=True)
    msg = str(e.value)
    assert "a: saved 1 vs now 2" in msg and "--workdir" in msg and "--restart" in msg and "nested" not in msg
    assert (tmp_path / "out" / "x.txt").read_text() == "checkpoint of a=1"
    with Run(tmp_path, cfg, method="test", restart=True) as r:
        assert not _stage(r, 2, resumable=True).reusable
    assert not (tmp_path / "out").exists()


def test_input_and_code_changes_change_the_fingerprint(tmp_path):
    cfg = C.TrainBackboneConfig.tiny()
    with Run(tmp_path, cfg, method="test") as r:
        a = r.stage("s", fields={"x": 1}, inputs={"data": "d0"}).fingerprint
        b = r.stage("s", fields={"x": 1}, inputs={"data": "d1"}).fingerprint
        c = r.stage("s", fields={"x": 1}, inputs={"data": "d1"}, code=("jinterp.core.loop",)).fingerprint
    assert len({a, b, c}) == 3


def test_empty_workdir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("", "  "):
        with pytest.raises(ConfigError, match="--workdir is empty"):
            check_workdir(bad)
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        check_workdir(tmp_path / "f")


def _holder(workdir: Path) -> subprocess.Popen:
    code = ("import sys, time; from jinterp.core.run import Run; from jinterp.core.config import "
            "TrainBackboneConfig as T\nwith Run(sys.argv[1], T.tiny(), method='holder'):\n    print('held', flush=True)"
            "\n    time.sleep(120)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_lock_keeps_a_second_process_out_and_a_stale_lock_is_taken_over(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(StorageError) as e, Run(tmp_path, C.TrainBackboneConfig.tiny(), method="test"):
            pass
        assert f"pid {p.pid}" in str(e.value) and LOCK_FILE in str(e.value) and "--workdir" in str(e.value)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (tmp_path / LOCK_FILE).exists()  # left behind by the kill
    with Run(tmp_path, C.TrainBackboneConfig.tiny(), method="test"):
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()  # released


@pytest.mark.parametrize("err", [PermissionError(errno.EACCES, "Permission denied", "figures/x.png"),
                                 OSError(errno.EROFS, "Read-only file system", "results.json"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_storage_oserrors_in_a_run_become_storage_errors_naming_the_path(tmp_path, err):
    if err.filename:
        err.filename = str(tmp_path / err.filename)
    with pytest.raises(StorageError) as e, Run(tmp_path, C.TrainBackboneConfig.tiny(), method="test"):
        raise err
    msg = str(e.value)
    assert (err.filename or str(tmp_path)) in msg and err.strerror in msg and "writable" in msg
    assert "rerun the same command" in msg
    assert not (tmp_path / LOCK_FILE).exists()


def test_unreadable_input_outside_the_workdir_is_not_called_a_disk_problem(tmp_path):
    with pytest.raises(StorageError) as e, Run(tmp_path / "w", C.TrainBackboneConfig.tiny(), method="test"):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data.npz"))
    assert f"cannot access {tmp_path / 'data.npz'}" in str(e.value) and "disk" not in str(e.value)


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError), Run(tmp_path, C.TrainBackboneConfig.tiny(), method="test"):
        raise FileNotFoundError(errno.ENOENT, "No such file", "in.npz")


def test_config_accepts_a_preset_or_a_saved_config_json(tmp_path):
    cls = C.TrainBackboneConfig
    assert load_config(cls, "tiny") == cls.tiny()
    cfg = C.apply_overrides(cls.tiny(), ["steps=7", "optim.lr=0.25"])
    with Run(tmp_path, cfg, method="train-backbone") as r:
        r.stage("train", fields={})
    assert load_config(cls, str(tmp_path / "config.json"), method="train-backbone") == cfg
    (tmp_path / "plain.json").write_text(C.to_json(cfg))
    assert load_config(cls, str(tmp_path / "plain.json")) == cfg
    with pytest.raises(ConfigError, match="config of a 'train-backbone' run"):
        load_config(cls, str(tmp_path / "config.json"), method="cladec")
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(cls, str(tmp_path / "nope.json"))


def test_config_json_accumulates_every_stage_record(tmp_path):
    with Run(tmp_path, C.TrainBackboneConfig.tiny(), method="test") as r:
        r.stage("a", fields={"x": 1}).finish()
        r.stage("b", fields={"y": 2}).finish()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # written through a temporary file + rename
    record = json.loads((tmp_path / "config.json").read_text())
    assert set(record["stages"]) == {"a", "b"} and record["stages"]["b"]["fields"] == {"y": 2}


def test_write_file_writes_on_process_zero_only_and_waits_at_a_barrier(tmp_path, monkeypatch):
    """``write_file``: process 0 writes through a temporary name (no half file, the old one kept when the write
    fails); another process writes nothing; with several processes every one reaches the barrier, also when
    process 0's write failed."""
    import numpy as np
    from jax.experimental import multihost_utils

    from jinterp.core import run as runlib

    barriers = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
    path = tmp_path / "sub" / "a.npz"
    for layout, wrote in (((2, False), False), ((2, True), True)):
        monkeypatch.setattr(runlib, "_process_layout", lambda layout=layout: layout)
        assert runlib.write_file(path, lambda tmp: np.savez(tmp, x=np.arange(3))) == path
        assert path.exists() == wrote
    assert len(barriers) == 2
    with np.load(path) as z:
        assert z["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.npz"]  # the temporary name kept the suffix

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="No space left"):
        runlib.write_file(path, fails)
    assert len(barriers) == 3  # reached before raising: process 1 is not left waiting
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.npz"]
    with np.load(path) as z:
        assert z["x"].tolist() == [0, 1, 2]
    runlib.write_file(path, lambda tmp: np.savez(tmp, x=np.arange(5)), keep_existing=True)
    with np.load(path) as z:
        assert z["x"].tolist() == [0, 1, 2]  # kept
    monkeypatch.setattr(runlib, "_process_layout", lambda: (1, True))
    runlib.append_text(tmp_path / "log.jsonl", "a\n")
    runlib.append_text(tmp_path / "log.jsonl", "b\n")
    monkeypatch.setattr(runlib, "_process_layout", lambda: (2, False))
    runlib.append_text(tmp_path / "log.jsonl", "from process 1\n")
    assert (tmp_path / "log.jsonl").read_text() == "a\nb\n"
    assert len(barriers) == 4  # keep_existing still waits (only the single-process calls did not)
