"""Two worker processes on localhost (MultiWorkerMirroredStrategy, CPU) end with equal weights."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import h5py
import numpy as np

from keras_dense.data import convert_shapes

from data_fixtures import write_tiny_unet_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _datasets(weights_file: pathlib.Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(weights_file, "r") as f:
        f.visititems(
            lambda name, obj: (
                arrays.__setitem__(name, np.asarray(obj)) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return arrays


def test_two_workers_train_to_identical_weights(tmp_path):
    # Two shards per split: the dataset is sharded by file, one per worker.
    convert_shapes(str(tmp_path / "train"), 16, size=32, seed=0, num_shards=2, progress=False)
    convert_shapes(str(tmp_path / "val"), 4, size=32, seed=1, num_shards=2, progress=False)
    recipe = write_tiny_unet_recipe(
        tmp_path / "mw.toml",
        tmp_path,
        epochs=2,
        steps_per_epoch=2,
        learning_rate=0.05,
        momentum=0.9,
    )
    out = tmp_path / "run"
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(config),
            TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
            PYTHONPATH=str(REPO),
        )
        command = [sys.executable, "-m", "keras_dense.cli", "train", str(recipe)]
        processes.append(
            subprocess.Popen(
                [*command, "--output", str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=240)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-4000:]
    chief = out / "backup" / "epoch-00002.weights.h5"
    other = out / ".worker-worker-1" / "backup" / "epoch-00002.weights.h5"
    a, b = _datasets(chief), _datasets(other)
    assert a.keys() == b.keys() and any(k.startswith("layers/") for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Both trained the same 4 steps (2 epochs x 2), and the weights moved from their start.
    counters = [int(v) for k, v in a.items() if k.startswith("optimizer") and v.shape == ()]
    assert 4 in counters
    assert (out / "best.keras").is_file() and (out / "metrics.csv").is_file()
