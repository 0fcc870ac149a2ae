"""``jinterp bench`` works from the installed package alone (no ``experiments/``, no ``tests/`` beside it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The ``jinterp`` package copied alone into a site folder, as a wheel installs it; env and cwd to run it."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(REPO / "jinterp", site / "jinterp", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path_factory.mktemp("work")
    env = {**os.environ, "PYTHONPATH": str(site)}
    return {"env": env, "cwd": work, "site": site}


def _run(installed, *args, timeout=300):
    return subprocess.run([sys.executable, *args], env=installed["env"], cwd=installed["cwd"], capture_output=True,
                          text=True, timeout=timeout)


def test_bench_help_from_the_installed_package(installed):
    out = _run(installed, "-m", "jinterp.cli", "bench", "--help")
    assert out.returncode == 0, out.stderr
    assert "--only" in out.stdout and "not implemented" not in out.stdout
    listing = _run(installed, "-m", "jinterp.cli", "--help")
    assert "bench" in listing.stdout and "JAX vs PyTorch benchmarks (not implemented" not in listing.stdout


def test_bench_bad_pipeline_is_a_one_line_error(installed, torch):
    out = _run(installed, "-m", "jinterp.cli", "bench", "--only", "nope")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown pipeline" in out.stderr and "backbones" in out.stderr


def test_installed_bench_writes_to_cwd_and_skips_checkout_only_references(installed, torch):
    code = ("from jinterp.bench import harness, backbones\n"
            "print(harness.RESULTS)\n"
            "try:\n    backbones.cases(True)\nexcept harness.BenchUnavailable as e:\n    print('unavailable:', e)\n")
    out = _run(installed, "-c", code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert Path(lines[0]) == installed["cwd"] / "bench-results"
    assert lines[1].startswith("unavailable:") and "torch_reference.py" in lines[1] and "make bench" in lines[1]


def test_checkout_keeps_the_committed_results_folder_and_old_import_paths():
    from experiments.bench import harness as old_harness
    from jinterp.bench import harness

    assert old_harness is harness
    assert harness.RESULTS == REPO / "experiments" / "bench" / "results"


def test_installed_bench_run_reports_the_checkout_only_pipeline(installed, torch):
    import json

    out = _run(installed, "-m", "jinterp.cli", "bench", "--quick", "--only", "backbones", "--no-extras",
               "--no-scaling", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert "not run: backbones" in out.stdout and "no benchmark module yet" not in out.stdout
    saved = json.loads(next((installed["cwd"] / "bench-results" / "tmp").glob("*.json")).read_text())
    assert saved["results"] == [] and "torch_reference.py" in saved["unavailable"]["backbones"]
