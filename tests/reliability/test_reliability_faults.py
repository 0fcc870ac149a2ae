"""Faults: SIGKILL during training and during a checkpoint write, a full disk, a read-only work directory.

What must hold after each fault: no incomplete or corrupted checkpoint is ever loaded, the earlier checkpoints
stay intact, the error (if any) is one clear ``jinterp`` line naming what failed and how to go on, and rerunning
the same command completes with parameters bitwise equal to an uninterrupted run.

The process-level tests run ``jinterp train-backbone`` on a tiny synthparts (``reliability_train.py``) as real
subprocesses sharing a persistent JAX compilation cache; the full-disk/read-only one mounts a real tiny tmpfs
in a private mount namespace (``unshare -rm``) and is skipped where that is not allowed. The in-process tests
inject the failures (``OSError(ENOSPC/EROFS/EACCES)``, TensorStore's RESOURCE_EXHAUSTED status) at the points
where the real ones surface, on the core tests' toy model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jinterp.core import loop
from jinterp.core.checkpoint import Checkpointer
from jinterp.errors import StorageError

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "reliability_train.py"
sys.path.insert(0, str(HERE.parent / "core"))
import coretoy  # noqa: E402  (the core tests' toy model, data and resumable iterator)

STEPS = 12  # reliability_train.ARGS: 12 steps, checkpoints at 4, 8, 12


# ------------------------------------------------------------------------------------------ process helpers
@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _start(workdir: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), "--workdir", str(workdir), *extra], env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()) if ckpt_dir.exists() else []


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (status {proc.returncode}) before the fault could be injected:\n{err[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("timed out waiting to inject the fault")


def _params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache) -> Path:
    """The uninterrupted run (also fills the compilation cache the fault runs reuse)."""
    w = tmp_path_factory.mktemp("ref") / "run"
    code, _, err = _finish(_start(w, jax_cache))
    assert code == 0, err
    return w


# --------------------------------------------------------------------------------------------- SIGKILL tests
@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_equals_uninterrupted(tmp_path, jax_cache, reference):
    w = tmp_path / "run"
    victim = _start(w, jax_cache, "--sleep", "0.25")
    _wait_for(lambda: 4 in _steps(w / "checkpoints"), victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (w / "params.npz").exists() and max(_steps(w / "checkpoints")) < STEPS

    code, _, err = _finish(_start(w, jax_cache))
    assert code == 0, err
    final = json.loads((w / "final_metrics.json").read_text())
    assert 4 <= final["resumed_from"] < STEPS and final["step"] == STEPS
    _assert_bitwise_equal(reference / "params.npz", w / "params.npz")
    steps = [x["step"] for x in loop.MetricsWriter(w).read() if x["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # the log reads like one uninterrupted run


@pytest.mark.slow
@pytest.mark.parametrize("stall", ["8", "8/state"], ids=["before-step-commit", "mid-item-commit"])
def test_sigkill_while_writing_a_checkpoint_then_rerun_equals_uninterrupted(tmp_path, jax_cache, reference,
                                                                            stall):
    """Killed while checkpoint 8 is half committed: the leftover temporary directory is never listed or
    loaded, the run resumes from 4, rewrites 8 over the leftover and ends bitwise equal to the reference."""
    w = tmp_path / "run"
    victim = _start(w, jax_cache, "--block-rename", stall)
    _wait_for(lambda: (w / ".blocked").exists(), victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    ck_dir = w / "checkpoints"
    leftovers = [p.name for p in ck_dir.iterdir() if p.name.startswith("8.orbax-checkpoint-tmp")]
    assert leftovers, sorted(p.name for p in ck_dir.iterdir())
    with Checkpointer(ck_dir) as ck:
        assert ck.all_steps() == [4]  # the half-written step 8 is not a checkpoint
    before = _digest(ck_dir / "4")

    code, _, err = _finish(_start(w, jax_cache))
    assert code == 0, err
    assert json.loads((w / "final_metrics.json").read_text())["resumed_from"] == 4
    _assert_bitwise_equal(reference / "params.npz", w / "params.npz")
    assert _steps(ck_dir) == [4, 8, 12] and _digest(ck_dir / "4") == before


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------------------- a real full / read-only disk
_NS_SCRIPT = r"""
set -u
M="$1"; PY="$2"; SCRIPT="$3"; OUT="$4"
mkdir -p "$M" && mount -t tmpfs -o size="$5" tmpfs "$M" || exit 77
W="$M/run"
"$PY" "$SCRIPT" --workdir "$W" > "$OUT/full.out" 2> "$OUT/full.err"; echo $? > "$OUT/full.rc"
ls "$W/checkpoints" > "$OUT/full.ls" 2>&1
cp -r "$W/checkpoints" "$OUT/after_full" 2>/dev/null
mount -o remount,ro "$M" || exit 78
"$PY" "$SCRIPT" --workdir "$W" > "$OUT/ro.out" 2> "$OUT/ro.err"; echo $? > "$OUT/ro.rc"
cp -r "$W/checkpoints" "$OUT/after_ro" 2>/dev/null
mount -o remount,rw,size=64m "$M" || exit 79
"$PY" "$SCRIPT" --workdir "$W" > "$OUT/ok.out" 2> "$OUT/ok.err"; echo $? > "$OUT/ok.rc"
cp "$W/params.npz" "$W/final_metrics.json" "$OUT/" 2>/dev/null
exit 0
"""


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                        "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return r.returncode == 0


@pytest.mark.slow
def test_full_disk_then_read_only_workdir_then_resume(tmp_path, jax_cache, reference):
    """A real tmpfs with room for about one checkpoint: the run stops with one clear line, the checkpoint already
    written stays intact and loadable; the same command on the directory remounted read-only stops with one
    clear line and changes nothing; remounted with room, the same command resumes and ends bitwise equal to
    the uninterrupted run."""
    if not _unshare_ok():
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -rm not permitted)")
    per_ckpt = sum(p.stat().st_size for p in (reference / "checkpoints" / "4").rglob("*") if p.is_file())
    n_files = sum(1 for p in (reference / "checkpoints" / "4").rglob("*"))
    size_kb = (per_ckpt // 1024 + 4 * n_files + 16) * 3 // 2  # one checkpoint (+ its pages), not two
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", _NS_SCRIPT, "ns", str(tmp_path / "mnt"), sys.executable,
                        str(SCRIPT), str(out), f"{size_kb}k"], env=_env(jax_cache), capture_output=True, text=True,
                       timeout=900)
    if r.returncode in (77, 78, 79):
        pytest.skip(f"mount step {r.returncode - 76} not permitted in this namespace: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr

    # 1. disk full: one line, exit 2, what failed + how to go on; the committed checkpoint(s) are complete.
    rc, err = int((out / "full.rc").read_text()), (out / "full.err").read_text()
    assert rc == 2, _summary(err)  # 1 would be an uncaught exception
    line = _error_line(err)
    assert "no space left on device" in line.lower() and "cannot write" in line, line
    assert "disk space" in line and "rerun the same command" in line, line
    kept = _steps(out / "after_full")
    assert kept and max(kept) < STEPS, (out / "full.ls").read_text()
    for s in kept:
        _check_restorable(out / "after_full", s, reference)

    # 2. read-only: one line, exit 2, nothing in the checkpoints changed.
    rc, err = int((out / "ro.rc").read_text()), (out / "ro.err").read_text()
    assert rc == 2, _summary(err)
    line = _error_line(err)
    assert "read-only file system" in line.lower() and "writable" in line, line
    assert _digest(out / "after_ro") == _digest(out / "after_full")

    # 3. room again: the same command resumes and matches the uninterrupted run bit for bit.
    assert int((out / "ok.rc").read_text()) == 0, (out / "ok.err").read_text()[-3000:]
    assert json.loads((out / "final_metrics.json").read_text())["resumed_from"] == max(kept)
    _assert_bitwise_equal(reference / "params.npz", out / "params.npz")


def _error_line(stderr: str) -> str:
    """The one jinterp error line. (Orbax also logs its background threads' failures through absl, with their
    tracebacks; those log records are not errors of the command.)"""
    lines = [x for x in stderr.splitlines() if x.startswith("jinterp: error: ")]
    assert len(lines) == 1, _summary(stderr)
    return lines[0]


def _summary(stderr: str) -> str:
    return "\n".join([x for x in stderr.splitlines() if x and not x.startswith(" ")][-40:])


def _check_restorable(ckpt_dir: Path, step: int, reference: Path) -> None:
    """Checkpoint ``step`` loads and equals the reference run's checkpoint of the same step, array for array."""
    mngr = ocp.CheckpointManager(ckpt_dir, item_handlers={"state": ocp.StandardCheckpointHandler()})
    ref = ocp.CheckpointManager(reference / "checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
        got = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        want = ref.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        jax.tree.map(np.testing.assert_array_equal, got, want)
    finally:
        mngr.close()
        ref.close()


# --------------------------------------------------------------- injected write failures, in process (fast)
TOY_STEPS = 8


def _toy(workdir: Path) -> tuple[object, list[int]]:
    """The core tests' toy run: 8 steps, a checkpoint every 2; returns (final state, checkpoint steps)."""
    _, state, step, it = coretoy.setup(steps=TOY_STEPS)
    with Checkpointer(workdir / "checkpoints", keep=10, config={"steps": TOY_STEPS}) as ck:  # as the commands do
        state, _, pos = loop.restore_or_init(ck, state, workdir)
        if pos is not None:
            it.set_state(pos)
        state = loop.train_loop(state, train_step=step, train_iter=it, num_steps=TOY_STEPS, workdir=workdir,
                                checkpointer=ck, log_every=1, ckpt_every=2, progress=False)
    return jax.device_get(state), _steps(workdir / "checkpoints")


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    w = tmp_path_factory.mktemp("toyref")
    final, steps = _toy(w)
    assert steps == [2, 4, 6, 8]
    return w, final


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _inject(monkeypatch, where: str, code: int) -> None:
    """Make the first write at ``where`` from step 4 on fail with ``code``, as a full/read-only disk would."""
    if where == "checkpoint-sync":  # TensorStore raises its status as ValueError from inside save()
        save = ocp.CheckpointManager.save

        def failing_save(self, step, *a, **kw):
            if step >= 4:
                raise ValueError(f"RESOURCE_EXHAUSTED: Error writing local file \"{self.directory}/{step}.orbax-"
                                 f"checkpoint-tmp/state/_sharding\": {os.strerror(code)} [os_error_code='{code}']")
            return save(self, step, *a, **kw)

        monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    elif where == "checkpoint-async":  # the commit marker, written by Orbax's background thread
        from orbax.checkpoint._src.path import atomicity

        write_text = atomicity.async_path.write_text

        async def failing_write(path, *a, **kw):
            if Path(str(path)).parent.name.startswith(("4.orbax-checkpoint-tmp", "6.orbax", "8.orbax")):
                raise _oserror(code, str(path))
            return await write_text(path, *a, **kw)

        monkeypatch.setattr(atomicity.async_path, "write_text", failing_write)
    elif where == "checkpoint-close":  # the disk is full for the save and again when the manager closes
        _inject(monkeypatch, "checkpoint-sync", code)

        def failing_close(self):
            raise _oserror(code, str(self.directory))

        monkeypatch.setattr(ocp.CheckpointManager, "close", failing_close)
    elif where == "metrics":
        write = loop.MetricsWriter.write

        def failing_metrics(self, step, split, metrics):
            if step >= 4:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(Path, "open", lambda *a, **k: (_ for _ in ()).throw(_oserror(code, str(self.path))))
                    return write(self, step, split, metrics)
            return write(self, step, split, metrics)

        monkeypatch.setattr(loop.MetricsWriter, "write", failing_metrics)


INJECTED = [("checkpoint-sync", errno.ENOSPC), ("checkpoint-async", errno.ENOSPC), ("metrics", errno.ENOSPC),
            ("checkpoint-sync", errno.EROFS), ("checkpoint-async", errno.EACCES), ("metrics", errno.EROFS),
            ("checkpoint-close", errno.ENOSPC)]


@pytest.mark.parametrize("where,code", INJECTED, ids=[f"{w}-{errno.errorcode[c]}" for w, c in INJECTED])
def test_write_failure_is_clear_keeps_earlier_checkpoints_and_resumes(tmp_path, monkeypatch, toy_reference, where,
                                                                      code):
    ref_dir, ref_final = toy_reference
    with monkeypatch.context() as mp:
        _inject(mp, where, code)
        with pytest.raises(StorageError) as e:
            _toy(tmp_path)
    msg = str(e.value)
    assert os.strerror(code).lower() in msg.lower(), msg
    assert "rerun the same command" in msg and ("free disk space" in msg or "writable" in msg), msg
    assert "cannot write" in msg and ("checkpoint" in msg or "metrics.jsonl" in msg), msg
    if where.startswith("checkpoint"):  # names the step whose save failed and the one to resume from
        assert "checkpoint step 4" in msg and "steps [2]" in msg and "resume from step 2" in msg, msg
    # Earlier checkpoints: complete, listed, equal to the uninterrupted run's.
    with Checkpointer(tmp_path / "checkpoints", config={"steps": TOY_STEPS}) as ck:
        kept = ck.all_steps()
        assert kept and max(kept) < TOY_STEPS and 2 in kept
        fresh = coretoy.setup(steps=TOY_STEPS)[1]
        with Checkpointer(ref_dir / "checkpoints", config={"steps": TOY_STEPS}) as ref:
            for s in kept:
                got, _ = ck.restore(fresh, s)
                want, _ = ref.restore(fresh, s)
                jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(want))
    # The disk has room again: the same run resumes and ends where the uninterrupted one did.
    final, steps = _toy(tmp_path)
    assert steps[-1] == TOY_STEPS
    jax.tree.map(np.testing.assert_array_equal, final.params, ref_final.params)



# ------------------------------------------------ issue #17: a kill before the first checkpoint, a method killed
def test_sigkill_before_the_first_checkpoint_then_rerun_equals_uninterrupted(tmp_path, jax_cache, reference):
    """Killed after logging steps but before checkpoint 4: the rerun starts over, ends bitwise equal to the
    uninterrupted run, and metrics.jsonl holds every step once (it used to hold the first attempt's steps twice)."""
    w = tmp_path / "run"
    p = _start(w, jax_cache, "--sleep", "0.5")
    metrics = w / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and '"step": 2' in metrics.read_text(), p)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not _steps(w / "checkpoints"), "a checkpoint was written before the kill"
    code, _, err = _finish(_start(w, jax_cache))
    assert code == 0, err
    assert json.loads((w / "final_metrics.json").read_text())["resumed_from"] == 0
    _assert_bitwise_equal(reference / "params.npz", w / "params.npz")
    steps = [x["step"] for x in loop.MetricsWriter(w).read() if x["split"] == "train"]
    assert steps == list(range(2, STEPS + 1, 2)), steps


METHOD_SCRIPT = HERE / "reliability_method.py"
CLADEC_SETS = ["image_size=32", "train_size=64", "test_size=32", "batch_size=16", "epochs=2", "alphas=0,0.5",
               "layers=relu3", "retrain_epochs=0", "grid_rows=2", "eval_batch_size=32", "base_width=8",
               "ckpt_every=2", "log_every=1"]


def _cladec(workdir: Path, weights: Path, cache: Path, sleep: float = 0.0) -> subprocess.Popen:
    argv = ["cladec", "--config", "tiny", "--quiet", "--workdir", str(workdir), "--weights", str(weights)]
    for s in CLADEC_SETS:
        argv += ["--set", s]
    return subprocess.Popen([sys.executable, str(METHOD_SCRIPT), "--sleep", str(sleep), "--", *argv],
                            env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_method_then_rerun_equals_uninterrupted(tmp_path, jax_cache):
    """A method program (ClaDec: RefAE, then the α sweep, both checkpointed) killed in its sweep resumes from the
    sweep's checkpoint (the finished RefAE stage is reused) and ends bitwise equal to an uninterrupted run."""
    from jinterp import backbones
    from jinterp.backbones import torch_import

    model = backbones.create("convnet", 6, widths=(4, 8, 8, 8))
    weights = torch_import.save_variables(tmp_path / "w.npz", backbones.init(model, jax.random.key(0), (32, 32, 3)),
                                          {"arch": "convnet", "num_classes": 6, "widths": [4, 8, 8, 8]})
    ref = _cladec(tmp_path / "ref", weights, jax_cache)
    code, _, err = _finish(ref, timeout=600)
    assert code == 0, err[-3000:]
    w = tmp_path / "run"
    p = _cladec(w, weights, jax_cache, sleep=0.4)
    sweep_ckpts = w / "layers" / "relu3" / "cladec" / "checkpoints"
    _wait_for(lambda: bool(_steps(sweep_ckpts)), p, timeout=600)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = max(_steps(sweep_ckpts))
    assert killed_at < 8 and not (w / "results.json").exists()
    record = json.loads((w / "config.json").read_text())
    assert record["stages"]["refae:relu3"]["status"] == "done"
    assert record["stages"]["cladec:relu3"]["status"] == "running"
    code, _, err = _finish(_cladec(w, weights, jax_cache), timeout=600)
    assert code == 0, err[-3000:]
    for name in ("refae.npz", "cladec.npz"):
        _assert_bitwise_equal(tmp_path / "ref" / "layers" / "relu3" / name, w / "layers" / "relu3" / name)
    a, b = (json.loads((d / "results.json").read_text())["layers"]["relu3"]["sources"] for d in (tmp_path / "ref", w))
    assert a == b
    steps = [x["step"] for x in loop.MetricsWriter(w / "layers" / "relu3" / "cladec").read()]
    assert steps == sorted(set(steps)) and steps[-1] == 8


_RO_SCRIPT = r"""
set -u
D="$1"; PY="$2"; OUT="$3"; shift 3
mount --bind "$D" "$D" && mount -o remount,bind,ro "$D" || exit 77
for cmd in "$@"; do
  "$PY" -m jinterp.cli "$cmd" --config tiny --workdir "$D/w" > "$OUT/$cmd.out" 2> "$OUT/$cmd.err"
  echo $? > "$OUT/$cmd.rc"
done
"$PY" -m jinterp.cli cladec --config tiny --workdir "$D/new/w" > "$OUT/new.out" 2> "$OUT/new.err"
echo $? > "$OUT/new.rc"
exit 0
"""
RO_COMMANDS = ("train-backbone", "cladec", "csg", "basis", "graph", "explainer", "demo")


@pytest.mark.slow
def test_read_only_workdir_is_one_line_for_every_command(tmp_path, jax_cache):
    """Defect 3: `cladec`, `basis`, `graph`, `csg` used to end in a PermissionError traceback on a read-only
    workdir. Every command now stops with one line naming the path, before any work, and writes nothing."""
    if not _unshare_ok():
        pytest.skip("cannot mount in a private mount namespace here (unshare -rm not permitted)")
    d, out = tmp_path / "ro", tmp_path / "out"
    (d / "w").mkdir(parents=True)
    out.mkdir()
    env = dict(_env(jax_cache), PYTHONPATH=str(HERE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["unshare", "-rm", "sh", "-c", _RO_SCRIPT, "ns", str(d), sys.executable, str(out),
                        *RO_COMMANDS], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode == 77:
        pytest.skip(f"read-only bind mount not permitted here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    for cmd in (*RO_COMMANDS, "new"):
        rc, err = int((out / f"{cmd}.rc").read_text()), (out / f"{cmd}.err").read_text()
        assert rc == 2 and "Traceback" not in err, f"{cmd}: {_summary(err)}"
        line = _error_line(err)
        assert "read-only file system" in line.lower() and str(d) in line and "writable" in line, f"{cmd}: {line}"
    assert not any((d / "w").iterdir())
