"""Helpers shared by the tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: float = 300, pythonpath: str | os.PathLike | None = None) -> str:
    """Runs `code` in a fresh Python process and returns its stdout (raises on failure).

    `pythonpath` (default: the repository) is where the process imports `keras_dense` from.
    """
    path = str(REPO_ROOT if pythonpath is None else pythonpath)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
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


def flat_outputs(outputs) -> dict:
    """`{name: array}` of a model's outputs (dict keys, or `out{i}` in order)."""
    if isinstance(outputs, dict):
        items = outputs.items()
    elif isinstance(outputs, (list, tuple)):
        items = ((f"out{i}", value) for i, value in enumerate(outputs))
    else:
        items = (("out0", outputs),)
    return {key: np.asarray(keras.ops.convert_to_numpy(value)) for key, value in items}


# Run by `predict_saved_models_in_subprocess`: loads every `NAME.keras` of a folder in safe mode
# and writes its outputs on `NAME.inputs.npz` to `NAME.got.npz` (or the error to NAME.error).
_PREDICT_SAVED_MODELS = """
import pathlib, sys, traceback
import numpy as np, keras
import keras_dense  # what a user does before loading: registers the package's classes

sys.path.insert(0, sys.argv[2])
from helpers import flat_outputs

folder = pathlib.Path(sys.argv[1])
for name in sys.argv[3:]:
    try:
        model = keras.models.load_model(folder / f"{name}.keras", safe_mode=True)
        data = np.load(folder / f"{name}.inputs.npz")
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        out = model(arrays if len(arrays) > 1 else arrays[0], training=False)
        np.savez(folder / f"{name}.got.npz", **flat_outputs(out))
        print(name, type(model).__name__, flush=True)
    except Exception:
        (folder / f"{name}.error").write_text(traceback.format_exc())
"""


def predict_saved_models_in_subprocess(
    folder: pathlib.Path, names: list[str], timeout: float = 600
) -> dict[str, dict | str]:
    """Loads `folder/NAME.keras` for each name in ONE fresh process (`safe_mode=True`).

    The process imports `keras_dense` (as a user does) and nothing else of the test process
    is there. Each model is called (inference) on the arrays of
    `folder/NAME.inputs.npz` (`arr_0`, ... as saved by `np.savez`).

    Args:
        folder: The folder of the files.
        names: The models to load.
        timeout: Seconds the process may take.

    Returns:
        `{name: {output name: array}}`, with `out0, out1, ...` for list or single outputs, or
        `{name: traceback text}` for a model that failed to load or run.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    script = folder / "predict_saved_models.py"
    script.write_text(_PREDICT_SAVED_MODELS)
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(pathlib.Path(__file__).parent), *names],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    results: dict[str, dict | str] = {}
    for name in names:
        got, error = folder / f"{name}.got.npz", folder / f"{name}.error"
        if error.exists():
            results[name] = error.read_text()
        elif got.exists():
            with np.load(got) as data:
                results[name] = {key: data[key] for key in data.files}
        else:
            results[name] = f"no output (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return results


def tiny_faster_rcnn_recipe(path, data_dir, model_lines: str) -> str:
    """Writes a Faster R-CNN recipe for 64 px shapes shards in `data_dir` (2 steps, batch 2).

    Args:
        path: The recipe file to write.
        data_dir: Folder holding `train-*.tfrecord` and `val-*.tfrecord`.
        model_lines: The `[model.kwargs]` lines (TOML).

    Returns:
        The recipe path, as a string.
    """
    text = f"""
task = "detection"
seed = 0
[model]
builder = "faster_rcnn"
[model.kwargs]
{model_lines.strip()}
[data]
train = "{data_dir}/train-*.tfrecord"
validation = "{data_dir}/val-*.tfrecord"
min_size = 64
max_size = 64
max_proposals = 0
[training]
batch_size = 2
epochs = 1
steps_per_epoch = 2
validation_steps = 1
[optimizer]
name = "sgd"
learning_rate = 0.001
momentum = 0.9
"""
    with open(path, "w") as f:
        f.write(text)
    return str(path)
