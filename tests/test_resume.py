"""A training run killed with SIGKILL resumes, with the same command, after its last epoch."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from keras_dense.data import convert_shapes

from data_fixtures import write_tiny_unet_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 10
STEPS = 2


def _recipe(root: pathlib.Path) -> pathlib.Path:
    return write_tiny_unet_recipe(
        root / "tiny.toml", root, EPOCHS, STEPS, learning_rate=0.01, image_summaries=1
    )


def _iterations(weights_file: pathlib.Path) -> int:
    """The optimizer's step counter stored in a `.weights.h5` backup."""
    with h5py.File(weights_file, "r") as f:
        values = [np.asarray(f["optimizer"]["vars"][k]) for k in f["optimizer"]["vars"]]
    counters = [int(v) for v in values if v.shape == () and v.dtype.kind in "iu"]
    assert counters, "no integer step counter in the optimizer state"
    return max(counters)


def test_sigkill_then_same_command_resumes(tmp_path):
    convert_shapes(str(tmp_path / "train"), 12, size=32, seed=0, progress=False)
    convert_shapes(str(tmp_path / "val"), 4, size=32, seed=1, progress=False)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "keras_dense.cli",
        "train",
        str(_recipe(tmp_path)),
        "--output",
        str(out),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    state_file = out / "backup" / "state.json"
    first = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    killed_after = None
    while time.monotonic() < deadline and first.poll() is None:
        if state_file.is_file():
            killed_after = json.loads(state_file.read_text())["epoch"]
            os.kill(first.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    stderr = first.communicate(timeout=60)[1]
    if killed_after is None:
        pytest.fail(f"no backup appeared before the run ended:\n{stderr[-3000:]}")
    assert first.returncode == -signal.SIGKILL
    saved = json.loads(state_file.read_text())["epoch"]
    assert 1 <= saved < EPOCHS, "the run was killed after its first saved epoch, before the end"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {out} after epoch {saved} of {EPOCHS}" in second.stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    # Every epoch exactly once: the finished ones kept, none repeated, none lost.
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    state = json.loads(state_file.read_text())
    assert state["epoch"] == EPOCHS
    # The optimizer state was restored too: the step counter covers every epoch.
    assert _iterations(out / "backup" / state["weights"]) == EPOCHS * STEPS
    assert (out / "best.keras").is_file() and (out / "best.json").is_file()
    assert not [p for p in out.rglob("*") if "tmp-" in p.name]
