"""Custom Keras layers, all registered under the package name "keras_dense"."""

from keras_dense.layers.resizing import CropToMatch, ResizeToMatch

__all__ = ["CropToMatch", "ResizeToMatch"]
