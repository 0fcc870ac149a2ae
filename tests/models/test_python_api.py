"""Every method (and the demo) from Python on a model object: ``run(cfg, workdir, model=..., variables=...)``.

The model goes through the stage ``--model`` uses (``user_model_stage``) under a label that digests its structure
and variables (``jinterp.models.given``): each method's shortest run finishes on the converted model's layers, and
another parameter value is another fingerprint, so a rerun in the same work directory recomputes instead of
reusing the old model's stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jinterp.core.config import apply_overrides
from jinterp.errors import ConfigError, ModelError
from jinterp.models import given

DATA = "synthparts:size=32,n_train=128,n_test=64"


@pytest.fixture(scope="module")
def net(torch):
    """A small VGG-like PyTorch CNN (6 synthparts classes), random weights, non-trivial BN statistics; module
    paths ``features.0`` … ``features.10``, ``pool``, ``fc``."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
    model.pool = nn.AdaptiveAvgPool2d(1)
    model.flat = nn.Flatten()
    model.fc = nn.Linear(16, 6)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def converted(net, torch):
    from jinterp.models import from_torch

    return from_torch(net, torch.zeros(1, 3, 32, 32))


def _changed(variables, layer="fc"):
    """The same variables with one parameter changed (the head's bias + 1)."""
    params = dict(variables["params"])
    params[layer] = {**params[layer], "bias": params[layer]["bias"] + 1.0}
    return {**variables, "params": params}


def _stages(workdir: Path) -> dict:
    return json.loads((workdir / "config.json").read_text())["stages"]


def _check_recorded(workdir: Path, model, variables) -> str:
    label = _stages(workdir)["backbone"]["fields"]["model"]
    assert label.startswith("python:") and label.endswith("@" + given.digest(model, variables)), label
    return label


def test_label_digests_structure_and_every_variable(converted, net):
    model, variables = converted
    label = given.register(model, variables)
    assert given.register(model, jax.tree.map(np.array, variables)) == label  # the values, not the objects
    assert given.register(model, _changed(variables)) != label
    assert given.register(model, _changed(variables, "features.0")) != label
    other = _changed(variables)
    other["params"]["fc"]["bias"] = variables["params"]["fc"]["bias"]  # back to the original values
    assert given.register(model, other) == label
    assert given.register(net, None) != label and given.register(net, None).startswith("python:torch.nn.")
    assert given.resolve(label)[0] is model


def test_wrong_model_arguments_get_one_line_errors(converted, net, tmp_path):
    from jinterp.methods.basis import BasisConfig, run

    model, variables = converted
    with pytest.raises(ModelError, match="comes with its variables"):
        run(BasisConfig.tiny(), tmp_path / "a", model=model)
    with pytest.raises(ModelError, match="carries its own weights"):
        run(BasisConfig.tiny(), tmp_path / "b", model=net, variables=variables)
    with pytest.raises(ModelError, match="got str"):
        run(BasisConfig.tiny(), tmp_path / "c", model="net.py", variables=None)
    with pytest.raises(ConfigError, match="without a model"):
        run(BasisConfig.tiny(), tmp_path / "d", variables=variables)
    with pytest.raises(ConfigError, match="set cfg.weights=''"):
        run(apply_overrides(BasisConfig.tiny(), ["weights=x.npz"]), tmp_path / "e", model=model,
            variables=variables)
    with pytest.raises(ConfigError, match="another process"):
        from jinterp.models import load_model

        load_model("python:some.Net@0123456789abcdef", image_shape=(8, 8, 3))


def _downstream_reads_backbone(workdir: Path, stage: str) -> None:
    """Stage ``stage`` records the backbone stage's fingerprint (which digests the model) among its inputs."""
    stages = _stages(workdir)
    assert stages[stage]["inputs"]["backbone"] == stages["backbone"]["fingerprint"], stages[stage]["inputs"]


@pytest.mark.slow
def test_explainer_from_python(converted, tmp_path):
    from jinterp.errors import CheckpointError
    from jinterp.methods.explainer import ExplainerConfig, run

    model, variables = converted
    cfg = apply_overrides(ExplainerConfig.tiny(), [f"data={DATA}", "layer=features.5", "target=features.9",
                                                   "steps=3", "sweep_steps=0", "batch_size=16",
                                                   "eval_batch_size=32"])
    w = tmp_path / "ex"
    res = run(cfg, w, progress=False, model=model, variables=variables).to_json()
    assert res["in_shape"] == [32, 32, 16] and res["out_shape"] == [16, 16, 16]
    assert res["performer_unchanged"] and "accuracy_replaced" in res
    label = _check_recorded(w, model, variables)
    assert res["arch"] == label
    _downstream_reads_backbone(w, "explainer")
    # another parameter value: the trained explainer (a resumable stage) is not reused for it, nor overwritten
    changed = _changed(variables)
    with pytest.raises(CheckpointError, match=r"stage 'explainer'.*model: saved 'python:.*@"
                       + given.digest(model, variables) + "' vs now 'python:.*@" + given.digest(model, changed)):
        run(cfg, w, progress=False, model=model, variables=changed)


@pytest.mark.slow
def test_basis_from_python_recomputes_for_another_variable(converted, tmp_path):
    from jinterp.methods.basis import BasisConfig, run

    model, variables = converted
    cfg = apply_overrides(BasisConfig.tiny(), ["data=synthparts:size=32,n_train=120,n_test=60", "layer=features.9",
                                               "n_train=60", "n_test=40", "fit_pixels=1000", "uibe.epochs=1",
                                               "uibe.restarts=1", "batch_size=30", "methods=uibe,natural"])
    w = tmp_path / "ba"
    res = run(cfg, w, progress=False, model=model, variables=variables).to_json()
    assert res["layer"] == "features.9" and res["channels"] == 16
    label = _check_recorded(w, model, variables)
    _downstream_reads_backbone(w, "bases")
    before = _stages(w)
    changed = dict(variables, params={**variables["params"], "features.8": {  # the gated layer's BN shift
        **variables["params"]["features.8"], "bias": variables["params"]["features.8"]["bias"] + 0.5}})
    again = run(cfg, w, progress=False, model=model, variables=changed).to_json()
    after = _stages(w)
    assert _check_recorded(w, model, changed) != label
    assert after["bases"]["fingerprint"] != before["bases"]["fingerprint"]
    assert after["bases"]["started"] >= before["bases"]["finished"]  # recomputed, not reused
    assert again["arch"] != res["arch"]


@pytest.mark.slow
def test_graph_from_python(converted, tmp_path):
    from jinterp.methods.graph import GraphConfig, run

    model, variables = converted
    cfg = apply_overrides(GraphConfig.tiny(), ["layers=features.4,features.8", "num_images=30", "num_negatives=30",
                                               "image_size=32", "stability_units=10", "transfer_top_t=5",
                                               "iterations=2"])
    w = tmp_path / "gr"
    res = run(cfg, w, progress=False, model=model, variables=variables).to_json()
    assert [(ly["name"], ly["map"]) for ly in res["layers"]] == [("features.4", [32, 32, 16]),
                                                                  ("features.8", [16, 16, 16])]
    _check_recorded(w, model, variables)
    _downstream_reads_backbone(w, "graph")


@pytest.mark.slow
def test_cladec_from_python(converted, tmp_path):
    from jinterp.methods.cladec import ClaDecConfig, run

    model, variables = converted
    cfg = apply_overrides(ClaDecConfig.tiny(), ["layers=features.5", "train_size=64", "test_size=32", "epochs=1",
                                                "retrain_epochs=0", "alphas=0,0.1", "batch_size=32",
                                                "eval_batch_size=32", "refae=false"])
    w = tmp_path / "cl"
    res = run(cfg, w, progress=False, model=model, variables=variables).to_json()
    assert res["layers"]["features.5"]["act_shape"] == [32, 32, 16]
    _check_recorded(w, model, variables)
    stages = _stages(w)
    assert stages["cladec:features.5"]["inputs"]["backbone"] == stages["backbone"]["fingerprint"]


@pytest.mark.slow
def test_csg_from_python_trains_the_given_parameters(converted, tmp_path):
    from jinterp.methods.csg import CSGConfig, run

    model, variables = converted
    cfg = apply_overrides(CSGConfig.tiny(), ["gate_layer=features.9", "head=fc", "epochs=3", "warmup_epochs=1",
                                             "mask_period=2", "mask_epoch_min=1", "train_size=100", "test_size=50",
                                             "eval_size=50", "adv_size=8", "pgd_steps=1", "batch_size=25",
                                             "baseline=false", "seeds=1"])
    w = tmp_path / "csg"
    res = run(cfg, w, progress=False, model=model, variables=variables).to_json()
    assert res["gate_layer"] == "features.9" and res["num_filters"] == 16
    _check_recorded(w, model, variables)
    _downstream_reads_backbone(w, "csg")
    trained = np.load(w / "csg_params.npz")
    fc = [k for k in trained.files if k.endswith("fc/kernel")]
    assert fc and not np.allclose(trained[fc[0]], variables["params"]["fc"]["kernel"])


def test_demo_needs_two_layers_of_a_python_model(converted, tmp_path):
    from jinterp.report.demo import DemoSettings, run_demo

    model, variables = converted
    with pytest.raises(ConfigError, match=r"give layers=\(LOW, HIGH\)"):
        run_demo(DemoSettings(quick=True), tmp_path / "d", progress=False, model=model, variables=variables)


@pytest.mark.slow
def test_demo_from_python(converted, tmp_path):
    from jinterp.report.demo import DemoSettings, run_demo

    model, variables = converted
    s = DemoSettings(image_size=32, quick=True, methods=("cladec",), layers=("features.5", "features.9"))
    summary = run_demo(s, tmp_path / "demo", progress=False, model=model, variables=variables)
    assert summary["methods"]["cladec"]["status"] == "ok", summary["methods"]
    assert summary["settings"]["model"].endswith("@" + given.digest(model, variables))
    res = json.loads((tmp_path / "demo" / summary["methods"]["cladec"]["results"]).read_text())
    assert res["layers"]["features.5"]["act_shape"] == [32, 32, 16]
