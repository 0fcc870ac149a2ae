"""Orbax checkpoints: round trip, keep-K, incompatible/corrupt checkpoints, interrupted saves."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.core import train
from jinterp.core.checkpoint import Checkpointer
from jinterp.core.config import OptimConfig
from jinterp.errors import CheckpointError


def _state(width: int = 4, freeze=()):
    params = {"conv": {"kernel": jnp.arange(3 * width, dtype=jnp.float32).reshape(3, width),
                       "bias": jnp.ones((width,))}, "fc": {"kernel": jnp.ones((width, 2))}}
    variables = {"params": params, "batch_stats": {"bn": {"mean": jnp.zeros((width,))}}}
    tx, _ = train.make_optimizer(OptimConfig(name="sgd", freeze=freeze), 10, params)
    return train.create_train_state(variables, tx, jax.random.PRNGKey(7))


def _assert_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_round_trip_with_meta_and_keep(tmp_path):
    state = _state(freeze=("^conv/",))  # partition + masked optimizer states must survive the round trip
    with Checkpointer(tmp_path, keep=2, config={"lr": 0.1}) as ck:
        for step in (1, 2, 3):
            ck.save(step, state.replace(step=jnp.int32(step)), data_state={"epoch": 0, "step": step})
    with Checkpointer(tmp_path, keep=2, config={"lr": 0.1}) as ck:
        assert ck.all_steps() == [2, 3]
        restored, meta = ck.restore(state)
    assert int(restored.step) == 3 and meta["data"] == {"epoch": 0, "step": 3} and meta["config"] == {"lr": 0.1}
    assert isinstance(restored, train.TrainState)
    _assert_equal(restored.replace(step=state.step), state)


def test_config_mismatch_is_an_error_and_keeps_files(tmp_path):
    with Checkpointer(tmp_path, config={"arch": "convnet", "optim": {"lr": 0.1}, "log_every": 5}) as ck:
        ck.save(5, _state())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with Checkpointer(tmp_path, config={"arch": "convnet", "optim": {"lr": 0.2}, "log_every": 7}) as ck:
        with pytest.raises(CheckpointError) as e:
            ck.restore(_state())
    msg = str(e.value)
    assert "optim.lr" in msg and "0.1" in msg and "0.2" in msg and "log_every" not in msg
    assert str(tmp_path) in msg and "--workdir" in msg
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_shape_mismatch_is_an_error(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(width=4))
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(CheckpointError, match=r"does not match.*conv/kernel.*\(3, 4\).*\(3, 8\)"):
            ck.restore(_state(width=8))


def test_corrupt_checkpoint_is_an_error_and_not_overwritten(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state())
    # Damage every array file of the state item.
    damaged = [p for p in (tmp_path / "1" / "state").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert damaged
    for p in damaged:
        p.write_bytes(b"garbage")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(CheckpointError, match="corrupt or unreadable.*left untouched.*--workdir"):
            ck.restore(_state())
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_interrupted_save_is_never_loaded(tmp_path):
    """Orbax writes <step>.orbax-checkpoint-tmp-* and renames when done; a leftover tmp dir is not a step."""
    state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(2, state)
    # What a kill during the save of step 4 leaves behind: a half-written temporary directory.
    shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp-1234567")
    (tmp_path / "4.orbax-checkpoint-tmp-1234567" / "meta" / "metadata").write_text("{trunc")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step == 2
        restored, meta = ck.restore(state)
    assert meta["step"] == 2


def test_no_checkpoint(tmp_path):
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step is None
        with pytest.raises(CheckpointError, match="no checkpoint"):
            ck.restore(_state())
