"""``jinterp explainer`` prints the results' verdicts in words beside its numbers (issue #20), like the other
methods' CLIs; the program is replaced by canned results so this runs in a second."""

from __future__ import annotations

from jinterp import cli
from jinterp.methods.explainer import program


def _results(randomized: bool = False) -> dict:
    inst = {"explainer_interp2": {"value": 0.05}, "performer_relu3": {"value": 0.09}}
    base = {"explainer_interp2": {"method": 0.05, "verdict": "explainer interp2: location instability 0.05 does NOT "
                                                             "beat its baselines (centre 0.04)"},
            "performer_relu3": {"method": 0.09, "verdict": "performer relu3: location instability 0.09 beats all "
                                                           "its baselines"}}
    div = {"explainer_interp2": {"share_on_most_common_cell": 0.9, "verdict": "90% of the filters peak on the same "
                                                                              "cell per image"},
           "performer_relu3": {"share_on_most_common_cell": 0.125}}
    return {"arch": "convnet", "layer": "relu3", "target": "relu4", "relative_error": 0.3, "accuracy": 0.8,
            "accuracy_replaced": 0.7, "p_mean": 0.5, "instability": inst, "instability_baselines": base,
            "filter_diversity": div, "times": {"total_s": 1.0}, "randomize_backbone": randomized}


def test_cli_prints_every_verdict(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(program, "run", lambda cfg, workdir, **kw: _results())
    assert cli.main(["explainer", "--config", "tiny", "--workdir", str(tmp_path / "w"), "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = [x.strip() for x in out.splitlines() if "verdict:" in x]
    assert lines == ["verdict: explainer interp2: location instability 0.05 does NOT beat its baselines (centre 0.04)",
                     "verdict: performer relu3: location instability 0.09 beats all its baselines",
                     "verdict: explainer interp2 filters: 90% of the filters peak on the same cell per image"]
    assert "randomly re-initialized" not in out
    # the diversity figure stands beside each instability on the summary line
    assert "instability interp2 0.0500 (90% of filters on one cell) vs performer relu3 0.09 (12% of filters" in out


def test_cli_says_when_the_run_is_the_randomization_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(program, "run", lambda cfg, workdir, **kw: _results(randomized=True))
    assert cli.main(["explainer", "--config", "tiny", "--workdir", str(tmp_path / "w"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "verdict: this run used a randomly re-initialized network" in out
