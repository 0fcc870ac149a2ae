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
    clf_vars = backbones.init(model, jax.random.key(0), (32, 32, 3))
    weights = torch_import.save_variables(tmp_path / "w.npz", clf_vars,
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
    # α must matter: both decoders start from the same init, so a program ignoring α gives identical results.
    mse0, mse1 = layer["sources"]["cladec@0"]["mse"], layer["sources"]["cladec@0.1"]["mse"]
    assert abs(mse0 - mse1) > 1e-5 * mse0, (mse0, mse1)
    # The retrain column is judged against the backbone's own accuracy.
    chk = layer["retrain_check"]
    orig = layer["sources"]["original"]
    assert chk["original_retrain_accuracy"] == orig["retrain_acc_original"]
    assert chk["backbone_accuracy"] == orig["frozen_accuracy"]
    assert chk["meaningful"] == (orig["retrain_acc_original"] >= 0.9 * orig["frozen_accuracy"])
    # RefAE's encoder starts fresh, not from the classifier: after a few steps it is still far from the
    # classifier's weights (a RefAE started from them would stay within a few percent).
    from flax import traverse_util

    clf = traverse_util.flatten_dict(jax.device_get(clf_vars["params"]), sep="/")
    with np.load(tmp_path / "layers" / "relu3" / "refae.npz") as z:
        enc = {k[len("params/encoder/"):]: z[k] for k in z.files if k.startswith("params/encoder/")}
    kernels = [k for k in enc if k.endswith("kernel")]
    assert kernels and all(k in clf for k in kernels)
    rel = [np.linalg.norm(enc[k] - clf[k]) / np.linalg.norm(clf[k]) for k in kernels]
    assert min(rel) > 0.5, rel
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


def test_retrain_column_is_judged_against_the_backbone():
    from jinterp.methods.cladec.program import retrain_meaningful

    ok = retrain_meaningful(0.83, 0.88)
    assert ok["meaningful"] and ok["text"].startswith("retrain column meaningful")
    bad = retrain_meaningful(0.23, 0.88)
    assert not bad["meaningful"] and "not meaningful" in bad["text"] and "0.230 vs the backbone's 0.880" in bad["text"]


def test_cli_reports_bad_layer_and_alpha(tmp_path, capsys):
    assert main(["cladec", "--config", "tiny", "--workdir", str(tmp_path), "--layer", "conv9", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'conv9'" in err and "relu3" in err
    assert main(["cladec", "--config", "tiny", "--workdir", str(tmp_path), "--alpha", "1.5", "--quiet"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "backbone").exists()  # rejected before any training
