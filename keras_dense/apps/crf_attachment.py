"""Appends a CRF-as-RNN layer (`keras_dense.layers.CrfRnn`) to any segmentation model.

The combined model keeps the segmenter's input: the normalised image that the input pipelines
produce (`keras_dense.data`, `normalization="caffe"` by default). The CRF needs the raw 0-255
RGB image, so a `Denormalization` layer (`crf_image`) inverts the normalisation inside the
model and feeds the CRF; nothing changes for training, evaluation or tiling code. Pass the
`normalization` the segmenter was trained with (`"caffe"` for the VGG16 / ResNet backbones,
`"tf"` for Xception / MobileNetV2, None if the model takes raw 0-255 images).

If the segmenter ends with an activation layer (`activation="softmax"`), the CRF is inserted
before it, on the logits, and the activation is applied to the CRF's output. When the
segmenter's output is smaller than its input (U-Net with "valid" padding), the raw image is
centre-cropped to the output (`CropToMatch`).
"""

from __future__ import annotations

import keras

from keras_dense.layers.crf_rnn import CrfRnn
from keras_dense.layers.denormalization import Denormalization
from keras_dense.layers.resizing import CropToMatch
from keras_dense.utils.normalization import check_mode


def _output_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The layer of `model.layers` whose output is the model's (single) output."""
    output = model.outputs[0]
    for layer in reversed(model.layers):
        try:
            if layer.output is output:
                return layer
        except (AttributeError, ValueError):  # never called, or several outputs
            continue
    return None


def _logits_and_activation(model: keras.Model):
    """The output tensor before a final Activation/Softmax layer, and that layer."""
    last = _output_layer(model)
    if isinstance(last, (keras.layers.Activation, keras.layers.Softmax)):
        return last.input, last
    return model.outputs[0], None


def with_crf(
    model: keras.Model,
    normalization: str | None = "caffe",
    name: str | None = None,
    crf_name: str = "crf_rnn",
    **crf_kwargs,
) -> keras.Model:
    """Returns `model` followed by a CrfRnn layer fed with the raw input image.

    Args:
        model: A functional segmentation model with one image input `(B, H, W, 3)` and one
            output `(B, H', W', C)` of logits (or of an activation of logits).
        normalization: How the model's input is normalised (`"caffe"`, `"torch"`, `"tf"` or
            None); the CRF gets the image back on the 0-255 scale.
        name: Name of the new model (default `<model.name>_crf`).
        crf_name: Name of the CrfRnn layer.
        **crf_kwargs: `CrfRnn` arguments (`theta_alpha`, `num_iterations`, `implementation`,
            ...); `num_classes` is taken from the model.

    Returns:
        A functional model with the same input and layers (shared), plus `crf_image`
        (Denormalization), possibly `crf_image_crop`, and the CRF.

    Raises:
        ValueError: The model does not have one 4-D input and one 4-D output, or bad CRF
            arguments.
    """
    check_mode(normalization)
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("with_crf needs a functional model with one image input and one output")
    image = model.inputs[0]
    logits, activation = _logits_and_activation(model)
    if len(image.shape) != 4 or len(logits.shape) != 4 or logits.shape[-1] is None:
        raise ValueError(
            f"with_crf needs a (B, H, W, channels) input and output, got {image.shape} and "
            f"{logits.shape}"
        )
    if "num_classes" in crf_kwargs and crf_kwargs.pop("num_classes") != logits.shape[-1]:
        raise ValueError(f"num_classes must match the model's {logits.shape[-1]} classes")
    raw = Denormalization(normalization, name="crf_image")(image)
    same_size = image.shape[1:3] == logits.shape[1:3] and None not in image.shape[1:3]
    if not same_size:
        raw = CropToMatch(name="crf_image_crop")([raw, logits])
    refined = CrfRnn(num_classes=logits.shape[-1], name=crf_name, **crf_kwargs)([logits, raw])
    if activation is not None:
        refined = activation.__class__.from_config(activation.get_config())(refined)
    return keras.Model(image, refined, name=name or f"{model.name}_crf")
