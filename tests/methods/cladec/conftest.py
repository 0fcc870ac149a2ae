"""Fixtures for the ClaDec tests: the PyTorch reference (``experiments/bench/torch_cladec.py``), loaded by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tcl(torch):
    name = "jinterp_tests_torch_cladec"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / "bench" / "torch_cladec.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
