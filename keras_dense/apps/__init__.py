"""Model builders, one module per architecture, in the style of keras.applications."""

from keras_dense.apps.compress_dense import compress_dense
from keras_dense.apps.convolutionalize import convolutionalize
from keras_dense.apps.deconvnet import deconvnet
from keras_dense.apps.deeplab import deeplab
from keras_dense.apps.fast_rcnn import FastRCNN, fast_rcnn
from keras_dense.apps.fcn import fcn8s, fcn16s, fcn32s
from keras_dense.apps.unet import unet
from keras_dense.apps.with_crf import with_crf

__all__ = [
    "FastRCNN",
    "compress_dense",
    "convolutionalize",
    "deconvnet",
    "deeplab",
    "fast_rcnn",
    "fcn8s",
    "fcn16s",
    "fcn32s",
    "unet",
    "with_crf",
]
