"""Zhou et al.'s class activation maps (CAM, CVPR 2016) of GAP -> Dense classifiers.

For any Keras classifier that ends `GlobalAveragePooling2D -> Dense`, the map of class `c` is
`sum_k w_kc f_k` over the features `f` that enter the global average pooling.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_dense.localization.arrays import as_images, resize_maps, single_input

# Layers that may follow the CAM's Dense layer (its pre-activation logits are what CAM splits).
_OUTPUT_ACTIVATIONS = (keras.layers.Activation, keras.layers.Softmax)
# Layers between the global average pooling and the Dense layer that are identities at
# inference.
_INFERENCE_IDENTITIES = (keras.layers.Dropout,)


def _producers(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """`id(output tensor) -> layer` over the model's own layers (first call of each)."""
    found = {}
    for layer in model.layers:
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        for tensor in outputs:
            found[id(tensor)] = layer
    return found


def _cam_layers(classifier: keras.Model):
    """The classifier's final `(GlobalAveragePooling2D, Dense)` pair, or a ValueError."""
    expected = (
        "class_activation_maps needs a classifier whose single output is "
        "GlobalAveragePooling2D -> [Dropout] -> Dense -> [Activation/Softmax]"
    )
    outputs = keras.tree.flatten(classifier.outputs)
    if len(outputs) != 1:
        raise ValueError(f"{expected}; {classifier.name!r} has {len(outputs)} outputs")
    producers = _producers(classifier)
    layer = producers.get(id(outputs[0]))
    while isinstance(layer, _OUTPUT_ACTIVATIONS):
        layer = producers.get(id(layer.input))
    if not isinstance(layer, keras.layers.Dense):
        found = type(layer).__name__ if layer is not None else "nothing"
        raise ValueError(f"{expected}; the output comes from {found} (not a Dense layer)")
    dense = layer
    layer = producers.get(id(dense.input))
    while isinstance(layer, _INFERENCE_IDENTITIES):
        layer = producers.get(id(layer.input))
    if not isinstance(layer, keras.layers.GlobalAveragePooling2D) or layer.keepdims:
        found = type(layer).__name__ if layer is not None else "the model input"
        raise ValueError(
            f"{expected}; the Dense layer {dense.name!r} is fed by {found} (expected a "
            "GlobalAveragePooling2D with keepdims=False)"
        )
    if layer.data_format != "channels_last":
        raise ValueError(f"{expected}; {layer.name!r} must be channels_last")
    return layer, dense


def class_activation_maps(classifier: keras.Model, images, upsample: bool = True) -> np.ndarray:
    """Class activation maps (Zhou et al., CVPR 2016) of a GAP -> Dense classifier.

    With `f_k` the `K` feature maps that enter the final `GlobalAveragePooling2D` and `w_kc`
    the kernel of the `Dense` layer after it, the map of class `c` is `sum_k w_kc f_k(x, y)`.
    Since the pooling is a mean, at the feature resolution (`upsample=False`) the mean of each
    map plus the Dense bias `b_c` is exactly the class's pre-activation logit (up to float
    rounding), whatever activation follows (the Dense layer's own, e.g. keras.applications'
    softmax, or a separate `Activation` / `Softmax` layer). The layers are found by walking
    back from the output (`model.layers`, `layer.input`, `layer.output`); `Dropout` between
    the pooling and the Dense layer is skipped (an identity at inference).

    Args:
        classifier: A Keras classifier ending `GlobalAveragePooling2D -> Dense`, such as
            `keras.applications.ResNet50()`.
        images: `(B, H, W, 3)` images, preprocessed as for the classifier.
        upsample: Resize the maps bilinearly to `(H, W)`; `False` keeps the feature resolution.

    Returns:
        float32 maps `(B, H, W, C)` (or `(B, h, w, C)`), without the bias.

    Raises:
        ValueError: The classifier does not end `GlobalAveragePooling2D -> Dense` (the message
            names what was found), or images are not a batch.
    """
    images = as_images(images)
    pooling, dense = _cam_layers(classifier)
    features_model = keras.Model(single_input(classifier), pooling.input)
    features = np.asarray(keras.ops.convert_to_numpy(features_model(images, training=False)))
    kernel = np.asarray(keras.ops.convert_to_numpy(dense.kernel), np.float64)
    maps = np.einsum("bhwk,kc->bhwc", features.astype(np.float64), kernel).astype(np.float32)
    return resize_maps(maps, images.shape[1:3]) if upsample else maps
