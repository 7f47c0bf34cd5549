"""Turning a classifier's fully connected top into convolutions ("FC <=> conv", FCN Sec. 3.1).

A Dense layer reading the flattened `h x w x c` feature map is a convolution with
`units` filters of size `h x w x c` applied without padding: on the classifier's native input
it gives the same numbers at a single position, and on a larger input it slides over the
feature map and gives a heatmap of class scores. Later Dense layers become 1x1 convolutions.
"""

from __future__ import annotations

import keras

# Layers after the Flatten that are position-wise and can be copied unchanged.
_POSITIONWISE_TOP_LAYERS = (keras.layers.Dropout, keras.layers.Activation, keras.layers.ReLU)


def _chain_layers(classifier: keras.Model) -> list[keras.layers.Layer]:
    """The classifier's layers, checked to form a single chain (input excluded)."""
    layers = [
        layer for layer in classifier.layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    previous = classifier.inputs[0] if len(classifier.inputs) == 1 else None
    if previous is None:
        raise ValueError(
            f"classifier must have a single input, got {len(classifier.inputs)} inputs"
        )
    for layer in layers:
        if layer.input is not previous:
            raise ValueError(
                "classifier must be a plain chain of layers (like keras.applications VGG16 / "
                f"VGG19); layer {layer.name!r} does not read the output of the layer before it"
            )
        previous = layer.output
    return layers


def _clone(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())


def convolutionalize(classifier: keras.Model, name: str | None = None) -> keras.Model:
    """Returns a fully convolutional copy of a classifier with a Flatten/Dense top.

    Layers before the `Flatten` are copied with their weights. The first `Dense` after it
    becomes a "valid" convolution whose kernel is the Dense kernel reshaped to
    `(h, w, c, units)`, `(h, w, c)` being the shape the `Flatten` received (7x7x512 for
    VGG16 / VGG19 at 224x224); the following `Dense` layers become 1x1 convolutions. Each keeps
    its activation, so a softmax classifier gives a softmax over the channels at every position.
    At the classifier's native size the output is `(B, 1, 1, classes)` and equals the
    classifier's; a larger input gives a heatmap (VGG16 at 384x384: `(B, 6, 6, classes)`).

    Args:
        classifier: A `keras.applications.VGG16` / `VGG19` built with `include_top=True`, or
            any single-input chain `... -> Flatten -> Dense [-> Dropout] -> Dense ...` in
            channels-last format.
        name: Name of the new model (default: `"<classifier name>_fully_conv"`).

    Returns:
        A functional `keras.Model` with input shape `(None, None, channels)`.

    Raises:
        ValueError: The classifier is not a chain with a Flatten/Dense top.
    """
    if not isinstance(classifier, keras.Model):
        raise ValueError(f"classifier must be a keras.Model, got {type(classifier).__name__}")
    layers = _chain_layers(classifier)
    flatten_index = next(
        (i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Flatten)), None
    )
    if flatten_index is None:
        raise ValueError(
            "classifier must have a Flatten/Dense top (e.g. keras.applications.VGG16 with "
            "include_top=True); no Flatten layer found"
        )
    flatten = layers[flatten_index]
    if getattr(flatten, "data_format", "channels_last") != "channels_last":
        raise ValueError("classifier must use channels_last data format")
    feature_shape = tuple(flatten.input.shape[1:])
    if len(feature_shape) != 3 or any(d is None for d in feature_shape):
        raise ValueError(
            "the Flatten layer must receive a feature map (h, w, c) of known size, got "
            f"{feature_shape}"
        )
    top = layers[flatten_index + 1 :]
    if not any(isinstance(layer, keras.layers.Dense) for layer in top):
        raise ValueError("classifier must have a Dense layer after its Flatten layer")

    channels = classifier.inputs[0].shape[-1]
    first = classifier.layers[0]
    input_name = first.name if isinstance(first, keras.layers.InputLayer) else None
    inputs = keras.Input(shape=(None, None, channels), name=input_name)
    x = inputs
    for layer in layers[:flatten_index]:
        clone = _clone(layer)
        x = clone(x)
        clone.set_weights(layer.get_weights())

    kernel_size = feature_shape[:2]
    depth = feature_shape[2]
    for layer in top:
        if isinstance(layer, keras.layers.Dense):
            kernel, *bias = layer.get_weights()
            conv = keras.layers.Conv2D(
                layer.units,
                kernel_size,
                padding="valid",
                activation=layer.activation,
                use_bias=layer.use_bias,
                name=layer.name,
            )
            x = conv(x)
            conv.set_weights([kernel.reshape(*kernel_size, depth, layer.units), *bias])
            kernel_size, depth = (1, 1), layer.units
        elif isinstance(layer, _POSITIONWISE_TOP_LAYERS):
            x = _clone(layer)(x)
        else:
            raise ValueError(
                f"cannot convolutionalize layer {layer.name!r} ({type(layer).__name__}) after "
                "the Flatten: only Dense, Dropout, Activation and ReLU are supported"
            )
    return keras.Model(inputs, x, name=name or f"{classifier.name}_fully_conv")
