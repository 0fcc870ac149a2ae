"""The training loop: metrics.jsonl, NaN guard, and kill -9 + restart == uninterrupted (bitwise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.core import loop, train
from jinterp.core.checkpoint import Checkpointer
from jinterp.errors import TrainingError

TOY = Path(__file__).with_name("coretoy.py")


class CountingIterator:
    def __init__(self):
        self.pos = 0

    def __next__(self):
        self.pos += 1
        return {"x": np.full((4,), self.pos, np.float32)}

    def get_state(self):
        return {"pos": self.pos}


def _counter_state():
    return train.TrainState(step=jnp.int32(0), params={"w": jnp.zeros((3,))}, model_state={},
                            opt_state={}, rng=jax.random.PRNGKey(0))


@jax.jit
def _diverging_step(state, batch):
    """Params count steps; from step 7 on (1-based) the loss and the params are NaN."""
    bad = state.step + 1 >= 7
    w = jnp.where(bad, jnp.nan, state.params["w"] + 1.0)
    loss = jnp.where(bad, jnp.nan, batch["x"].mean())
    return state.replace(step=state.step + 1, params={"w": w}), {"loss": loss, "grad_norm": jnp.float32(1)}


@pytest.mark.parametrize("log_every,ckpt_every,last_good", [(3, 5, 5), (100, 10, None)])
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, log_every, ckpt_every, last_good):
    ck = Checkpointer(tmp_path / "ckpt", keep=5)
    with pytest.raises(TrainingError) as e:
        loop.train_loop(_counter_state(), train_step=_diverging_step, train_iter=CountingIterator(), num_steps=20,
                        workdir=tmp_path, checkpointer=ck, log_every=log_every, ckpt_every=ckpt_every,
                        progress=False)
    msg = str(e.value)
    assert "loss is nan at step 7" in msg and "optim.lr" in msg
    ck.close()
    with Checkpointer(tmp_path / "ckpt") as ck:
        # ckpt_every=10 is a sync point: the NaN (step 7) is caught before step 10 could be saved.
        assert ck.latest_step == last_good
        if last_good is not None:
            assert f"step {last_good}" in msg
            state, _ = ck.restore(_counter_state())
            np.testing.assert_array_equal(state.params["w"], [5.0, 5.0, 5.0])


def test_metrics_jsonl_and_eval(tmp_path):
    state = loop.train_loop(
        _counter_state(), train_step=_diverging_step, train_iter=CountingIterator(), num_steps=6,
        workdir=tmp_path, log_every=2, eval_every=3, eval_fn=lambda s: {"accuracy": float(s.params["w"][0])},
        progress=True)
    assert int(state.step) == 6
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["split"]) for x in lines] == [
        (2, "train"), (3, "train"), (3, "test"), (4, "train"), (6, "train"), (6, "test")]
    assert lines[0]["metrics"]["loss"] == pytest.approx(1.5)  # mean over the interval's steps (x = 1, 2)
    assert lines[2]["metrics"] == {"accuracy": 3.0}
    assert all({"step", "split", "metrics", "time"} <= x.keys() for x in lines)
    loop.MetricsWriter(tmp_path).truncate_after(3)
    assert [x["step"] for x in loop.MetricsWriter(tmp_path).read()] == [2, 3, 3]


def _run_toy(workdir: Path, *extra: str, cache: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    if cache is not None:  # the restart loads the step compiled by the first runs instead of compiling again
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen([sys.executable, str(TOY), "--workdir", str(workdir), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill9_and_restart_is_bitwise_equal(tmp_path):
    """A real SIGKILL mid-training, a restart with the same command, bitwise-equal params at the end."""
    args = ("--steps", "40", "--ckpt-every", "5", "--sleep", "0.1")
    cache = tmp_path / "jax_cache"
    ref = _run_toy(tmp_path / "ref", *args, cache=cache)  # the uninterrupted run, in parallel
    victim = _run_toy(tmp_path / "run", *args, cache=cache)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if len(steps) >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed:\n" + victim.communicate()[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final_params.npz").exists()
    killed_at = max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())
    assert killed_at < 40

    restart = _run_toy(tmp_path / "run", *args, cache=cache)
    out_restart = restart.communicate(timeout=180)[0]
    out_ref = ref.communicate(timeout=180)[0]
    assert restart.returncode == 0, out_restart
    assert ref.returncode == 0, out_ref
    with np.load(tmp_path / "ref" / "final_params.npz") as a, np.load(tmp_path / "run" / "final_params.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bitwise
    steps = [x["step"] for x in loop.MetricsWriter(tmp_path / "run").read() if x["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no duplicated lines after the resume


def test_nonfinite_params_are_never_saved(tmp_path):
    """Finite loss and gradient norm but an overflowing update: the pre-save check catches it."""

    @jax.jit
    def step(state, batch):
        w = jnp.where(state.step + 1 >= 4, jnp.inf, state.params["w"] + 1.0)
        return state.replace(step=state.step + 1, params={"w": w}), {"loss": jnp.float32(1.0)}

    with Checkpointer(tmp_path / "ckpt") as ck:
        with pytest.raises(TrainingError, match="parameters hold NaN/Inf at step 4.*step 2"):
            loop.train_loop(_counter_state(), train_step=step, train_iter=CountingIterator(), num_steps=8,
                            workdir=tmp_path, checkpointer=ck, log_every=100, ckpt_every=2, progress=False)
        assert ck.all_steps() == [2]


class _Killed(Exception):
    pass


class _DyingIterator(CountingIterator):
    """Raises (like a kill) when asked for batch ``die_at``."""

    def __init__(self, die_at: int | None):
        super().__init__()
        self.die_at = die_at

    def __next__(self):
        if self.die_at is not None and self.pos + 1 == self.die_at:
            raise _Killed
        return super().__next__()


@jax.jit
def _counting_step(state, batch):
    return state.replace(step=state.step + 1, params={"w": state.params["w"] + 1.0}), {
        "loss": batch["x"].mean(), "grad_norm": jnp.float32(1)}


@pytest.mark.parametrize("with_checkpointer", [True, False])
def test_stopped_before_the_first_checkpoint_logs_every_step_once(tmp_path, with_checkpointer):
    """Defect 5: a run stopped after logging steps 2..6 but before its first checkpoint (step 8) starts over on the
    rerun; metrics.jsonl used to keep the first attempt's lines, so steps 2..6 appeared twice."""
    def attempt(die_at):
        ck = Checkpointer(tmp_path / "checkpoints", keep=2, config={"n": 10}) if with_checkpointer else None
        state, _, _ = loop.restore_or_init(ck, _counter_state(), tmp_path)
        try:
            loop.train_loop(state, train_step=_counting_step, train_iter=_DyingIterator(die_at), num_steps=10,
                            workdir=tmp_path, checkpointer=ck, log_every=2, ckpt_every=8, progress=False)
        finally:
            if ck is not None:
                ck.close(after_error=True)

    with pytest.raises(_Killed):
        attempt(die_at=7)
    assert [x["step"] for x in loop.MetricsWriter(tmp_path).read()] == [2, 4, 6]
    attempt(die_at=None)
    steps = [x["step"] for x in loop.MetricsWriter(tmp_path).read() if x["split"] == "train"]
    assert steps == [2, 4, 6, 8, 10]
