"""Packaging: a wheel built from the repository installs and runs in a fresh venv; TFDS is an optional extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import jinterp

ROOT = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    # The tests run with PYTHONPATH at the source tree; the installed wheel must be what runs.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def test_one_version_source_and_license_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jinterp.__version__"}
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    for dep in project["dependencies"]:  # ranges, never exact pins, so jinterp installs into an existing JAX env
        assert "==" not in dep, dep
    assert not any("tensorflow" in d or "array-record" in d for d in project["dependencies"])
    assert any(d.startswith("tensorflow-datasets") for d in project["optional-dependencies"]["tfds"])


def test_constraints_pin_every_dependency_inside_its_range():
    """constraints.txt (what `make setup` installs) satisfies pyproject's ranges, so the two cannot drift apart."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]
    for text in reqs:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_tfds_is_imported_only_by_its_reader(tmp_path):
    """Without the tfds extra: importing jinterp and its commands works; the tfds: reader and prepare_synthparts
    give a one-line error naming the extra."""
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None\n"  # makes `import tensorflow_datasets` fail
        "import jinterp, jinterp.cli, jinterp.data, jinterp.core.train_backbone\n"
        "for m in ('cladec', 'csg', 'basis', 'graph', 'explainer'):\n"
        "    __import__(f'jinterp.methods.{m}.program')\n"
        "from jinterp._extras import MissingExtraError\n"
        "calls = (lambda: jinterp.data.load('tfds:mnist', 'train'), lambda: jinterp.data.prepare_synthparts('x'))\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except MissingExtraError as e:\n"
        "        print(e)\n"
        "rc = jinterp.cli.main(['train-backbone', '--config', 'tiny', '--data', 'tfds:mnist', '--workdir', 'w'])\n"
        "print('rc', rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("tfds:mnist needs TensorFlow Datasets") and "pip install 'jinterp[tfds]'" in lines[0]
    assert lines[1].startswith("prepare_synthparts needs TensorFlow Datasets")
    assert lines[2] == "rc 2" and "jinterp: error: tfds:mnist needs TensorFlow Datasets" in r.stderr


def _stack_without_jinterp(tmp: Path) -> Path:
    """A directory of links to the packages the running interpreter sees (its site-packages and whatever .pth
    files added), minus jinterp itself and .pth hooks: the fresh venv gets the installed stack, not the source."""
    stack = tmp / "stack"
    stack.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for d in map(Path, sys.path):
        d = d.resolve() if d.is_dir() else d
        if not d.is_dir() or d == ROOT or ROOT in d.parents or d == stdlib or stdlib in d.parents:
            continue
        for entry in d.iterdir():
            name = entry.name.lower()
            if name.startswith(("jinterp", "__editable__")) or name.endswith(".pth") or (stack / entry.name).exists():
                continue
            (stack / entry.name).symlink_to(entry)
    return stack


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):  # ~25 s on the 2-core CPU under load
    # Build from a copy: building in place would leave build/ and *.egg-info in the source tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "jinterp", src / "jinterp", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    # `python -m build --wheel` runs the same PEP 517 backend; pip does it offline with the installed setuptools.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-w", str(dist)], capture_output=True, text=True, timeout=600, env=_clean_env())
    assert built.returncode == 0, built.stderr[-3000:]
    assert "project.license" not in built.stderr + built.stdout  # setuptools' deprecation warning is gone
    wheels = list(dist.glob("jinterp-*.whl"))
    assert [w.name for w in wheels] == [f"jinterp-{jinterp.__version__}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
        meta = z.read(f"jinterp-{jinterp.__version__}.dist-info/METADATA").decode()
    assert f"jinterp-{jinterp.__version__}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in meta and "Provides-Extra: tfds" in meta
    assert not any(n.startswith(("tests/", "experiments/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    child_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    (Path(child_site) / "stack.pth").write_text(str(_stack_without_jinterp(tmp_path)) + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           str(wheels[0])], capture_output=True, text=True, timeout=300, env=_clean_env())
    assert inst.returncode == 0, inst.stderr[-3000:]

    exe = env_dir / "bin" / "jinterp"
    run = lambda *a: subprocess.run([str(exe), *a], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                                    env=_clean_env())
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"jinterp {jinterp.__version__}", version.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "train-backbone" in helped.stdout and "cladec" in helped.stdout, helped.stderr
    where = subprocess.run([str(py), "-c", "import jinterp; print(jinterp.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=_clean_env())
    assert where.stdout.strip().startswith(str(env_dir)), where  # the wheel's copy ran, not the source tree
