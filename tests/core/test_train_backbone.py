"""train_backbone end to end on a tiny synthparts: an interrupted run resumes to bitwise-equal params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jinterp.core import config as C
from jinterp.core.checkpoint import Checkpointer
from jinterp.core.train_backbone import train_backbone


def _pooling_differentiable() -> bool:
    from jinterp.nn import ops

    try:
        f = lambda x: ops.max_pool2d(x, 2, 2).sum() + ops.avg_pool2d(x, 2).sum()
        jax.jit(jax.grad(f))(jnp.ones((1, 4, 4, 1)))
        return True
    except ValueError:
        return False


class Died(Exception):
    pass


def test_interrupted_run_resumes_bitwise(tmp_path, monkeypatch):
    if not _pooling_differentiable():
        pytest.skip("jinterp.nn.ops pooling cannot be differentiated under jit yet (array init values)")
    cfg = C.apply_overrides(C.TrainBackboneConfig.tiny(), [
        "data=synthparts:size=32,n_train=96,n_test=32", "steps=8", "batch_size=16", "widths=4,8,8,8",
        "eval_every=0", "ckpt_every=2", "log_every=1", "augment=flip_crop", "optim.warmup_steps=2"])
    ref = train_backbone(cfg, tmp_path / "ref", progress=False)

    # Die right after the checkpoint of step 4 is written (the data iterator is mid-epoch: 6 batches/epoch).
    save = Checkpointer.save

    def save_then_die(self, step, state, **kw):
        save(self, step, state, **kw)
        if step == 4:
            self.wait()
            raise Died

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Died):
        train_backbone(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(Checkpointer, "save", save)
    out = train_backbone(cfg, tmp_path / "run", progress=False)
    assert out["resumed_from"] == 4 and out["test_accuracy"] == ref["test_accuracy"]
    with np.load(tmp_path / "ref" / "params.npz") as a, np.load(tmp_path / "run" / "params.npz") as b:
        for k in a.files:
            if k != "__meta__":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
