"""Keras losses for dense prediction, registered under `keras_dense`."""

from keras_dense.losses.class_weights import median_frequency_weights
from keras_dense.losses.combined import LOSS_NAMES, SumOfLosses, build_loss
from keras_dense.losses.dice import DiceLoss
from keras_dense.losses.focal import FocalLoss
from keras_dense.losses.lovasz import LovaszSoftmaxLoss
from keras_dense.losses.masked_cross_entropy import MaskedSparseCrossEntropy

__all__ = [
    "LOSS_NAMES",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "MaskedSparseCrossEntropy",
    "SumOfLosses",
    "build_loss",
    "median_frequency_weights",
]
