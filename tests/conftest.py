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


@pytest.fixture(scope="session")
def shapes32(tmp_path_factory) -> pathlib.Path:
    """Synthetic shapes shards at 32 px: `train-*` (16 images, seed 0), `val-*` (4, seed 1).

    One set for the whole session: the training tests only need a few small, valid shards.
    """
    from keras_dense.data import convert_shapes

    root = tmp_path_factory.mktemp("shapes32")
    convert_shapes(str(root / "train"), 16, size=32, seed=0, progress=False)
    convert_shapes(str(root / "val"), 4, size=32, seed=1, progress=False)
    return root
