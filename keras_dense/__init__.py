"""keras_dense: dense prediction (segmentation and detection) for TensorFlow / Keras 3."""

import os

# TensorFlow's C++ INFO lines (CUDA probing, oneDNN notices) drown our output; a user's own
# setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from keras_dense import apps, data, layers
from keras_dense.tiling import predict_tiled

__version__ = "0.1.0"

__all__ = ["apps", "data", "layers", "predict_tiled", "__version__"]
