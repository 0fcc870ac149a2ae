"""Every method's CLI prints its verdicts in words under the numbers, and says when the run was the randomized twin
(``randomize_backbone``); the programs are replaced by canned results, so these run in seconds."""

from __future__ import annotations

import importlib

import pytest

from jinterp import cli

BASIS = {"arch": "convnet", "layer": "relu3", "wall_times_s": {"total_s": 1.0},
         "bases": {"uibe@own": {"S1": 1.0, "S2": 0.5, "detectors": 1, "directions": 8, "unique_detectors": 1}},
         "verdicts": {"uibe@own S1": "uibe@own S1 1 does NOT beat its baselines"}}
CSG = {"times": {"total_s": 1.0}, "models": {"csg": {"accuracy": 0.8, "mis": 0.1}},
       "verdicts": {"mis": "CSG MIS (higher: more class-specific filters) 0.1 beats all its baselines"}}
CLADEC = {"arch": "convnet", "alphas": [0.0], "backbone": {"test_accuracy": 0.9}, "wall_times_s": {"total_s": 1.0},
          "layers": {"relu3": {"sources": {"cladec@0": {"mse": 0.01, "frozen_accuracy": 0.5}},
                               "retrain_check": {"text": "retrain column not meaningful: 0.230 vs 0.880"}}}}


@pytest.mark.parametrize(("method", "results", "said"), [
    ("basis", BASIS, "uibe@own S1 1 does NOT beat its baselines"),
    ("csg", CSG, "CSG MIS (higher: more class-specific filters) 0.1 beats all its baselines"),
    ("cladec", CLADEC, "relu3: retrain column not meaningful: 0.230 vs 0.880")])
@pytest.mark.parametrize("randomized", [False, True])
def test_cli_prints_verdicts_and_the_randomized_note(method, results, said, randomized, tmp_path, capsys,
                                                     monkeypatch):
    program = importlib.import_module(f"jinterp.methods.{method}.program")
    monkeypatch.setattr(program, "run", lambda cfg, workdir, **kw: {**results, "randomize_backbone": randomized})
    assert cli.main([method, "--config", "tiny", "--workdir", str(tmp_path / "w"), "--quiet"]) == 0
    lines = [x.strip() for x in capsys.readouterr().out.splitlines() if x.strip().startswith("verdict:")]
    note = "verdict: this run used a randomly re-initialized network (randomize_backbone)"
    assert f"verdict: {said}" in lines
    assert any(x.startswith(note) for x in lines) == randomized
    if randomized:
        assert lines[0].startswith(note)  # said before anything else
