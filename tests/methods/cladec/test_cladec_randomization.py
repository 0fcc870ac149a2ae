"""ClaDec's model-randomization check end to end: ``randomize_backbone`` decodes a re-initialized classifier's
activations (another result), says so in ``results.json``, and reuses the RefAE, which never sees the classifier's
weights (issue #20)."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.core.config import apply_overrides
from jinterp.methods.cladec import ClaDecConfig
from jinterp.methods.cladec.program import randomization_check, run

pytestmark = pytest.mark.slow  # two tiny end-to-end runs

SMALL = ["train_size=128", "test_size=64", "batch_size=32", "epochs=1", "alphas=0,0.1", "layers=relu3",
         "retrain_epochs=0", "grid_rows=3", "eval_batch_size=64", "log_every=2"]


def test_randomized_classifier_gives_another_decoding_and_keeps_the_refae(tmp_path):
    model = backbones.create("convnet", 6, widths=(8, 16, 16, 16))
    weights = torch_import.save_variables(tmp_path / "w.npz", backbones.init(model, jax.random.key(0), (32, 32, 3)),
                                          {"arch": "convnet", "num_classes": 6, "widths": [8, 16, 16, 16]})
    cfg = apply_overrides(ClaDecConfig.tiny(), [*SMALL, f"weights={weights}"])
    base = run(cfg, tmp_path / "run", progress=False)
    rnd = run(dataclasses.replace(cfg, randomize_backbone=True), tmp_path / "run", progress=False)
    assert base["randomize_backbone"] is False and "randomized" not in base["backbone"]
    assert rnd["randomize_backbone"] is True and rnd["backbone"]["randomized"] is True
    a, b = base["layers"]["relu3"], rnd["layers"]["relu3"]
    # the RefAE never uses the classifier's weights: reused, the same numbers
    assert b["refae_train"].get("loaded") and b["sources"]["refae"]["mse"] == a["sources"]["refae"]["mse"]
    # the decoders read other activations: other reconstructions (same decoder init and data order otherwise)
    for src in ("cladec@0", "cladec@0.1"):
        assert abs(a["sources"][src]["mse"] - b["sources"][src]["mse"]) > 1e-6 * a["sources"][src]["mse"], src
    check = randomization_check(base, rnd)
    assert set(check) == {"relu3 cladec@0 mse", "relu3 cladec@0.1 mse"}
    assert all(v["trained"] == a["sources"][k.split()[1]]["mse"] for k, v in check.items())
