"""The model card: a JSON file beside every saved model saying how to feed and read it.

For a model `X.keras` the card is `X.json`:

    {"task": "<a registered task, see keras_dense.tasks>",
     "normalization": "caffe" | "torch" | "tf" | null, "classes": [...], "ignore_label": 255,
     "input_channels": 3, "background_outputs": 0, "builder": "unet", "builder_kwargs": {...},
     "recipe": "<resolved recipe path>", "keras_dense_version": "..."}

Cards of `keras-dense train` runs also hold `"backbone_weights"`: null for a model trained from
scratch, else where its pretrained layers came from, `{"source": "<file path, "imagenet" or
keras.Model '<name>'>", "loaded": [layer names], "fresh": [layer names]}` ("fresh": layers the
source could have filled but lacks, e.g. FCN's fc6 / fc7 with a file without VGG16's top; see
`keras_dense.backbones.pretrained_weights`), plus `"scaled": {layer name: factor}` when
`training.scale_fresh_layers` shrank fresh layers to the trunk's scale before training (see
`keras_dense.training.fresh_layer_scaling`). A run whose recipe sets
`optimizer.learning_rate_multipliers` adds `"learning_rate_multipliers": {pattern:
{"multiplier": m, "variables": n}}`: each pattern's factor of the learning rate and the number
of trainable variables it matched (see `keras_dense.training.learning_rate_multipliers`).

Segmenters trained by keras-dense also hold `"input_size"` (the training tile, which a TFLite
export uses as its fixed size), and `keras-dense tune-crf` adds `"crf"`: the tuned
`dense_crf` parameters (see `keras_dense.crf.card_parameters`).

`classes[i]` is the name of class id `i`; a model with `background_outputs` = 1 (detection)
has one more score channel than classes, label `i + 1` being `classes[i]`. This module only
reads and writes the file; the task named in it (`keras_dense.tasks.get_task`) knows the rest.
"""

from __future__ import annotations

import json
import os

from keras_dense.utils.files import atomic_write_bytes


def model_card_path(model_path: str) -> str:
    """The card path of a model: `X.keras` -> `X.json`."""
    stem, _ = os.path.splitext(os.fspath(model_path))
    return stem + ".json"


def write_model_card(model_path: str, card: dict) -> str:
    """Writes the card of `model_path` atomically (temporary name, then rename).

    Args:
        model_path: The saved model, `X.keras`.
        card: The card's fields (see the module docstring).

    Returns:
        The path of the card written.

    """
    path = model_card_path(model_path)
    atomic_write_bytes(path, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return path


def _output_channels(model_path: str, model=None) -> int:
    if model is None:
        raise ValueError(
            f"model card {model_card_path(model_path)} names no classes: pass the loaded model "
            "so that they can be counted"
        )
    return int(model.outputs[0].shape[-1])


def read_model_card(
    model_path: str, model=None, required: bool = False, fill_classes: bool = True
) -> dict:
    """Reads the card of `model_path`, filling defaults for missing fields or a missing file.

    Defaults: task "segmentation", normalization "caffe", ignore_label 255, input_channels 3,
    background_outputs 0, and classes `class_0 ...` for each of the model's output channels
    past `background_outputs` (counted on `model`).

    Args:
        model_path: The saved model, `X.keras`.
        model: The loaded model, if at hand (only used when the card names no classes).
        required: Refuse a missing card or one without a normalisation (the CLI does): a
            guessed normalisation gives wrong outputs without any error.
        fill_classes: Fill `background_outputs` and `classes` when missing (False leaves
            that to the caller, e.g. the task's loader, which knows the task's defaults).

    Returns:
        The card as a dict with at least the keys listed in the module docstring.

    Raises:
        ValueError: The card exists but is not valid JSON; with `required`, the card or its
            normalisation is missing.
    """
    path = model_card_path(model_path)
    card: dict = {}
    if required and not os.path.isfile(path):
        raise ValueError(
            f"{model_path}: no model card {path} beside it; the card says how to normalise "
            "the input and names the classes. Models from keras-dense train have one; for "
            "another model write it, e.g. "
            '{"task": "segmentation", "normalization": "caffe", "classes": [...]}'
        )
    if os.path.isfile(path):
        try:
            with open(path) as f:
                card = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"model card {path}: invalid JSON ({err})") from None
        if not isinstance(card, dict):
            raise ValueError(f"model card {path}: expected a JSON object")
    if required and "normalization" not in card:
        raise ValueError(
            f"model card {path}: no 'normalization' (one of 'caffe', 'torch', 'tf' or null); "
            "guessing it would feed the model wrongly scaled pixels"
        )
    card.setdefault("task", "segmentation")
    card.setdefault("normalization", "caffe")
    card.setdefault("ignore_label", 255)
    card.setdefault("input_channels", 3)
    card.setdefault("builder", None)
    card.setdefault("builder_kwargs", {})
    card.setdefault("recipe", None)
    card.setdefault("keras_dense_version", None)
    if not fill_classes:
        return card
    card.setdefault("background_outputs", 0)
    if not card.get("classes"):
        count = _output_channels(model_path, model) - int(card["background_outputs"])
        card["classes"] = [f"class_{i}" for i in range(count)]
    return card
