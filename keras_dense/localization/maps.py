"""Class maps of weakly supervised classifiers, plain and under test-time augmentation.

- `class_maps`: the `class_maps` layer of a `keras_dense.apps.wsl_classifier`, averaged per
  class, at the input resolution (bilinear) or the feature resolution.
- `augmented_class_maps`: `class_maps` averaged over test-time scales and left-right flips,
  each resized back to the image (a finer, less biased peak for the pointing game).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_dense.layers.walk import iter_layers
from keras_dense.layers.wsl_pooling import ClassWisePooling2D
from keras_dense.localization.arrays import as_images, check_finite, resize_maps, single_input
from keras_dense.utils.tta import TestTimeAugmentation, scaled_size

CLASS_MAPS_LAYER = "class_maps"


def class_maps(model: keras.Model, images, upsample: bool = True) -> np.ndarray:
    """The class maps of a weakly supervised classifier (`keras_dense.apps.wsl_classifier`).

    Reads the output of the layer named `class_maps` (the 1x1 convolution before the spatial
    pooling, found with `keras_dense.layers.walk.iter_layers`). When a `ClassWisePooling2D`
    layer follows it (`maps_per_class > 1` or WILDCAT), each class's maps are averaged as
    that layer does, so that there is one map per class.

    Args:
        model: The classifier; its `class_maps` layer must be in its own graph (not in a
            nested model).
        images: `(B, H, W, 3)` images, preprocessed as for the classifier.
        upsample: Resize the maps bilinearly to `(H, W)`; `False` keeps the feature resolution
            `(h, w)`.

    Returns:
        float32 maps `(B, H, W, C)` (or `(B, h, w, C)`).

    Raises:
        ValueError: The model has no `class_maps` layer, images are not a batch, or the maps
            are not finite (`check_finite`).
    """
    images = as_images(images)
    layer = next((item for item in iter_layers(model) if item.name == CLASS_MAPS_LAYER), None)
    if layer is None:
        raise ValueError(
            f"model {model.name!r} has no layer named {CLASS_MAPS_LAYER!r}: expected a "
            "keras_dense.apps.wsl_classifier (use class_activation_maps for a GAP -> Dense "
            "classifier)"
        )
    maps_per_class = 1
    for candidate in model.layers:
        if isinstance(candidate, ClassWisePooling2D) and candidate.input is layer.output:
            maps_per_class = candidate.maps_per_class
    probe = keras.Model(single_input(model), layer.output)
    maps = np.asarray(keras.ops.convert_to_numpy(probe(images, training=False)), np.float32)
    check_finite(maps, model, "class maps")
    if maps_per_class > 1:
        b, h, w, channels = maps.shape
        maps = maps.reshape(b, h, w, channels // maps_per_class, maps_per_class).mean(axis=-1)
    return resize_maps(maps, images.shape[1:3]) if upsample else maps


def augmented_class_maps(
    model: keras.Model, images, tta: TestTimeAugmentation | None = None
) -> np.ndarray:
    """`class_maps` averaged over test-time scales and left-right flips, at the image size.

    Each scale `s` resizes the images bilinearly (half-pixel centres) to
    `keras_dense.utils.tta.scaled_size` of each side, reads their class maps at that size,
    un-mirrors the flipped pass and resizes the maps back to `(H, W)`; the maps of the
    `tta.passes` passes are averaged. Upscaling the input (`s > 1`) samples the maps more
    finely (output stride `stride / s` in the image's pixels) and enlarges small objects
    relative to the receptive field; the flip cancels a left-right bias of the learned maps.
    With the default (one plain pass) this is `class_maps(model, images)`.

    Args:
        model: A `keras_dense.apps.wsl_classifier` (see `class_maps`).
        images: `(B, H, W, 3)` images, preprocessed as for the classifier.
        tta: The scales and flip (`keras_dense.utils.tta.parse_tta`); None: one plain pass.

    Returns:
        float32 maps `(B, H, W, C)`.

    Raises:
        ValueError: As `class_maps`.
    """
    images = as_images(images)
    tta = tta or TestTimeAugmentation()
    height, width = images.shape[1:3]
    total = None
    for scale in tta.scales:
        size = (scaled_size(height, scale), scaled_size(width, scale))
        scaled = images if size == (height, width) else resize_maps(images, size)
        for mirrored in (False, True) if tta.flip else (False,):
            maps = class_maps(model, scaled[:, :, ::-1] if mirrored else scaled)
            if mirrored:
                maps = maps[:, :, ::-1]
            if size != (height, width):
                maps = resize_maps(np.ascontiguousarray(maps), (height, width))
            total = maps if total is None else total + maps
    return (total / tta.passes).astype(np.float32)
