"""The one skeleton every model builder of `keras_dense.apps` goes through.

A builder (`fcn8s`, `deeplab`, `unet`, `fast_rcnn`, ...) checks its own options, then hands a
`graph` function (the architecture: input tensor(s) and `num_classes` in, output tensor(s)
out) to `build_model`, which does what every builder does the same way:

1. checks `num_classes`, `input_shape`, `activation`, `weights`, `backbone_weights`, `crf`;
2. creates the input(s) and calls `graph`;
3. appends the final activation (layer `{activation_prefix}_{activation}`);
4. builds the model (`keras.Model` or a functional subclass such as `FastRCNN`), freezes
   `frozen_layers`;
5. loads `backbone_weights` with the builder's `load_backbone` (by default the registered
   backbone's `load_weights`, `keras_dense.backbones`), records on the model which layers
   came from where (`pretrained_weights.weights_record`, for the model card) and names in one
   logged line the backbone layers that start fresh (a source without VGG16's top);
6. appends the CRF-as-RNN layer when `crf` is True or a table of `CrfRnn` arguments
   (`with_crf`);
7. loads `weights`, a full-model weight file, last (so that it also covers the CRF).

`ARG_DOCS` holds the Google-style descriptions of these shared arguments; builders format
their docstring templates with it (see `document`), as keras.applications does with `DOC`.

A new builder is one new module with a builder function calling `build_model`, plus one
import line in `keras_dense/apps/__init__.py` (and its name in `__all__`).
"""

from __future__ import annotations

import inspect
import logging
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from keras_dense.apps.crf_attachment import with_crf
from keras_dense.backbones.backbone import Backbone
from keras_dense.backbones.pretrained_weights import (
    LoadReport,
    attach_record,
    check_weights_argument,
    plain_argument,
    weights_record,
)

# Descriptions of the shared builder arguments, indented for an `Args:` section.
ARG_DOCS: dict[str, str] = {
    "weights": (
        "weights: `None` or the path of a full-model weight file (`.weights.h5` or\n"
        "            `.keras`), loaded last."
    ),
    "activation": (
        "activation: `None` for logits, or a Keras activation applied over the classes\n"
        '            (`"softmax"`).'
    ),
    "crf": (
        "crf: Append a CRF-as-RNN layer (`keras_dense.apps.with_crf`), fed with the input\n"
        "            de-normalised from {crf_normalization}: True for the default CrfRnn\n"
        "            settings, or a dict of CrfRnn arguments (e.g.\n"
        '            `{{"pairwise": "learned", "loose": True, "num_iterations": 2}}`).'
    ),
    "name": "name: Model name.",
}


def makes(task: str) -> Callable[[Callable], Callable]:
    """Decorator declaring the task (`keras_dense.tasks`) whose models a builder makes.

    The task registry reads this declaration (`Task.builders`), so a new builder is usable by
    recipes, `train`, `evaluate` and `export` without an edit under `keras_dense/tasks/`.

    Args:
        task: The task's registered name, e.g. `"segmentation"`.

    Returns:
        The decorator; it sets the builder's `task` attribute.
    """

    def declare(builder: Callable) -> Callable:
        builder.task = task
        return builder

    return declare


def document(template: str, **fields: Any) -> Callable[[Callable], Callable]:
    """Decorator setting a builder's docstring to `template` formatted with `fields`.

    `template` may use `{weights_doc}`, `{activation_doc}`, `{crf_doc}` and `{name_doc}`
    (the `ARG_DOCS` entries; `{crf_doc}` is formatted with the field `crf_normalization`)
    besides its own fields.

    Args:
        template: The docstring template.
        **fields: Values of the template's own fields.

    Returns:
        The decorator.
    """
    shared = {f"{key}_doc": text for key, text in ARG_DOCS.items()}
    shared["crf_doc"] = shared["crf_doc"].format(
        crf_normalization=fields.get("crf_normalization", 'the pipelines\' default "caffe" mode')
    )

    def decorate(builder: Callable) -> Callable:
        builder.__doc__ = template.format(**shared, **fields)
        return builder

    return decorate


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------
def check_crf(crf) -> dict | None:
    """The `CrfRnn` arguments of a builder's `crf` (None: no CRF), or a ValueError naming the key.

    Args:
        crf: False, True (default arguments), or a mapping of `CrfRnn` arguments.
    """
    if isinstance(crf, bool):
        return {} if crf else None
    if not isinstance(crf, Mapping):
        raise ValueError(f"crf must be True, False or a table of CrfRnn arguments, got {crf!r}")
    from keras_dense.layers.crf_rnn import CrfRnn

    accepted = set(inspect.signature(CrfRnn.__init__).parameters) - {"self", "kwargs"}
    accepted -= {"num_classes"}
    unknown = sorted(set(crf) - accepted)
    if unknown:
        raise ValueError(f"crf: unknown CrfRnn argument(s) {unknown}; accepted: {sorted(accepted)}")
    return dict(crf)


def check_num_classes(num_classes) -> int:
    """Returns `num_classes` as an int, or raises ValueError unless it is a positive integer."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def check_input_shape(input_shape, channels: int | None = None) -> tuple:
    """Returns `input_shape` as a tuple `(height, width, channels)` or raises ValueError.

    Args:
        input_shape: The builder's `input_shape`; height and width may be `None`, the number
            of channels must be known.
        channels: The number of channels the builder requires, if any.

    Returns:
        The shape, with int sizes.
    """
    if input_shape is None or len(tuple(input_shape)) != 3 or input_shape[-1] is None:
        raise ValueError(
            "input_shape must be (height, width, channels) with a known number of channels "
            f"(height and width may be None), got {input_shape!r}"
        )
    shape = tuple(None if d is None else int(d) for d in input_shape)
    if any(d is not None and d < 1 for d in shape):
        raise ValueError(f"input_shape must hold positive sizes, got {input_shape!r}")
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"input_shape={input_shape!r}: expected (height, width, {channels}), "
            f"{channels} channels"
        )
    return shape


def check_activation(activation) -> None:
    """Raises ValueError unless `activation` is None or a Keras activation."""
    if activation is None:
        return
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "activation must be None (logits) or a Keras activation such as 'softmax', "
            f"got {activation!r}"
        ) from error


def check_weights(weights) -> None:
    """Raises FileNotFoundError unless `weights` is None or an existing file."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)) or not os.path.exists(weights):
        raise FileNotFoundError(
            f"weights={weights!r}: expected None or the path of an existing weight file"
        )


def check_backbone_weights(backbone_weights, input_shape: tuple, source: str) -> None:
    """Raises unless `backbone_weights` is None, "imagenet", an existing file or a model.

    Args:
        backbone_weights: The builder's `backbone_weights` argument (see
            `keras_dense.backbones.pretrained_weights`).
        input_shape: The checked input shape (ImageNet weights need 3 channels).
        source: The keras.applications network the weights belong to, for messages.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: Not 3 input channels.
    """
    if backbone_weights is None:
        return
    check_weights_argument(backbone_weights, source)
    if input_shape[-1] != 3:
        raise ValueError(
            f"backbone_weights={backbone_weights!r} needs 3 input channels, got "
            f"input_shape={input_shape!r}"
        )


def load_backbone_weights(
    model: keras.Model, backbone_weights, load_backbone: Callable[[keras.Model, object], object]
) -> None:
    """Loads `backbone_weights` with `load_backbone`, records where each layer came from and
    says in one line (a logged warning) which backbone layers start fresh.

    The record (`keras_dense.backbones.pretrained_weights.weights_record`) goes into the
    training model card as `backbone_weights`.
    """
    report = load_backbone(model, plain_argument(backbone_weights))
    if not isinstance(report, LoadReport):  # a loader of an older contract: names only
        return
    attach_record(model, report)
    message = report.fresh_message()
    if message:
        # Library code logs (the CLI shows warnings on stderr); it does not print.
        logging.getLogger(__name__).warning("%s", message)


def load_model_weights(model: keras.Model, weights: str | None) -> None:
    """Loads a full-model weight file (the builders' `weights=` argument).

    Args:
        model: The freshly built model.
        weights: `None` (keep the initialisation) or a path to a `.weights.h5` file, or
            a `.keras` file whose weights are copied.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    if weights is None:
        return
    check_weights(weights)
    if weights.endswith(".keras"):
        source = keras.models.load_model(weights, compile=False)
        model.set_weights(source.get_weights())
    else:
        model.load_weights(weights)


def apply_activation(outputs, activation, prefix: str = "score"):
    """Appends the output activation (named `{prefix}_{activation}`) unless it is None."""
    if activation is None:
        return outputs
    name = f"{prefix}_{activation}" if isinstance(activation, str) else f"{prefix}_activation"
    return keras.layers.Activation(activation, name=name)(outputs)


# ---------------------------------------------------------------------------------------
# The skeleton
# ---------------------------------------------------------------------------------------
def build_model(
    graph: Callable[[Any, int], Any],
    *,
    num_classes: int,
    input_shape: tuple,
    name: str,
    input_name: str = "image",
    extra_inputs: Mapping[str, tuple] | None = None,
    activation: str | None = None,
    activation_prefix: str = "score",
    weights: str | None = None,
    backbone_weights: str | None = None,
    load_backbone: Callable[[keras.Model, str], object] | None = None,
    backbone_source: str = "keras.applications.VGG16",
    backbone_family: Backbone | None = None,
    input_channels: int | None = None,
    crf: bool | Mapping[str, Any] = False,
    crf_normalization: str | None = "caffe",
    frozen_layers: Sequence[str] = (),
    model_class: type[keras.Model] = keras.Model,
    **model_kwargs,
) -> keras.Model:
    """Checks the shared arguments, builds `graph` into a model and loads its weights.

    Args:
        graph: `graph(inputs, num_classes) -> outputs`: the architecture. `inputs` is the
            image input tensor, or the list `[image, *extra_inputs]` when `extra_inputs` is
            given; `num_classes` is the checked int. It may raise ValueError for options
            that depend on the input shape (`inputs.shape`).
        num_classes: The builder's `num_classes` (a positive int, not a bool).
        input_shape: The builder's `input_shape`, `(height, width, channels)`.
        name: Model name (of the model before `crf`, whose model is `<name>_crf`).
        input_name: Name of the image input.
        extra_inputs: `{name: shape}` of further inputs (Fast R-CNN's `rois`).
        activation: `None` or a Keras activation appended to the single output.
        activation_prefix: The activation layer is named `{activation_prefix}_{activation}`.
        weights: `None` or a full-model weight file, loaded at the end.
        backbone_weights: `None`, `"imagenet"`, a weight file of `backbone_source` (with or
            without its top) or a `keras.Model` with its layer names.
        load_backbone: `load_backbone(model, backbone_weights) -> LoadReport` copies
            `backbone_weights` into the model; required for a builder that accepts
            `backbone_weights`. The report is attached to the model (for the model card) and
            the backbone layers that start fresh are named in one logged line.
        backbone_source: The pretrained network, for messages.
        backbone_family: The registered backbone the model is built on, if any: it checks
            `backbone_weights` (`Backbone.check`), names the pretrained network and, unless
            `load_backbone` is given, loads the weights (`Backbone.load_weights`).
        input_channels: The number of input channels the builder requires, if any.
        crf: Append a CRF-as-RNN layer (`with_crf`) to the single output: True, or a
            mapping of `CrfRnn` arguments (`num_classes` comes from the model).
        crf_normalization: The input normalisation `with_crf` inverts for the CRF.
        frozen_layers: Names of layers made non-trainable.
        model_class: `keras.Model` or a functional subclass (`FastRCNN`).
        **model_kwargs: Further arguments of `model_class`.

    Returns:
        The model.

    Raises:
        ValueError: An argument is invalid.
        FileNotFoundError: `weights` or `backbone_weights` is a missing file.
    """
    num_classes = check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape, input_channels)
    check_activation(activation)
    check_weights(weights)
    if backbone_family is not None:
        backbone_family.check(None, backbone_weights)
        backbone_source = backbone_family.weights_source or backbone_family.name
        load_backbone = load_backbone or backbone_family.load_weights
    check_backbone_weights(backbone_weights, input_shape, backbone_source)
    if backbone_weights is not None and load_backbone is None:
        raise ValueError(f"backbone_weights={backbone_weights!r}: this model has no backbone")
    crf_kwargs = check_crf(crf)

    image = keras.Input(shape=input_shape, name=input_name)
    extras = [keras.Input(shape=shape, name=key) for key, shape in (extra_inputs or {}).items()]
    inputs = [image, *extras] if extras else image
    outputs = graph(inputs, num_classes)
    single_output = not isinstance(outputs, (list, tuple))
    if (activation is not None or crf) and not single_output:
        raise ValueError("activation and crf need a model with a single output")
    outputs = apply_activation(outputs, activation, prefix=activation_prefix)

    model = model_class(inputs=inputs, outputs=outputs, name=name, **model_kwargs)
    for layer_name in frozen_layers:
        model.get_layer(layer_name).trainable = False
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights, load_backbone)
    if crf_kwargs is not None:
        record = weights_record(model)
        model = with_crf(model, normalization=crf_normalization, **crf_kwargs)
        if record is not None:
            attach_record(model, LoadReport(record["source"], record["loaded"], record["fresh"]))
    load_model_weights(model, None if weights is None else os.fspath(weights))
    return model
