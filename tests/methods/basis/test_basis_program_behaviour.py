"""``jinterp basis`` end to end: its scores move when a setting that must matter moves (seed, layer, randomized
weights, UIBE's trainer) and stay put where it must not (the natural basis knows no seed); issue #20."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.methods.basis import ibd, program, uibe
from jinterp.methods.basis.config import BasisConfig

pytestmark = pytest.mark.slow  # five tiny end-to-end runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("basis_runs")
    model = backbones.create("convnet", 6, widths=(8, 8, 16, 16))
    weights = torch_import.save_variables(root / "params.npz", backbones.init(model, jax.random.key(0), (32, 32, 3)),
                                          {"arch": "convnet", "num_classes": 6, "config": {"widths": [8, 8, 16, 16]}})
    base = BasisConfig(weights=str(weights), data="synthparts:n_train=24,n_test=12,size=32", layer="relu3",
                       n_train=24, n_test=12, batch_size=12, fit_pixels=2000, figure_directions=1, figure_images=1,
                       methods=("natural", "random", "uibe"),
                       uibe=uibe.UIBEConfig(num_directions=8, batch_size=256, epochs=2), ibd=ibd.IBDConfig.tiny())
    out = {}
    for name, kw in (("base", {}), ("random", {"randomize_backbone": True}), ("seed1", {"seed": 1}),
                     ("relu4", {"layer": "relu4"}),
                     ("al", {"uibe": dataclasses.replace(base.uibe, trainer="augmented_lagrangian")})):
        out[name] = program.run(dataclasses.replace(base, **kw), root / name, progress=False)
    return out


def _scores(res, key):
    return res["bases"][key]["S1"], res["bases"][key]["S2"], res["bases"][key]["firing_rate_val"]


def test_randomized_backbone_is_another_network_and_says_so(runs):
    base, rnd = runs["base"], runs["random"]
    assert rnd["randomize_backbone"] is True and rnd["backbone"].get("randomized") is True
    assert base["randomize_backbone"] is False and "randomized" not in base["backbone"]
    # the raw channels of other weights are other units: the natural basis cannot score the same
    assert _scores(rnd, "natural@q") != _scores(base, "natural@q")
    check = program.randomization_check(base, rnd)
    assert {"uibe@own S1", "uibe@q S1", "natural@q S1"} <= set(check)
    assert all(("SURVIVES" in v["text"]) == v["survives_randomization"] for v in check.values())


def test_seed_reaches_the_fitted_bases_but_not_the_natural_one(runs):
    base, other = runs["base"], runs["seed1"]
    assert _scores(other, "natural@q") == _scores(base, "natural@q")  # no randomness in the raw channels
    assert _scores(other, "uibe@own") != _scores(base, "uibe@own")
    assert _scores(other, "random@q") != _scores(base, "random@q")


def test_layer_reaches_the_features(runs):
    base, other = runs["base"], runs["relu4"]
    assert other["layer"] == "relu4" and base["layer"] == "relu3"
    assert _scores(other, "natural@q") != _scores(base, "natural@q")


def test_uibe_trainer_reaches_the_fit_and_only_the_fit(runs):
    base, al = runs["base"], runs["al"]
    assert al["bases"]["uibe@own"]["trainer"] == "augmented_lagrangian" and base["bases"]["uibe@own"]["trainer"] == \
        "weighted"
    assert len(al["bases"]["uibe@own"]["multipliers"]) == 3 and base["bases"]["uibe@own"]["multipliers"] is None
    assert _scores(al, "uibe@own") != _scores(base, "uibe@own")
    assert _scores(al, "natural@q") == _scores(base, "natural@q")
    assert sum(al["bases"]["uibe@own"]["labels_by_category"].values()) == al["bases"]["uibe@own"]["directions"] - \
        al["bases"]["uibe@own"]["dead"]
