"""Model builders, one module per architecture, in the style of keras.applications.

Every builder goes through `keras_dense.apps.builder.build_model`. Module names never shadow
the public functions: `keras_dense.apps.unet` is the builder function, the module that holds
it is `keras_dense.apps.unet_model` (likewise `deeplab_model`, `deconvnet_model`,
`deeplab_vgg_model` (DeepLab v1 / v2), `fast_rcnn_model`, `rcnn_model`, `faster_rcnn_model`,
`mask_rcnn_model`,
`wsl_classifier_model`, `convolutionalization`, `dense_compression`, `crf_attachment`;
FCN-8s/16s/32s live in `keras_dense.apps.fcn`).
"""

from keras_dense.apps.convolutionalization import convolutionalize
from keras_dense.apps.crf_attachment import with_crf
from keras_dense.apps.deconvnet_model import deconvnet
from keras_dense.apps.deeplab_model import deeplab
from keras_dense.apps.deeplab_vgg_model import deeplab_v1, deeplab_v2
from keras_dense.apps.dense_compression import compress_dense
from keras_dense.apps.fast_rcnn_model import FastRCNN, fast_rcnn
from keras_dense.apps.faster_rcnn_model import FasterRCNN, faster_rcnn
from keras_dense.apps.fcn import fcn8s, fcn16s, fcn32s
from keras_dense.apps.mask_rcnn_model import MaskRCNN, mask_rcnn
from keras_dense.apps.pspnet_model import pspnet
from keras_dense.apps.rcnn_model import rcnn
from keras_dense.apps.unet_model import unet
from keras_dense.apps.wsl_classifier_model import wsl_classifier

__all__ = [
    "FastRCNN",
    "FasterRCNN",
    "MaskRCNN",
    "compress_dense",
    "convolutionalize",
    "deconvnet",
    "deeplab",
    "deeplab_v1",
    "deeplab_v2",
    "fast_rcnn",
    "faster_rcnn",
    "fcn8s",
    "fcn16s",
    "fcn32s",
    "rcnn",
    "mask_rcnn",
    "pspnet",
    "unet",
    "with_crf",
    "wsl_classifier",
]
