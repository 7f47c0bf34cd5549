"""Keras losses for dense prediction, registered under `keras_dense`."""

from keras_dense.losses.masked_cross_entropy import MaskedSparseCrossEntropy

__all__ = ["MaskedSparseCrossEntropy"]
