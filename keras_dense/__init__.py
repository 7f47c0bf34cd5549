"""keras_dense: dense prediction (segmentation and detection) for TensorFlow / Keras 3."""

import os

# TensorFlow's C++ INFO lines (CUDA probing, oneDNN notices) drown our output; a user's own
# setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_dense import (  # noqa: E402
    apps,
    crf,
    data,
    detection,
    evaluation,
    export,
    layers,
    losses,
    metrics,
    serving,
    tasks,
    training,
)
from keras_dense.tiling import predict_tiled  # noqa: E402
from keras_dense.utils.version import __version__  # noqa: E402

__all__ = [
    "__version__",
    "apps",
    "crf",
    "data",
    "detection",
    "evaluation",
    "export",
    "layers",
    "losses",
    "metrics",
    "predict_tiled",
    "serving",
    "tasks",
    "training",
]
