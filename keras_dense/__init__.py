"""keras_dense: dense prediction (segmentation and detection) for TensorFlow / Keras 3."""

from keras_dense import apps, data, layers

__version__ = "0.1.0"

__all__ = ["apps", "data", "layers", "__version__"]
