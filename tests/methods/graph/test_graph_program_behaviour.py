"""The graph program end to end on tiny articulated synthparts: results move with the seed, the layers and randomized
weights, and every number sits beside baselines computed on the same images (issue #20: a program that ignores a
setting or scores its baselines on other data must turn a test red)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jinterp import backbones
from jinterp.backbones import torch_import
from jinterp.methods.graph import program as prog
from jinterp.methods.graph.config import GraphConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = backbones.create("convnet", 6, widths=(8, 16, 16, 16))
    v = backbones.init(model, jax.random.PRNGKey(0), (64, 64, 3))
    path = tmp_path_factory.mktemp("bb") / "params.npz"
    torch_import.save_variables(path, jax.tree.map(np.asarray, v),
                                {"arch": "convnet", "num_classes": 6, "config": {"widths": [8, 16, 16, 16]}})
    return str(path)


def _cfg(weights, **kw) -> GraphConfig:
    return dataclasses.replace(GraphConfig.tiny(), weights=weights, data="synthparts:preset=articulated",
                               num_images=40, num_negatives=30, iterations=2, stability_units=20, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("graph_runs")
    variants = {"base": {}, "seed1": {"seed": 1}, "top_only": {"layers": ("bn4",), "density": (0.1,), "top_n": (0,),
                                                               "top_m": (0,)},
                "random": {"randomize_backbone": True}}
    out = {name: prog.run(_cfg(weights, **kw), root / name, progress=False) for name, kw in variants.items()}
    out["dir"] = root / "base"
    return out


def test_every_number_sits_beside_its_baselines_on_the_same_images(runs):
    m = runs["base"]["metrics"]
    assert set(m["instability_baselines"]) == {"bn3", "bn4"}
    for layer, entry in m["instability_baselines"].items():
        assert set(entry) == {f"{k}_{v}" for k in ("nodes", "filters") for v in ("graph", "icnn")}
        for key, b in entry.items():
            kind, variant = key.split("_")
            # the method's value in the baselines is the one reported for that layer: same images, same protocol
            assert b["method"] == pytest.approx(m["per_layer"][layer][kind][f"instability_{variant}"], rel=1e-9)
            assert all(np.isfinite(b[n]) for n in ("centre", "mean_position", "random")), (layer, key)
            assert b["random"] > b["mean_position"], (layer, key)  # random positions know nothing
            beats = b["method"] < min(b["centre"], b["mean_position"], b["random"])
            assert b["beats_baselines"] is beats and ("does NOT beat" in b["verdict"]) is (not beats)
    lb = m["localization_baselines"]
    assert lb["method"] == pytest.approx(m["fewshot_normalized_distance_nodes"], rel=1e-9)
    assert lb["filters"] == pytest.approx(m["fewshot_normalized_distance_filters"], rel=1e-9)
    for name in ("image_blind", "centre", "random"):
        assert np.isfinite(lb[name]) and lb[name] != pytest.approx(lb["method"], rel=1e-6), name
    # the image-blind predictor uses the shots' landmarks, so it beats random guessing on the same test images
    assert lb["image_blind"] < lb["random"]
    beats = lb["method"] < min(lb["image_blind"], lb["centre"], lb["random"])
    assert lb["beats_baselines"] is beats and ("does NOT beat" in lb["verdict"]) is (not beats)


def test_seed_moves_the_nodes_not_the_filters(runs):
    a, b = runs["base"]["metrics"], runs["seed1"]["metrics"]
    assert a["instability_graph_nodes"] != pytest.approx(b["instability_graph_nodes"], rel=1e-6)
    # the raw filters do not depend on the graph's seed: same images, same maps, same number
    assert a["instability_graph_filters"] == pytest.approx(b["instability_graph_filters"], rel=1e-9)
    for layer in ("bn3", "bn4"):
        for key in ("filters_graph", "filters_icnn"):
            ba, bb = a["instability_baselines"][layer][key], b["instability_baselines"][layer][key]
            assert ba["method"] == pytest.approx(bb["method"], rel=1e-9)
            assert ba["centre"] == pytest.approx(bb["centre"], rel=1e-9)


def test_layers_setting_picks_the_layers_scored(runs):
    base, top = runs["base"]["metrics"], runs["top_only"]["metrics"]
    assert set(top["per_layer"]) == set(top["instability_baselines"]) == {"bn4"}
    assert [x["name"] for x in runs["top_only"]["layers"]] == ["bn4"]
    # the same layer's raw filters (same images, same normalized maps) score the same in both runs
    for variant in ("graph", "icnn"):
        assert top["per_layer"]["bn4"]["filters"][f"instability_{variant}"] == pytest.approx(
            base["per_layer"]["bn4"]["filters"][f"instability_{variant}"], rel=1e-9)
    assert top["instability_graph_filters"] != pytest.approx(base["instability_graph_filters"], rel=1e-6)


def test_randomized_backbone_changes_the_maps_and_is_fingerprinted(runs):
    base, rnd = runs["base"], runs["random"]
    assert rnd["randomize_backbone"] is True and base["randomize_backbone"] is False
    assert rnd["metrics"]["instability_graph_filters"] != pytest.approx(base["metrics"]["instability_graph_filters"],
                                                                        rel=1e-6)
    assert "localization_baselines" in rnd["metrics"]
    # part of the graph stage's fingerprint: flipping it recomputes the graph instead of reusing the saved one
    for name, flag in (("base", False), ("random", True)):
        record = json.loads((runs["dir"].parent / name / "config.json").read_text())
        assert record["stages"]["graph"]["fields"]["randomize_backbone"] is flag


# Node / raw-filter ratios at this module's setting (random-init convnet 8-16-16-16, 40 articulated lamp crops, 2 EM
# iterations) over graph seeds 0, 1, 2: instability per layer and code variant 0.61-0.74 (mean 0.69), 3-shot
# distance 0.78-0.79. On the tiny preset's trained backbones (3 seeds, experiments/README.md "Explanatory graph")
# the nodes are ~2x more stable than raw filters as well, and on re-initialized weights too: the direction is real
# but mostly structural (a node's window around its learned centre), and neither beats a unit fixed at the centre.
NODE_FILTER_RATIO_MAX = 0.85  # worst seed 0.74 + a margin of ~5 seeds' spreads (0.02)
FEWSHOT_RATIO_MAX = 0.9  # worst seed 0.79 + 0.1


@pytest.mark.parametrize("run_name", ["base", "seed1"])
def test_nodes_move_less_than_raw_filters_and_localize_better(runs, run_name):
    m = runs[run_name]["metrics"]
    for layer, entry in m["per_layer"].items():
        for variant in ("graph", "icnn"):
            nodes, filters = entry["nodes"][f"instability_{variant}"], entry["filters"][f"instability_{variant}"]
            assert nodes < NODE_FILTER_RATIO_MAX * filters, (layer, variant, nodes, filters)
    nodes, filters = m["fewshot_normalized_distance_nodes"], m["fewshot_normalized_distance_filters"]
    assert nodes < FEWSHOT_RATIO_MAX * filters, (nodes, filters)
