"""Fixtures for the model-conversion tests: the PyTorch families, loaded only when torch is installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def families(torch):
    """``tests/models/torch_families.py`` as a module (by path: test folders are not packages)."""
    name = "jinterp_tests_models_torch_families"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("torch_families.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
