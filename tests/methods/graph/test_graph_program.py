"""The explanatory-graph program end to end on a small synthparts run, the crop helper, the config and the CLI."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jinterp.core.config import apply_overrides
from jinterp.errors import ConfigError
from jinterp.methods.graph import GraphConfig, layer_geom, learn_graph
from jinterp.methods.graph import program as prog


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialized convnet saved like train-backbone's params.npz (the program only needs features)."""
    from jinterp import backbones
    from jinterp.backbones import torch_import

    model = backbones.create("convnet", 6, widths=(8, 16, 16, 16))
    v = backbones.init(model, jax.random.PRNGKey(0), (64, 64, 3))
    path = tmp_path_factory.mktemp("bb") / "params.npz"
    torch_import.save_variables(path, jax.tree.map(np.asarray, v),
                                {"arch": "convnet", "num_classes": 6, "config": {"widths": [8, 16, 16, 16]}})
    return str(path)


@pytest.mark.slow
def test_program_end_to_end(tmp_path, weights):
    cfg = dataclasses.replace(GraphConfig.tiny(), weights=weights, num_images=40, num_negatives=30, iterations=2,
                              stability_units=20)
    res = prog.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    m = res["metrics"]
    assert saved["metrics"]["instability_graph_nodes"] == pytest.approx(m["instability_graph_nodes"])
    for key in ("instability_graph_nodes", "instability_graph_filters", "instability_icnn_nodes",
                "fewshot_normalized_distance_nodes", "fewshot_normalized_distance_filters"):
        assert np.isfinite(m[key]) and 0 <= m[key] < 1, key
    g = np.load(tmp_path / "graph.npz")
    assert g["layer0_parents"].shape == (16, 13, 15) and "layer1_parents" not in g
    assert np.isfinite(g["layer0_pos_record"]).all() and g["layer0_prob_record"].mean() == pytest.approx(1, rel=1e-4)
    assert all((tmp_path / "figures" / f).exists() for f in ("graph_patches_bn3.png", "graph_positions_bn4.png"))


@pytest.mark.parametrize("faithful", [False, True])
def test_learn_graph_both_modes_on_random_maps(faithful):
    cfg = dataclasses.replace(GraphConfig.tiny(), faithful=faithful, iterations=3)
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(12, 16, 16, 3)).astype(np.float32), rng.normal(size=(12, 8, 8, 3)).astype(np.float32)]
    geoms = [layer_geom(cfg, i, m.shape[1:], 64) for i, m in enumerate(maps)]
    layers = learn_graph(maps, geoms, cfg)
    bottom, top = layers
    m = bottom.parents.shape[-1]  # min(top_n, pool): 21 upper nodes, half dropped as low-variance, some at borders
    assert bottom.parents.shape[:2] == (3, 13) and 1 <= m <= 10 and top.parents is None
    assert bottom.parents.max() < top.geom.num_nodes
    assert np.all((bottom.sigma >= geoms[0].sigma_min - 1e-6) & (bottom.sigma <= geoms[0].sigma_max + 1e-6))
    assert bottom.positions_px().shape == (12, 39, 2) and len(bottom.edges()) == 39 * m
    assert all(np.isfinite(h["mean_shift"]) for ly in layers for h in ly.history)


def test_crop_to_boxes_and_object_boxes():
    img = np.zeros((1, 8, 8, 1), np.uint8)
    img[0, 2:6, 4:8] = 200
    boxes = prog.object_boxes(img[..., 0])
    np.testing.assert_array_equal(boxes, [[4, 2, 8, 6]])
    crop = prog.crop_to_boxes(img, boxes, 4)
    assert crop.shape == (1, 4, 4, 1) and np.all(crop == 200)


def test_config_validation_and_presets():
    for cfg in (GraphConfig.paper(), GraphConfig.tiny(), GraphConfig.resnet20()):
        cfg.validate()
    assert GraphConfig.paper().layers == ("conv4_2", "conv4_3", "conv5_2", "conv5_3")
    with pytest.raises(ConfigError, match="density"):
        apply_overrides(GraphConfig.tiny(), ["density=0.1"])
    with pytest.raises(ConfigError, match="top_n"):
        apply_overrides(GraphConfig.tiny(), ["top_n=0,0"])


def test_cli_parses_graph_options():
    from jinterp import cli

    parser = cli.build_parser()
    args = parser.parse_args(["graph", "--config", "tiny", "--layers", "bn2,bn3,bn4", "--faithful"])
    assert args.layers == "bn2,bn3,bn4" and args.faithful
    from jinterp.methods.graph.cli import _fit

    assert _fit((15, 15, 15), 1) == (15,) and _fit((0.05, 0.1), 3) == (0.05, 0.05, 0.1)


def test_synthparts_reader_takes_the_rigid_and_articulated_presets():
    from jinterp import data

    rigid = data.load("synthparts:size=32,n_train=4,n_test=6,preset=rigid", "test")
    default = data.load("synthparts:size=32,n_train=4,n_test=6", "test")
    moved = data.load("synthparts:size=32,n_train=4,n_test=6,preset=articulated", "test")
    np.testing.assert_array_equal(rigid.images, default.images)  # rigid is the default generator by name
    assert moved.landmarks is not None and not np.array_equal(moved.images, default.images)
    with pytest.raises(ConfigError, match="articulated"):
        data.load("synthparts:size=32,n_train=4,n_test=6,preset=wobbly", "test")
