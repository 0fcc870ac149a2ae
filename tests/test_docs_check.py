"""README.md's `jinterp` commands work as written (the check `make docs-check` runs: tools/docs_check.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs_check():
    spec = importlib.util.spec_from_file_location("docs_check", ROOT / "tools" / "docs_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["docs_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("docs_check", None)


def test_readme_commands_work_as_written(docs_check):
    commands, problems = docs_check.check_file(ROOT / "README.md")
    assert problems == []
    texts = [c.text for c in commands]
    # The quick-start table (tiny presets) and the command-line block are both covered.
    for method in ("explainer", "graph", "basis", "cladec", "csg"):
        assert any(t.startswith(f"jinterp {method} --config tiny") for t in texts), method
    assert "jinterp --help" in texts and "jinterp bench --help" in texts


def test_experiments_readme_commands_work_as_written(docs_check):
    commands, problems = docs_check.check_file(ROOT / "experiments" / "README.md")
    assert problems == [] and len(commands) >= 5


GOOD = "jinterp cladec --config tiny --layer relu3 --set alphas=0,0.01"
BROKEN = {
    "jinterp cladec --layer relu3": "give the preset explicitly",
    "jinterp cladec --config paper --layer relu3": "relu3 is not a layer of vgg11_bn_cladec",
    "jinterp graph --config tiny --layers bn3,bn9": "bn9 is not a layer of convnet",
    "jinterp explainer --config tiny --arch resnet20 --layer relu3 --target layer3": "relu3 is not a layer of resnet20",
    "jinterp cladec --config tiny --set freeze=conv1,conv2": "unknown config key 'freeze' for ClaDecConfig",
    "jinterp csg --config tiny --set optim.lr=0.1": "unknown config key 'optim.lr' for CSGConfig",
    "jinterp csg --config tiny --set seed=abc": "cannot set seed='abc'",
    "jinterp train-backbone --config tiny --set optim.lr=-1": "optim.lr must be > 0",
    "jinterp cladec --config tiny --alphas 0.1": "does not parse: .*unrecognized arguments: --alphas",
    "jinterp demo --set seed=1": "jinterp demo takes no --set",
    "jinterp demo [--quick]": "has a placeholder",
    "jinterp nosuch --help": "does not parse: .*invalid choice: 'nosuch'",
}


def test_checker_flags_each_kind_of_broken_command(docs_check):
    import re

    assert docs_check.check_command(GOOD) == []
    for text, expected in BROKEN.items():
        problems = docs_check.check_command(text)
        assert any(re.search(expected, p) for p in problems), (text, problems)


def test_commands_are_found_in_code_blocks_tables_and_prose(docs_check):
    md = ("Use `jinterp` like this:\n\n```bash\n$ jinterp csg --config tiny   # comment\nmake demo\n```\n\n"
          "| a | `jinterp basis --config tiny\n--layer relu4` |\n\n```python\nimport jinterp\n```\n")
    found = [(c.line, c.text) for c in docs_check.extract_commands(md)]
    assert found == [(4, "jinterp csg --config tiny"), (8, "jinterp basis --config tiny --layer relu4")]


def test_cheap_commands_run_for_real(docs_check):
    assert docs_check.check_command("jinterp --version") == []
    # --help of a command that fails to build its parser would exit non-zero; a bad option fails to parse.
    assert docs_check.check_command("jinterp graph --help") == []
