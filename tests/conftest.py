"""Shared fixtures: where the real data sets live."""

import os
from pathlib import Path

import pytest


def real_data_root() -> Path | None:
    """Return $KDKIT_DATA, else the ../shared/data beside the repository, if it exists."""
    env = os.environ.get("KDKIT_DATA")
    cand = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = real_data_root()
    if root is None or not (root / "mnist").is_dir():
        pytest.skip("real data not found: set KDKIT_DATA to the shared data directory")
    return root
