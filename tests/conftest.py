"""Shared test fixtures.

Eight simulated CPU devices for the whole session so sharding tests can run in-process; the flag must be set
before JAX initializes its backend, hence here, at import time of the test session.
"""

from __future__ import annotations

import os
from pathlib import Path

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repository (CI clones it there); JINTERP_SHARED overrides.
SHARED = Path(os.environ.get("JINTERP_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data not available: {SHARED}/data is absent (set JINTERP_SHARED to the shared folder)")
    return SHARED


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")
