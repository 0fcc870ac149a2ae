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
