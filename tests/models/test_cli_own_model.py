"""Every method from the command line on a user's own PyTorch CNN (``--model net.py:build --weights net.pth``).

The network is written here as a user would (a ``net.py`` with a ``build()`` factory, random weights saved as a
state dict); each method's shortest run must finish, read the named layers of *that* model (their shapes are
the converted model's, not a built-in arch's) and record the model in its results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A VGG-like CNN: conv-BN-ReLU blocks with max pools, global average pooling, one linear head (6 synthparts
# classes). Module paths: features.0 … features.10, pool, fc.
NET_SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=6, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build():
    torch.manual_seed(0)
    return Net()
'''

DATA = "synthparts:size=32,n_train=128,n_test=64"


def write_user_model(folder: Path, source: str = NET_SOURCE) -> tuple[Path, Path]:
    """``(net.py, net.pth)``: the factory file and a state dict of its (random, BN statistics perturbed) weights."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "net.py"
    file.write_text(source)
    scope: dict = {}
    exec(compile(source, str(file), "exec"), scope)  # noqa: S102 - the test's own source
    net = scope["build"]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics: eval mode must use them
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    weights = folder / "net.pth"
    torch.save(net.state_dict(), weights)
    return file, weights


@pytest.fixture(scope="module")
def user_model(torch, tmp_path_factory) -> tuple[str, str]:
    file, weights = write_user_model(tmp_path_factory.mktemp("own_model"))
    return f"{file}:build", str(weights)


def test_edits_replace_a_named_layer_downstream(torch, tmp_path):
    """The hook the explainer (reconstruction fed back) and CSG (gate) use on a converted model: the edited value
    is what every later layer sees, and a replacement of another shape is refused."""
    import jax.numpy as jnp
    import numpy as np

    from jinterp.errors import ShapeError
    from jinterp.models import load_model

    file, weights = write_user_model(tmp_path)
    model, variables, _ = load_model(f"{file}:build", str(weights), image_shape=(16, 16, 3))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)), jnp.float32)
    logits, feats = model.apply(variables, x, train=False)
    edited, efeats = model.apply(variables, x, train=False, edits={"features.9": jnp.zeros_like})
    np.testing.assert_allclose(edited, np.broadcast_to(variables["params"]["fc"]["bias"], edited.shape), atol=1e-6)
    assert float(jnp.abs(efeats["features.9"]).max()) == 0.0 and float(jnp.abs(logits - edited).max()) > 1e-4
    doubled, _ = model.apply(variables, x, train=False, edits={"features.9": lambda a: 2 * a})
    np.testing.assert_allclose(doubled, 2 * logits - variables["params"]["fc"]["bias"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError, match="replacement of layer 'features.9'"):
        model.apply(variables, x, train=False, edits={"features.9": lambda a: a[:, :2]})


def run_cli(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "jinterp.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def _backbone_stage(workdir: Path) -> dict:
    return json.loads((workdir / "config.json").read_text())["stages"]["backbone"]


def _run_ok(*argv: str) -> subprocess.CompletedProcess:
    p = run_cli(*argv, "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_explainer_on_own_model(user_model, tmp_path):
    spec, weights = user_model
    w = tmp_path / "ex"
    _run_ok("explainer", "--config", "tiny", "--model", spec, "--weights", weights, "--layer", "features.5",
            "--target", "features.9", "--data", DATA, "--workdir", str(w), "--set", "steps=3",
            "--set", "sweep_steps=0", "--set", "batch_size=16", "--set", "eval_batch_size=32")
    res = _results(w)
    assert res["arch"] == spec and (res["layer"], res["target"]) == ("features.5", "features.9")
    assert res["in_shape"] == [32, 32, 16] and res["out_shape"] == [16, 16, 16]  # the converted model's maps
    assert res["performer_unchanged"] and "accuracy_replaced" in res  # the reconstruction fed back into it
    assert _backbone_stage(w)["fields"]["model"] == spec


@pytest.mark.slow
def test_graph_on_own_model(user_model, tmp_path):
    spec, weights = user_model
    w = tmp_path / "gr"
    _run_ok("graph", "--config", "tiny", "--model", spec, "--weights", weights, "--layers", "features.4,features.8",
            "--workdir", str(w), "--set", "num_images=30", "--set", "num_negatives=30", "--set", "image_size=32",
            "--set", "stability_units=10", "--set", "transfer_top_t=5", "--set", "iterations=2")
    res = _results(w)
    assert [(ly["name"], ly["map"]) for ly in res["layers"]] == [("features.4", [32, 32, 16]),
                                                                  ("features.8", [16, 16, 16])]


@pytest.mark.slow
def test_basis_on_own_model(user_model, tmp_path):
    spec, weights = user_model
    w = tmp_path / "ba"
    _run_ok("basis", "--config", "tiny", "--model", spec, "--weights", weights, "--layer", "features.9",
            "--data", "synthparts:size=32,n_train=120,n_test=60", "--workdir", str(w), "--set", "n_train=60",
            "--set", "n_test=40", "--set", "fit_pixels=1000", "--set", "uibe.epochs=1", "--set", "uibe.restarts=1",
            "--set", "batch_size=30", "--set", "methods=uibe,natural")
    res = _results(w)
    assert res["arch"] == spec and res["layer"] == "features.9" and res["channels"] == 16


@pytest.mark.slow
def test_cladec_on_own_model(user_model, tmp_path):
    spec, weights = user_model
    w = tmp_path / "cl"
    _run_ok("cladec", "--config", "tiny", "--model", spec, "--weights", weights, "--layer", "features.5",
            "--workdir", str(w), "--set", "train_size=64", "--set", "test_size=32", "--set", "epochs=1",
            "--set", "retrain_epochs=0", "--set", "alphas=0,0.1", "--set", "batch_size=32",
            "--set", "eval_batch_size=32", "--set", "refae=false")
    res = _results(w)
    assert res["arch"] == spec and res["layers"]["features.5"]["act_shape"] == [32, 32, 16]


@pytest.mark.slow
def test_csg_on_own_model_trains_its_converted_parameters(user_model, tmp_path):
    import numpy as np

    spec, weights = user_model
    w = tmp_path / "csg"
    _run_ok("csg", "--config", "tiny", "--model", spec, "--weights", weights, "--workdir", str(w),
            "--set", "gate_layer=features.9", "--set", "head=fc", "--set", "epochs=3", "--set", "warmup_epochs=1",
            "--set", "mask_period=2", "--set", "mask_epoch_min=1", "--set", "train_size=100", "--set", "test_size=50",
            "--set", "eval_size=50", "--set", "adv_size=8", "--set", "pgd_steps=1", "--set", "batch_size=25",
            "--set", "baseline=false", "--set", "seeds=1")
    res = _results(w)
    assert res["gate_layer"] == "features.9" and res["num_filters"] == 16
    gate = np.load(w / "gate.npy")
    # class-specific: only the classification loss through the gated map separates a filter's class columns (the
    # sparsity penalty and the renormalization treat them alike)
    assert gate.shape == (16, 6) and np.ptp(gate, axis=1).max() > 1e-3
    import torch

    trained = np.load(w / "csg_params.npz")
    fc = [k for k in trained.files if k.endswith("fc/kernel")]
    assert fc, trained.files
    start = torch.load(weights, weights_only=True)["fc.weight"].numpy().T
    assert not np.allclose(trained[fc[0]], start)  # the converted head moved
