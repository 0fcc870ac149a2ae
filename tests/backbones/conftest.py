"""Fixtures for the backbone tests: the PyTorch reference modules, loaded only when torch is installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tref(torch):
    """``tests/backbones/torch_reference.py`` as a module (by path: test folders are not packages)."""
    name = "jinterp_tests_backbones_torch_reference"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("torch_reference.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
