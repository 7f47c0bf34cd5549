"""MobileNetV3 Small and Large (keras.applications, alpha 1), as they are: not dilated.

Features (`applications_family`): each stage's last block output at strides 4, 8 and 16, and
at 32 the no-top network's output (the 1x1 `conv_1` with its hard-swish, 576 / 960 channels;
the activation layer is unnamed in keras.applications). Inputs are 0-255 RGB: the network
rescales them itself (`include_preprocessing=True`).

Sizes: keras.applications pads its stride-2 depthwise convolutions by the input's static size
((1, 1) where a size is odd, (0, 1) where it is even or unknown). So a backbone built on a
static size has keras.applications' sizes for it (`ceil(size / stride)`), and one built on an
unknown size pads every image as if its sizes were even: after the stem (a "same" convolution,
rounding up) each halving of an odd size rounds down.
"""

from __future__ import annotations

import keras

from keras_dense.backbones.applications_family import (
    NETWORK_OUTPUT,
    register_applications_family,
)

register_applications_family(
    "mobilenetv3small",
    keras.applications.MobileNetV3Small,
    {
        4: "expanded_conv_project_bn",
        8: "expanded_conv_2_add",
        16: "expanded_conv_7_add",
        32: NETWORK_OUTPUT,
    },
)
register_applications_family(
    "mobilenetv3large",
    keras.applications.MobileNetV3Large,
    {
        4: "expanded_conv_2_add",
        8: "expanded_conv_5_add",
        16: "expanded_conv_11_add",
        32: NETWORK_OUTPUT,
    },
)
