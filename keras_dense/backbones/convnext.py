"""ConvNeXt Tiny (keras.applications.ConvNeXtTiny), as it is: not dilated.

Features (`applications_family`): each stage's last block output, `{4: stage 0, 8: stage 1,
16: stage 2, 32: stage 3}`. The no-top network's final LayerNormalization is left out: it is
unnamed in keras.applications (its name changes from one build to the next, so its weights
could only be matched by order), and a dense head normalises its inputs itself. Inputs are
0-255 RGB: the network normalises them itself (`include_preprocessing=True`).
"""

from __future__ import annotations

import keras

from keras_dense.backbones.applications_family import register_applications_family

register_applications_family(
    "convnexttiny",
    keras.applications.ConvNeXtTiny,
    {
        4: "convnext_tiny_stage_0_block_2_identity",
        8: "convnext_tiny_stage_1_block_2_identity",
        16: "convnext_tiny_stage_2_block_8_identity",
        32: "convnext_tiny_stage_3_block_2_identity",
    },
)
