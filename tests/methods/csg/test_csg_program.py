"""A tiny end-to-end CSG run through the program and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jinterp.core.config import apply_overrides
from jinterp.methods.csg import CSGConfig
from jinterp.methods.csg.program import run

TINIER = ["image_size=32", "train_size=200", "test_size=60", "epochs=3", "warmup_epochs=1", "mask_period=2",
          "mask_epoch_min=1", "batch_size=50", "eval_size=60", "adv_size=16", "pgd_steps=2", "n_top_channel=3",
          "widths=4,8,8,8", "seeds=1"]


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    cfg = apply_overrides(CSGConfig.tiny(), TINIER)
    assert [cfg.is_csg_epoch(e) for e in range(3)] == [False, True, False]
    res = run(cfg, tmp_path, progress=False)
    csg, std = res["models"]["csg"], res["models"]["standard"]
    # The gate was trained and projected: every filter's max gate is 1, all gates in [0, 1].
    gate = np.load(tmp_path / "gate.npy")
    assert gate.shape == (8, 6) and gate.min() >= 0 and np.allclose(gate.max(1), 1.0)
    assert csg["density"] == pytest.approx(float(np.abs(gate).mean()), rel=1e-5)
    assert [e["path"] for e in res["training"]["csg"]["epochs"]] == ["std", "csg", "std"]
    assert [e["path"] for e in res["training"]["standard"]["epochs"]] == ["std"] * 3
    # Same start, same first epoch: the two runs only diverge at the first gated epoch.
    e0c, e0s = res["training"]["csg"]["epochs"][0], res["training"]["standard"]["epochs"][0]
    assert e0c["train_loss"] == pytest.approx(e0s["train_loss"], rel=1e-5)
    for m in (csg, std):
        assert 0 <= m["accuracy"] <= 1 and m["mis"] >= 0
        assert {"cam", "gradmap", "activmap"} <= set(m["localization"])
        assert m["adversarial"]["pgd"]["linf"] <= cfg.adv_eps + 1e-6
    assert "auc_gate" in csg["adversarial"]["fgsm"] and "auc_gate" not in std["adversarial"]["fgsm"]
    for f in res["figures"].values():
        assert (tmp_path / "figures").exists() and f.endswith(".png")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["models"]["csg"]["mis"] == csg["mis"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_cli_reports_config_errors(capsys):
    from jinterp.cli import main

    assert main(["csg", "--config", "tiny", "--set", "gate_init=2"]) == 2
    assert "gate_init" in capsys.readouterr().err


@pytest.mark.slow
def test_seeds_give_mean_std_and_verdicts(tmp_path):
    """Three seeds: every number is a mean with its spread, the seeds differ, and the verdicts say in words whether
    CSG beats standard training beyond that spread."""
    cfg = apply_overrides(CSGConfig.tiny(), [*TINIER, "seeds=3", "epochs=2", "warmup_epochs=1", "mask_epoch_min=1",
                                             "train_size=100", "test_size=40", "eval_size=40", "adv_size=8",
                                             "pgd_steps=1", "batch_size=25"])
    res = run(cfg, tmp_path, progress=False)
    assert res["seeds"] == [0, 1, 2]
    per = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text())["models"] for s in res["seeds"]]
    for name in ("csg", "standard"):
        mis = [p[name]["mis"] for p in per]
        assert len(set(mis)) == 3  # the seed reaches the run (init, data order)
        assert res["models"][name]["mis"] == pytest.approx(np.mean(mis))
        assert res["models_std"][name]["mis"] == pytest.approx(np.std(mis))
        assert res["models"][name]["accuracy"] == pytest.approx(np.mean([p[name]["accuracy"] for p in per]))
    assert {"accuracy", "mis"} <= set(res["verdicts"])
    assert "higher: more class-specific" in res["verdicts"]["mis"]
    assert all("baselines" in t for t in res["verdicts"].values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models_std"]["csg"]["mis"] == res["models_std"]["csg"]["mis"]


def test_mis_refuses_logits_shape():
    """The program's MIS goes through information.filter_mis, which takes maps (N, h, w, K) and refuses logits."""
    from jinterp.errors import ShapeError
    from jinterp.metrics import information

    with pytest.raises(ShapeError, match="feature maps"):
        information.filter_mis(np.zeros((10, 6)), np.zeros(10, int), 6)


@pytest.mark.slow
def test_randomized_run_evaluates_re_initialized_weights(tmp_path):
    """``randomize_backbone`` (Adebayo et al.'s check): the program evaluates, saves and reports the re-initialized
    weights (the learned gate kept), not the ones it trained."""
    import jax

    from jinterp import backbones
    from jinterp.backbones import torch_import
    from jinterp.metrics.baselines import randomized_weights

    cfg = apply_overrides(CSGConfig.tiny(), [*TINIER, "epochs=1", "warmup_epochs=0", "mask_epoch_min=0",
                                             "baseline=false", "train_size=50", "test_size=20", "eval_size=20",
                                             "adv_size=4", "pgd_steps=1", "batch_size=25", "randomize_backbone=true"])
    res = run(cfg, tmp_path, progress=False)
    assert res["randomize_backbone"] is True and set(res["models"]) == {"csg"}
    saved, _ = torch_import.load_variables(tmp_path / "csg_params.npz")
    model = backbones.create("convnet", 6, widths=(4, 8, 8, 8))
    fresh = randomized_weights(model, cfg.seed, (32, 32, 3))
    got, want = jax.tree.leaves(saved["params"]), jax.tree.leaves(fresh["params"])
    assert len(got) == len(want)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True))
    gate = np.load(tmp_path / "gate.npy")
    assert gate.std(1).max() > 1e-4  # the trained gate, not the uniform start (renormalized: all ones)
