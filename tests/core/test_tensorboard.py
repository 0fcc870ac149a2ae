"""TensorBoard event files written natively beside metrics.jsonl (issue #17, deliver 5), read back with the
``tensorboard`` package's own loader: the same tags, steps and values as metrics.jsonl, every step once after a
resume, nothing written unless asked for, and no change to any fingerprint."""

from __future__ import annotations

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.core import loop, train
from jinterp.core import tensorboard as tb
from jinterp.core.checkpoint import Checkpointer

pytest.importorskip("tensorboard", reason="the tensorboard package (dev extra) reads the files back")
from tbread import jsonl_scalars, tb_scalars  # noqa: E402  (tests/core/tbread.py)


class _Killed(Exception):
    pass


class _Batches:
    """Batches ``x = 1, 2, ...``; raises ``_Killed`` (like a kill) when asked for batch ``die_at``."""

    def __init__(self, die_at: int | None = None):
        self.pos, self.die_at = 0, die_at

    def __next__(self):
        if self.die_at is not None and self.pos + 1 == self.die_at:
            raise _Killed
        self.pos += 1
        return {"x": np.full((4,), self.pos, np.float32)}

    def get_state(self):
        return {"pos": self.pos}


def _state():
    return train.TrainState(step=jnp.int32(0), params={"w": jnp.zeros((3,))}, model_state={}, opt_state={},
                            rng=jax.random.PRNGKey(0))


@jax.jit
def _step(state, batch):
    return state.replace(step=state.step + 1, params={"w": state.params["w"] + 1.0}), {
        "loss": batch["x"].mean() / 3.0, "grad_norm": jnp.float32(1), "lr": jnp.float32(0.1)}


def test_crc32c_and_record_framing():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tb.crc32c(b"") == 0
    rec = tb.record(b"abc")
    assert struct.unpack("<Q", rec[:8])[0] == 3 and rec[12:15] == b"abc" and len(rec) == 19
    assert tb.event_step(tb.event(1234567, wall_time=1.5, scalars={"a": 1.0})) == 1234567


def test_loop_writes_the_same_scalars_steps_and_times_as_metrics_jsonl(tmp_path):
    loop.train_loop(_state(), train_step=_step, train_iter=_Batches(), num_steps=6, workdir=tmp_path, log_every=2,
                    eval_every=3, eval_fn=lambda s: {"accuracy": float(s.params["w"][0]) / 7}, progress=False,
                    tensorboard=True)
    from_tb, from_jsonl = tb_scalars(tmp_path / "tb"), jsonl_scalars(tmp_path)
    assert [(s, t) for s, t, _, _ in from_tb] == [(s, t) for s, t, _, _ in from_jsonl]
    assert {t for _, t, _, _ in from_tb} == {"train/loss", "train/grad_norm", "train/lr", "train/examples_per_s",
                                             "test/accuracy"}
    assert [v for _, _, v, _ in from_tb] == [v for _, _, v, _ in from_jsonl]  # float32 simple_value
    assert [w for *_, w in from_tb] == [w for *_, w in from_jsonl]
    assert ("test/accuracy", 3) in [(t, s) for s, t, _, _ in from_tb]


def test_off_unless_asked_and_the_context_switch(tmp_path):
    loop.train_loop(_state(), train_step=_step, train_iter=_Batches(), num_steps=2, workdir=tmp_path / "off",
                    log_every=1, progress=False)
    assert not (tmp_path / "off" / "tb").exists()
    assert not tb.is_enabled()
    with tb.logging():
        assert tb.is_enabled()
        loop.train_loop(_state(), train_step=_step, train_iter=_Batches(), num_steps=2, workdir=tmp_path / "on",
                        log_every=1, progress=False)
    assert not tb.is_enabled()
    assert [s for s, t, *_ in tb_scalars(tmp_path / "on" / "tb") if t == "train/loss"] == [1, 2]


@pytest.mark.parametrize("die_at", [7, 3])  # after the checkpoint at step 4 / before the first one
def test_resume_cuts_the_event_files_back_like_metrics_jsonl(tmp_path, die_at):
    """Killed at batch ``die_at`` with a checkpoint every 4 steps: the rerun restores step 4 (or starts over) and
    TensorBoard, reading every event file, sees each step once, equal to metrics.jsonl."""
    def attempt(die_at):
        ck = Checkpointer(tmp_path / "checkpoints", keep=2, config={"n": 10})
        state, _, _ = loop.restore_or_init(ck, _state(), tmp_path)
        try:
            loop.train_loop(state, train_step=_step, train_iter=_Batches(die_at), num_steps=10, workdir=tmp_path,
                            checkpointer=ck, log_every=2, ckpt_every=4, progress=False, tensorboard=True)
        finally:
            ck.close(after_error=True)

    with pytest.raises(_Killed):
        attempt(die_at)
    first = [s for s, t, *_ in tb_scalars(tmp_path / "tb") if t == "train/loss"]
    assert first == list(range(2, die_at, 2))
    attempt(None)
    steps = [s for s, t, *_ in tb_scalars(tmp_path / "tb") if t == "train/loss"]
    assert steps == [2, 4, 6, 8, 10]
    assert tb_scalars(tmp_path / "tb") == jsonl_scalars(tmp_path)
    files = sorted((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == (2 if die_at > 4 else 1)  # the resumed session writes a file of its own


def test_a_torn_last_record_is_dropped_on_resume(tmp_path):
    w = tb.EventWriter(tmp_path)
    w.write(1, {"train/loss": 1.0})
    w.write(2, {"train/loss": 2.0})
    full = w.path.read_bytes()
    w.path.write_bytes(full[:-5])  # a kill mid-record
    tb.truncate_after(tmp_path, 5)
    assert [s for s, *_ in tb_scalars(tmp_path)] == [1]
    tb.truncate_after(tmp_path, 0)
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # nothing left but the header: removed


@pytest.mark.slow
def test_cli_flag_logs_train_backbone_and_changes_no_fingerprint(tmp_path, capsys):
    from jinterp.cli import main

    work = tmp_path / "run"
    argv = ["train-backbone", "--quiet", "--config", "tiny", "--workdir", str(work), "--set", "steps=4",
            "--set", "log_every=1", "--set", "eval_every=2", "--set", "train_size=64", "--set", "test_size=32",
            "--set", "batch_size=16", "--set", "image_size=32"]
    assert main([*argv, "--tensorboard"]) == 0
    assert tb_scalars(work / "tb") == jsonl_scalars(work)
    assert [s for s, t, *_ in tb_scalars(work / "tb") if t == "train/loss"] == [1, 2, 3, 4]
    assert {t for _, t, *_ in tb_scalars(work / "tb")} >= {"train/accuracy", "test/accuracy", "test/loss"}
    record = json.loads((work / "config.json").read_text())
    # The same command without the flag resumes the finished stage (no step trained again, nothing refused):
    # the flag is no part of any fingerprint.
    before = (work / "metrics.jsonl").read_text()
    assert main(argv) == 0
    fingerprints = lambda rec: {k: v["fingerprint"] for k, v in rec["stages"].items()}  # noqa: E731
    assert fingerprints(json.loads((work / "config.json").read_text())) == fingerprints(record)
    assert (work / "metrics.jsonl").read_text() == before
