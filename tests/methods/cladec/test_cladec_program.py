"""ClaDec end to end on a very small synthparts run, its resume, and the CLI's errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.cli import main
from jinterp.core.config import apply_overrides
from jinterp.methods.cladec import ClaDecConfig
from jinterp.methods.cladec.program import run

SMALL = ["train_size=128", "test_size=64", "batch_size=32", "epochs=2", "alphas=0,0.1", "layers=relu3",
         "retrain_epochs=1", "retrain_batch_size=32", "grid_rows=3", "eval_batch_size=64", "log_every=2"]


@pytest.mark.slow
def test_program_end_to_end_and_resume(tmp_path):
    # A given (random) backbone: the backbone-training branch is train_backbone's, tested in tests/core.
    model = backbones.create("convnet", 6, widths=(8, 16, 16, 16))
    weights = torch_import.save_variables(tmp_path / "w.npz", backbones.init(model, jax.random.key(0), (32, 32, 3)),
                                          {"arch": "convnet", "num_classes": 6, "widths": [8, 16, 16, 16]})
    cfg = apply_overrides(ClaDecConfig.tiny(), [*SMALL, f"weights={weights}"])
    res = run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["layers"].keys() == {"relu3"}
    layer = saved["layers"]["relu3"]
    assert set(layer["sources"]) == {"refae", "cladec@0", "cladec@0.1", "original"}
    for name, src in layer["sources"].items():
        for key in ("frozen_accuracy", "retrain_acc_reconstructed", "retrain_acc_original"):
            assert 0.0 <= src[key] <= 1.0, (name, key)
        if name != "original":
            assert 0.0 < src["mse"] < 1.0 and src["sse_per_image"] == pytest.approx(src["mse"] * 32 * 32 * 3,
                                                                                      rel=1e-4)
    assert layer["cladec_train"]["classifier_in_loop"] is True
    for path in saved["figures"].values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "layers" / "relu3" / "cladec.npz").exists()
    # A rerun reuses the backbone, RefAE and the decoders and reproduces every test metric.
    again = run(cfg, tmp_path, progress=False)
    assert again["layers"]["relu3"]["cladec_train"].get("loaded") and again["layers"]["relu3"]["refae_train"]["loaded"]
    for name, src in res["layers"]["relu3"]["sources"].items():
        for key in ("mse", "frozen_accuracy"):
            if key in src:
                np.testing.assert_allclose(again["layers"]["relu3"]["sources"][name][key], src[key], rtol=1e-6)


def test_cli_reports_bad_layer_and_alpha(tmp_path, capsys):
    assert main(["cladec", "--config", "tiny", "--workdir", str(tmp_path), "--layer", "conv9", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'conv9'" in err and "relu3" in err
    assert main(["cladec", "--config", "tiny", "--workdir", str(tmp_path), "--alpha", "1.5", "--quiet"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "backbone").exists()  # rejected before any training
