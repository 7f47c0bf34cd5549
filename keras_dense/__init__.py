"""keras_dense: dense prediction (segmentation and detection) for TensorFlow / Keras 3.

`import keras_dense` imports the subpackages (and so TensorFlow, and registers the custom
layers for `keras.models.load_model`), except in the `keras-dense` command's own process
(the console script or `python -m keras_dense.cli`): there the subpackages are imported on
first use, so that `keras_dense.cli.main` sets TensorFlow's log level before TensorFlow is
imported (see `keras_dense.utils.native_logs`).
"""

import importlib
import os
import sys

from keras_dense.utils.native_logs import set_library_log_level

# TensorFlow's C++ INFO lines (CUDA probing, oneDNN notices) drown our output; a user's own
# setting wins.
set_library_log_level()

# Every public module, reachable as `keras_dense.X` after `import keras_dense` (the README's
# snippets use them so; tests/test_readme_snippets.py checks each one it names).
_SUBPACKAGES = (
    "analysis",
    "apps",
    "backbones",
    "crf",
    "data",
    "detection",
    "evaluation",
    "export",
    "layers",
    "localization",
    "losses",
    "metrics",
    "ops",
    "prediction",
    "serving",
    "signatures",
    "tasks",
    "tiling",
    "training",
    "utils",
)

__all__ = ["__version__", *_SUBPACKAGES, "predict_tiled"]


def _started_as_cli() -> bool:
    """Whether this process runs `keras-dense` (console script or `python -m keras_dense.cli`)."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("keras-dense", "keras-dense.exe"):
        return True
    command = list(getattr(sys, "orig_argv", ()))
    for i, arg in enumerate(command):
        if arg == "-m":
            return i + 1 < len(command) and command[i + 1] == "keras_dense.cli"
        if arg.startswith("-m"):
            return arg[2:] == "keras_dense.cli"
    return False


def __getattr__(name: str):
    """Imports a subpackage (or `predict_tiled`, `__version__`) on first access."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"keras_dense.{name}")
    if name == "predict_tiled":
        return importlib.import_module("keras_dense.tiling").predict_tiled
    if name == "__version__":
        return importlib.import_module("keras_dense.utils.version").__version__
    raise AttributeError(f"module 'keras_dense' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if not _started_as_cli():
    for _name in _SUBPACKAGES:
        importlib.import_module(f"keras_dense.{_name}")
    from keras_dense.tiling import predict_tiled  # noqa: E402
    from keras_dense.utils.version import __version__  # noqa: E402
