"""The explainer program and CLI end to end on a very small synthparts run (trains its own performer)."""

from __future__ import annotations

import json

import pytest

from jinterp import cli

pytestmark = pytest.mark.slow


def test_cli_runs_the_program_and_writes_results(tmp_path, capsys):
    sets = ["train_size=96", "test_size=48", "image_size=32", "backbone_steps=4", "steps=4", "batch_size=16",
            "eval_batch_size=48", "sweep_steps=2", "sweep_lams=0,1", "sweep_etas=0.1", "filters=8",
            "log_every=2", "ckpt_every=4", "num_figure_filters=2"]
    argv = ["explainer", "--config", "tiny", "--workdir", str(tmp_path), "--layer", "relu3", "--target", "relu4",
            "--quiet"] + [x for kv in sets for x in ("--set", kv)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "explainer convnet relu3->relu4" in out
    assert "verdict: explainer interp2: location instability" in out  # the verdicts in words, not only numbers
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["performer_unchanged"] is True and res["steps"] == 4
    assert res["in_shape"] == [8, 8, 64] and res["out_shape"] == [4, 4, 64]
    assert 0 <= res["relative_error"] and 0 < res["p_mean"] < 1
    assert 0 <= res["accuracy_replaced"] <= 1 and len(res["sweep"]) == 2
    assert set(res["instability"]) == {"explainer_interp2_masked", "explainer_interp2", "performer_relu3",
                                       "performer_relu4"}
    for path in res["figures"].values():
        assert (tmp_path / "figures").exists() and path.endswith(".png")
