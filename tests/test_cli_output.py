"""`keras-dense` output: no TensorFlow C++/absl log lines unless `--verbose`, errors on stderr.

Each command runs in a fresh interpreter (`python -m keras_dense.cli`), since TensorFlow
reads its log level once, when it is first imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keras
import pytest

from keras_dense.apps import unet
from keras_dense.data import SHAPE_CLASSES, convert_shapes
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.native_logs import filtered_native_stderr, is_native_log_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's / absl's log prefixes, the CUDA probe and absl's pre-initialisation notice.
NOISE = re.compile(r"^[IWEF]\d{4} |cuInit|absl::InitializeLog", re.MULTILINE)


def _env() -> dict:
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets one; a user's choice would win
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "keras-dense")


def _run(*args: str, code: str | None = None, script: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "keras_dense.cli"]
    if script:
        command = [CONSOLE_SCRIPT]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=_env(), timeout=240, cwd=REPO
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    convert_shapes(str(root / "val"), 2, size=32, seed=1, progress=False)
    keras.utils.set_random_seed(0)
    model = unet(4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(root / "model.keras")
    model.save(path)
    write_model_card(
        path, {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    )
    return root, path


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_convert_prints_no_tensorflow_noise(tmp_path, script):
    if script and not os.path.isfile(CONSOLE_SCRIPT):
        pytest.skip(f"no console script {CONSOLE_SCRIPT} (package not installed)")
    out = _run(
        "convert", "shapes", "--num-images", "2", "--size", "32", "--output", str(tmp_path / "s"),
        script=script,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not NOISE.search(out.stderr), out.stderr
    assert not NOISE.search(out.stdout), out.stdout
    assert out.stderr == ""
    assert "manifest:" in out.stdout


def test_evaluate_prints_results_only(tiny):
    root, model = tiny
    out = _run("evaluate", "--model", model, "--data", str(root / "val-*.tfrecord"))
    assert out.returncode == 0, out.stderr
    assert not NOISE.search(out.stderr + out.stdout), out.stderr
    assert out.stderr == ""
    assert out.stdout.startswith("mIoU = ")


def test_errors_stay_one_line_on_stderr(tiny, tmp_path):
    _, model = tiny
    pattern = str(tmp_path / "none-*.tfrecord")
    out = _run("evaluate", "--model", model, "--data", pattern)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-dense evaluate: error: "), out.stderr
    assert pattern in lines[0]


def test_verbose_leaves_tensorflow_logging_alone(tiny, tmp_path):
    root, model = tiny
    # What TensorFlow alone prints on this machine when it runs an op (none on some).
    plain = _run(code="import tensorflow as tf; tf.constant(1) + 1")
    native = [line for line in plain.stderr.splitlines() if NOISE.search(line)]
    out = _run(
        "--verbose", "evaluate", "--model", model, "--data", str(root / "val-*.tfrecord"),
        "--output", str(tmp_path / "eval"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # TensorFlow's own lines (whatever this machine makes it print) are all there.
    location = re.compile(r"\S+\.cc:\d+\]")
    want = {m.group(0) for line in native for m in [location.search(line)] if m}
    got = set(location.findall(out.stderr))
    assert want <= got, out.stderr
    if native:
        assert NOISE.search(out.stderr)


def test_filtered_native_stderr_keeps_other_lines(capfd):
    with filtered_native_stderr():
        os.write(2, b"I0000 00:00:1796147410.375807    3908 port.cc:153] oneDNN on\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\n")
        os.write(2, b"something else\n")
        os.write(2, b"F0000 00:00:1796147410.375807    3908 x.cc:1] fatal\n")
    err = capfd.readouterr().err
    assert err == "something else\nF0000 00:00:1796147410.375807    3908 x.cc:1] fatal\n"
    assert is_native_log_line("E0000 00:00:1796147412.803972    3908 cuda_platform.cc:52] x")
    assert not is_native_log_line("keras-dense evaluate: error: E0000")
