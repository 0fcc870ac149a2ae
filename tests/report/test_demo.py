"""`jinterp demo --quick`: every method runs on one trained ConvNet and the report renders (the README's first
command, shrunk). Also the demo's argument checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jinterp import cli
from jinterp.report import demo
from jinterp.report.screenshot import find_chromium, screenshot

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_demo_runs_every_method_and_renders(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user runs it
    r = subprocess.run([sys.executable, "-m", "jinterp.cli", "demo", "--quick", "--workdir", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {m: v["status"] for m, v in summary["methods"].items()} == {m: "ok" for m in demo.METHODS}
    assert summary["backbone"]["test_accuracy"] > 1 / 6 + 0.2  # the ConvNet learned synthparts' 6 classes
    for m in demo.METHODS:
        results = json.loads((tmp_path / summary["methods"][m]["results"]).read_text())
        assert results, m
    html = (tmp_path / "report.html").read_text()
    assert html.count("<h2>") >= len(demo.METHODS) + 1 and html.count("data:image/png;base64,") >= len(demo.METHODS)
    assert "class='status failed'" not in html
    if find_chromium() is None:
        pytest.skip("report written and checked; headless Chromium absent, so not rendered")
    png = screenshot(tmp_path / "report.html", tmp_path / "report.png", width=1200, height=3000)
    px = np.asarray(Image.open(png).convert("RGB"), np.float32)
    assert (px.min(axis=-1) < 200).mean() > 0.02 and px.std() > 20  # text, tables and figures, not a blank page


def test_demo_rejects_bad_arguments(capsys, tmp_path):
    code = cli.main(["demo", "--workdir", str(tmp_path), "--methods", "cladec,nonsense"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown ['nonsense']" in err and "explainer,graph,basis,cladec,csg" in err
    code = cli.main(["demo", "--workdir", str(tmp_path), "--weights", "model.th"])
    err = capsys.readouterr().err
    assert code == 2 and "--arch" in err
    code = cli.main(["demo", "--workdir", str(tmp_path), "--set", "lr=1"])
    assert code == 2 and "takes no --set" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started


def test_methods_needing_annotations_are_skipped_with_a_reason():
    class NoAnnotations:
        landmarks = None
        masks = {}

    assert demo._missing("graph", NoAnnotations()) == ["landmarks"]
    assert demo._missing("basis", NoAnnotations()) == ["masks"]
    assert demo._missing("cladec", NoAnnotations()) == []


def test_synthparts_spec_gets_the_demo_sizes():
    s = demo.DemoSettings(quick=True, seed=3)
    assert s.data_spec() == "synthparts:size=64,n_train=800,n_test=200,seed=3"
    assert demo.DemoSettings(data="synthparts:n_train=50").data_spec().startswith("synthparts:n_train=50,size=64")
    assert demo.DemoSettings(data="npz:x.npz").data_spec() == "npz:x.npz"


def test_user_weights_are_converted_and_scored(shared_dir, tmp_path):
    """`jinterp demo --weights resnet20-12fca82f.th --arch resnet20 --data npz:cifar10_subset.npz`: the PyTorch
    checkpoint is converted once into the workdir and its accuracy on the given data is the published one."""
    pytest.importorskip("torch")
    s = demo.DemoSettings(data=f"npz:{shared_dir / 'data' / 'cifar10_subset.npz'}", arch="resnet20",
                          weights=str(shared_dir / "weights" / "resnet20-12fca82f.th"), image_size=32)
    info = demo.prepare_backbone(s, tmp_path, progress=False)
    assert info["arch"] == "resnet20" and info["converted_from"] == "pytorch"
    assert Path(info["weights"]).is_file() and Path(info["weights"]).parent == tmp_path / "backbone"
    assert info["test_accuracy"] == pytest.approx(0.9173, abs=0.002)  # 776 / 846, as PyTorch scores it
    cfg = demo.method_config("cladec", s, info)  # the ConvNet layer names of the tiny preset are replaced
    assert cfg.layers == ("layer3",) and cfg.arch == "resnet20" and cfg.weights == info["weights"]
