"""keras_dense: dense prediction (segmentation and detection) for TensorFlow / Keras 3.

The subpackages are imported on first use (`keras_dense.apps`, `from keras_dense import
data`), so that importing the package does not import TensorFlow: the `keras-dense` entry
point must set TensorFlow's log level before that happens (see
`keras_dense.utils.native_logs`).
"""

import importlib

from keras_dense.utils.native_logs import set_library_log_level

# TensorFlow's C++ INFO lines (CUDA probing, oneDNN notices) drown our output; a user's own
# setting wins.
set_library_log_level()

_SUBPACKAGES = (
    "apps",
    "crf",
    "data",
    "detection",
    "evaluation",
    "export",
    "layers",
    "losses",
    "metrics",
    "serving",
    "tasks",
    "training",
)

__all__ = ["__version__", *_SUBPACKAGES, "predict_tiled"]


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
