"""Helpers shared by the tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: float = 300) -> str:
    """Runs `code` in a fresh Python process and returns its stdout (raises on failure)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed:\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout


def keras_roundtrip_in_subprocess(model, inputs, tmp_path, atol: float = 1e-6) -> None:
    """Saves `model` as .keras, reloads it in a fresh process (safe mode) and compares outputs.

    Args:
        model: A built Keras model.
        inputs: A NumPy array or a list of arrays fed to the model.
        tmp_path: A pytest tmp_path.
        atol: Absolute tolerance of the comparison.
    """
    path = tmp_path / "model.keras"
    model.save(path)
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    np.savez(tmp_path / "inputs.npz", *arrays)
    expected = model.predict([*arrays] if len(arrays) > 1 else arrays[0], verbose=0)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    run_python(
        f"""
        import numpy as np, keras, keras_dense
        data = np.load({str(tmp_path / "inputs.npz")!r})
        arrays = [data[f"arr_{{i}}"] for i in range(len(data.files))]
        model = keras.models.load_model({str(path)!r})
        out = model.predict(arrays if len(arrays) > 1 else arrays[0], verbose=0)
        out = out if isinstance(out, (list, tuple)) else [out]
        np.savez({str(tmp_path / "outputs.npz")!r}, *out)
        """
    )
    got = np.load(tmp_path / "outputs.npz")
    assert len(got.files) == len(expected)
    for i, exp in enumerate(expected):
        np.testing.assert_allclose(got[f"arr_{i}"], exp, atol=atol)
