"""ClaDec end to end: its results move when a setting that must matter moves (randomized classifier, lr, seed,
layer; α is checked in ``test_cladec_program``), ``randomize_backbone`` says so in ``results.json``, and the RefAE,
which never sees the classifier's weights, is reused by the randomized run (issue #20)."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.core.config import apply_overrides
from jinterp.methods.cladec import ClaDecConfig
from jinterp.methods.cladec.program import randomization_check, run

pytestmark = pytest.mark.slow  # five tiny end-to-end runs

SMALL = ["train_size=128", "test_size=64", "batch_size=32", "epochs=1", "alphas=0,0.1", "layers=relu3",
         "retrain_epochs=0", "grid_rows=3", "eval_batch_size=64", "log_every=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cladec_runs")
    model = backbones.create("convnet", 6, widths=(8, 16, 16, 16))
    weights = torch_import.save_variables(root / "w.npz", backbones.init(model, jax.random.key(0), (32, 32, 3)),
                                          {"arch": "convnet", "num_classes": 6, "widths": [8, 16, 16, 16]})
    cfg = apply_overrides(ClaDecConfig.tiny(), [*SMALL, f"weights={weights}"])
    out = {"base": run(cfg, root / "run", progress=False)}
    out["random"] = run(dataclasses.replace(cfg, randomize_backbone=True), root / "run", progress=False)
    lean = dataclasses.replace(cfg, refae=False, alphas=(0.0,))
    for name, kw in (("lean", {}), ("lr", {"lr": 3e-4}), ("seed", {"seed": 1}), ("layer", {"layers": ("relu2",)})):
        out[name] = run(dataclasses.replace(lean, **kw), root / name, progress=False)
    return out


def _mse(res, src="cladec@0"):
    (layer,) = res["layers"].values()
    return layer["sources"][src]["mse"]


def test_randomized_classifier_gives_another_decoding_and_keeps_the_refae(runs):
    base, rnd = runs["base"], runs["random"]
    assert base["randomize_backbone"] is False and "randomized" not in base["backbone"]
    assert rnd["randomize_backbone"] is True and rnd["backbone"]["randomized"] is True
    a, b = base["layers"]["relu3"], rnd["layers"]["relu3"]
    # the RefAE never uses the classifier's weights: reused, the same numbers
    assert b["refae_train"].get("loaded") and b["sources"]["refae"]["mse"] == a["sources"]["refae"]["mse"]
    # the decoders read other activations: other reconstructions (same decoder init and data order otherwise)
    for src in ("cladec@0", "cladec@0.1"):
        assert abs(_mse(base, src) - _mse(rnd, src)) > 1e-6 * _mse(base, src), src
    check = randomization_check(base, rnd)
    assert set(check) == {"relu3 cladec@0 mse", "relu3 cladec@0.1 mse"}
    assert all(v["trained"] == a["sources"][k.split()[1]]["mse"] for k, v in check.items())


@pytest.mark.parametrize("setting", ["lr", "seed", "layer"])
def test_lr_seed_and_layer_reach_the_decoder(runs, setting):
    assert _mse(runs["lean"]) == pytest.approx(_mse(runs["base"]), rel=1e-3)  # RefAE and α=0.1 do not touch α=0
    assert abs(_mse(runs[setting]) - _mse(runs["lean"])) > 1e-5 * _mse(runs["lean"]), setting
