"""Shared pytest fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_datasets_dir() -> pathlib.Path | None:
    """Returns the shared data-set folder ($KERAS_DENSE_DATA or ../shared/datasets) if present."""
    candidates = []
    if os.environ.get("KERAS_DENSE_DATA"):
        candidates.append(pathlib.Path(os.environ["KERAS_DENSE_DATA"]))
    candidates.append(REPO_ROOT.parent / "shared" / "datasets")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_datasets() -> pathlib.Path:
    """The real data sets; skips the test when they are not on this machine."""
    path = shared_datasets_dir()
    if path is None:
        pytest.skip(
            "real data sets not found: set KERAS_DENSE_DATA or place them at ../shared/datasets"
        )
    return path
