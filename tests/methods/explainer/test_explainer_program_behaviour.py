"""The explainer program end to end on tiny articulated synthparts: its results move when a hyperparameter that must
matter moves (λ, seed, randomized weights), and every unit set's number sits beside baselines computed on the same
test images (issue #20: a program ignoring λ, or baselines on other data, must turn a test red)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jinterp.errors import CheckpointError
from jinterp.methods.explainer import ExplainerConfig
from jinterp.methods.explainer import program as prog

pytestmark = pytest.mark.slow

UNIT_SETS = ("explainer_interp2_masked", "explainer_interp2", "performer_relu3", "performer_relu4")


def _cfg(**kw) -> ExplainerConfig:
    base = dataclasses.replace(
        ExplainerConfig.tiny(), data="synthparts:preset=articulated", train_size=160, test_size=96, image_size=32,
        backbone_steps=60, steps=40, batch_size=16, eval_batch_size=96, sweep_steps=0, filters=8, log_every=5,
        ckpt_every=0, num_figure_filters=2, layer="relu3", target="relu4")
    return dataclasses.replace(base, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The base run (trains its performer), then λ = 0, another seed and a randomized performer on its weights."""
    root = tmp_path_factory.mktemp("explainer_runs")
    base = prog.run(_cfg(), root / "base", progress=False)
    weights = base["performer"]["weights"]
    out = {"base": base, "dir": root / "base", "weights": weights}
    for name, kw in (("lam0", {"lam": 0.0}), ("seed1", {"seed": 1}), ("random", {"randomize_backbone": True})):
        out[name] = prog.run(_cfg(weights=weights, **kw), root / name, progress=False)
    return out


def _final_filter_loss(res) -> float:
    return float(np.mean([row["filter"] for row in res["train_curve"][-3:]]))


def _instability(res) -> np.ndarray:
    return np.array([res["instability"][k]["value"] for k in UNIT_SETS])


def test_every_unit_set_sits_beside_its_baselines_on_the_same_images(runs):
    res = runs["base"]
    assert set(res["instability_baselines"]) == set(UNIT_SETS) == set(res["filter_diversity"])
    for k in UNIT_SETS:
        b = res["instability_baselines"][k]
        # the method's number in the baselines is the reported one: same split, same protocol
        assert b["method"] == pytest.approx(res["instability"][k]["value"], rel=1e-9), k
        for name in ("centre", "mean_position", "random"):
            assert np.isfinite(b[name]) and b[name] != pytest.approx(b["method"], rel=1e-6), (k, name)
        # random positions know nothing: clearly worse than a unit that stays at its own mean position
        assert b["random"] > b["mean_position"], k
        beats = b["method"] < min(b["centre"], b["mean_position"], b["random"])
        assert b["beats_baselines"] is beats and ("does NOT beat" in b["verdict"]) is (not beats), k
        d = res["filter_diversity"][k]
        assert 1 / d["filters"] - 1e-6 <= d["share_on_most_common_cell"] <= 1
        assert 0 <= d["parts_covered"] <= d["parts"] and d["collapsed"] is (d["share_on_most_common_cell"] > 0.2)
    # the centre baseline depends only on the test images and their landmarks: one value for every unit set
    centres = {round(res["instability_baselines"][k]["centre"], 12) for k in UNIT_SETS}
    assert len(centres) == 1


def test_lambda_drives_the_filter_loss_and_changes_the_results(runs):
    base, lam0 = runs["base"], runs["lam0"]
    assert base["lam"] > 0 and lam0["lam"] == 0
    # λ > 0 trains the filter loss down; λ = 0 leaves it to drift (a program ignoring λ, or a flipped sign, fails)
    assert _final_filter_loss(base) < _final_filter_loss(lam0) - 0.05 * abs(_final_filter_loss(lam0))
    assert not np.allclose(_instability(base)[:2], _instability(lam0)[:2])
    # the performer is the same: its own units score exactly the same
    np.testing.assert_allclose(_instability(base)[2:], _instability(lam0)[2:], rtol=1e-9)


def test_seed_changes_the_explainer(runs):
    base, seed1 = runs["base"], runs["seed1"]
    assert base["relative_error"] != pytest.approx(seed1["relative_error"], rel=1e-6)
    assert not np.allclose(_instability(base)[:2], _instability(seed1)[:2])


def test_randomized_performer_is_another_network_and_says_so(runs):
    base, rnd = runs["base"], runs["random"]
    assert rnd["randomize_backbone"] is True and rnd["performer"].get("randomized") is True
    assert base["randomize_backbone"] is False and "randomized" not in base["performer"]
    # re-initialized weights: the performer's own units move, and it no longer classifies like the trained one
    assert not np.allclose(_instability(base)[2:], _instability(rnd)[2:])
    assert rnd["accuracy"] != pytest.approx(base["accuracy"], abs=1e-9)
    for k in UNIT_SETS:
        assert rnd["instability_baselines"][k]["method"] == pytest.approx(rnd["instability"][k]["value"], rel=1e-9)


def test_randomize_backbone_is_part_of_the_run_fingerprint(runs):
    # the same workdir with the flag flipped must not resume the trained-network explainer as if it were the same
    with pytest.raises(CheckpointError, match="randomize_backbone"):
        prog.run(_cfg(randomize_backbone=True), runs["dir"], progress=False)
