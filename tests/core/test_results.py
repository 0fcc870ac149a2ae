"""Typed results beside results.json (issue #17, deliver 5): the dataclasses' JSON round trip, their pytree over
the saved arrays, old/foreign results files refused in one line, and every program's ``run`` → ``load_result``."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jinterp.core import results as R
from jinterp.errors import JinterpError, MissingFileError

GRAPH_JSON = {"method": "graph", "config": {"seed": 0}, "weights": "w.npz", "data": "synthparts", "category": "a",
              "num_images": 3, "randomize_backbone": False, "layers": [{"name": "relu3", "nodes": 4}],
              "graph_file": "graph.npz", "warnings": [], "times": {"total_s": 1.0},
              "metrics": {"instability_graph_nodes": float("nan")}}


def _graph_workdir(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(GRAPH_JSON))
    np.savez(tmp_path / "graph.npz", layer0_coord=np.arange(6.0).reshape(3, 2), layer0_sigma=np.ones(3, np.float32),
             layer_names=np.array(["relu3"]))
    return tmp_path


def test_load_reads_every_key_and_the_numeric_arrays(tmp_path):
    res = R.GraphResult.load(_graph_workdir(tmp_path))
    assert res.category == "a" and res.layers == GRAPH_JSON["layers"] and res.metrics_not_computed is None
    assert R.json_equal(res.to_json(), GRAPH_JSON)  # NaN included; absent optional keys stay absent
    assert "metrics_not_computed" not in res.to_json() and "figures" not in res.to_json()
    assert sorted(res.arrays["graph"]) == ["layer0_coord", "layer0_sigma"]  # the string array stays in the file
    np.testing.assert_array_equal(res.arrays["graph"]["layer0_coord"], np.arange(6.0).reshape(3, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.category = "b"


def test_pytree_leaves_are_the_arrays_and_metadata_is_static(tmp_path):
    res = R.GraphResult.load(_graph_workdir(tmp_path))
    leaves, treedef = jax.tree.flatten(res)
    assert len(leaves) == 2 and all(isinstance(x, np.ndarray) for x in leaves)
    back = jax.tree.unflatten(treedef, leaves)
    assert back == res
    doubled = jax.tree.map(lambda x: x * 2, res)
    assert isinstance(doubled, R.GraphResult) and doubled.category == "a"
    np.testing.assert_array_equal(doubled.arrays["graph"]["layer0_sigma"], 2 * np.ones(3))
    assert doubled != res  # equality looks at the arrays, not only at the JSON
    assert jax.tree.map(np.shape, res).arrays["graph"]["layer0_coord"] == (3, 2)


def test_equality_compares_json_values(tmp_path):
    res = R.GraphResult.load(_graph_workdir(tmp_path))
    other = dataclasses.replace(res, num_images=4)
    assert other != res and dataclasses.replace(other, num_images=3) == res


@pytest.mark.parametrize("edit, word", [
    (lambda d: d.update(old_key=1), "unknown keys ['old_key']"),
    (lambda d: d.pop("layers"), "missing keys ['layers']"),
])
def test_old_or_foreign_results_file_is_one_line_naming_file_and_fix(tmp_path, edit, word):
    d = dict(GRAPH_JSON)
    edit(d)
    (tmp_path / "results.json").write_text(json.dumps(d))
    with pytest.raises(R.ResultsError) as e:
        R.GraphResult.load(tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, JinterpError) and "\n" not in msg
    assert word in msg and str(tmp_path / "results.json") in msg and "rerun `jinterp graph`" in msg


def test_missing_or_corrupt_results_file(tmp_path):
    with pytest.raises(MissingFileError, match="run `jinterp basis` with --workdir"):
        R.BasisResult.load(tmp_path)
    (tmp_path / "results.json").write_text('{"arch": ')
    with pytest.raises(R.ResultsError, match="cannot read .*rerun `jinterp basis`"):
        R.BasisResult.load(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(GRAPH_JSON))  # another method's file
    with pytest.raises(R.ResultsError, match="not a basis results file"):
        R.BasisResult.load(tmp_path)


def test_every_results_class_is_a_frozen_pytree_with_arrays_last():
    for cls in (R.ExplainerResult, R.GraphResult, R.BasisResult, R.ClaDecResult, R.CSGResult,
                R.TrainBackboneResult):
        fields = dataclasses.fields(cls)
        assert fields[-1].name == "arrays" and fields[-1].metadata.get("pytree_node", True)
        assert all(not f.metadata.get("pytree_node", True) for f in fields[:-1]), cls
        assert cls.__dataclass_params__.frozen


# ------------------------------------------------------------------------------ every program: run -> load_result
@pytest.fixture(scope="module")
def convnet_weights(tmp_path_factory):
    from jinterp import backbones
    from jinterp.backbones import torch_import

    widths = (8, 16, 16, 16)
    out = {}
    for size in (32, 64):
        v = backbones.init(backbones.create("convnet", 6, widths=widths), jax.random.PRNGKey(0), (size, size, 3))
        path = tmp_path_factory.mktemp("bb") / f"params{size}.npz"
        torch_import.save_variables(path, jax.tree.map(np.asarray, v),
                                    {"arch": "convnet", "num_classes": 6, "config": {"widths": list(widths)}})
        out[size] = str(path)
    return out


def _configs(w):
    from jinterp.core.config import TrainBackboneConfig, apply_overrides
    from jinterp.methods.basis import BasisConfig, ibd, uibe
    from jinterp.methods.cladec import ClaDecConfig
    from jinterp.methods.csg import CSGConfig
    from jinterp.methods.explainer import ExplainerConfig
    from jinterp.methods.graph import GraphConfig

    return {
        "train_backbone": apply_overrides(TrainBackboneConfig.tiny(), ["steps=3", "train_size=64", "test_size=32",
                                                                       "batch_size=16", "image_size=32"]),
        "graph": dataclasses.replace(GraphConfig.tiny(), weights=w[64], num_images=20, num_negatives=20,
                                     iterations=1, stability_units=10),
        "basis": BasisConfig(weights=w[32], data="synthparts:n_train=24,n_test=12,size=32", layer="relu3",
                             n_train=24, n_test=12, batch_size=12, fit_pixels=1000, figure_directions=1,
                             figure_images=1, uibe=uibe.UIBEConfig(num_directions=8, batch_size=256, epochs=1),
                             ibd=ibd.IBDConfig(epochs=1, max_positives=50, min_positives=2)),
        "cladec": apply_overrides(ClaDecConfig.tiny(), [
            "train_size=64", "test_size=32", "batch_size=32", "epochs=1", "alphas=0,0.1", "layers=relu3",
            "retrain_epochs=0", "grid_rows=2", "eval_batch_size=32", f"weights={w[32]}"]),
        "csg": apply_overrides(CSGConfig.tiny(), [
            "image_size=32", "train_size=100", "test_size=40", "epochs=2", "warmup_epochs=1", "mask_period=2",
            "mask_epoch_min=1", "batch_size=50", "eval_size=40", "adv_size=8", "pgd_steps=1", "n_top_channel=2",
            "widths=4,8,8,8", "seeds=1", "pretrain=false", "baseline=false"]),
        "explainer": dataclasses.replace(
            ExplainerConfig.tiny(), weights=w[32], train_size=64, test_size=32, image_size=32, steps=4,
            batch_size=16, eval_batch_size=32, sweep_steps=0, filters=8, log_every=2, ckpt_every=0,
            num_figure_filters=1, layer="relu3", target="relu4"),
    }


def _check_tensorboard_mirrors_metrics(workdir, program):
    """Under ``--tensorboard`` every metrics.jsonl of a training program has its event files beside it, equal."""
    tbread = pytest.importorskip("tbread")  # tests/core/tbread.py; needs the tensorboard package (dev extra)
    pytest.importorskip("tensorboard")
    logs = sorted(workdir.rglob("metrics.jsonl"))
    assert logs, f"{program} wrote no metrics.jsonl"
    for log in logs:
        if program == "csg":
            got = [(s, t, v) for s, t, v, _ in tbread.tb_scalars(log.parent / "tb")]
            assert got == tbread.csg_jsonl_scalars(log.parent) and got
        else:
            assert tbread.tb_scalars(log.parent / "tb") == tbread.jsonl_scalars(log.parent) != []


@pytest.mark.slow
@pytest.mark.parametrize("program", ["train_backbone", "graph", "basis", "cladec", "csg", "explainer"])
def test_run_returns_the_typed_result_that_load_result_reads_back(program, convnet_weights, tmp_path):
    """Also run with TensorBoard logging on (one end-to-end run serves both): each training program's event files
    equal its metrics.jsonl."""
    import importlib

    from jinterp.core import tensorboard

    module = importlib.import_module("jinterp.core.train_backbone" if program == "train_backbone"
                                     else f"jinterp.methods.{program}")
    cfg = _configs(convnet_weights)[program]
    with tensorboard.logging():
        res = module.run(cfg, tmp_path / "w", progress=False)
    if program in ("train_backbone", "cladec", "csg", "explainer"):
        _check_tensorboard_mirrors_metrics(tmp_path / "w", program)
    assert isinstance(res, R.Result)
    saved = json.loads((tmp_path / "w" / res.RESULTS_FILE).read_text())
    assert R.json_equal(res.to_json(), saved)
    again = module.load_result(tmp_path / "w")
    assert again == res
    leaves = jax.tree.leaves(res)
    assert all(isinstance(x, np.ndarray) for x in leaves)
    if res.ARRAY_FILES:
        assert leaves, f"{program}: no arrays read from {res.ARRAY_FILES}"
    # jax.tree.map reaches exactly the arrays; the metadata rides along
    shapes = jax.tree.map(lambda x: x.shape, res)
    assert jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)) == [x.shape for x in leaves]
    assert R.json_equal(shapes.to_json(), saved)
