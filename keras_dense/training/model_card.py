"""The model card: a JSON file beside every saved model saying how to feed and read it.

For a model `X.keras` the card is `X.json`:

    {"task": "segmentation" | "detection", "normalization": "caffe" | "torch" | "tf" | null,
     "classes": [...], "ignore_label": 255, "input_channels": 3, "builder": "unet",
     "builder_kwargs": {...}, "recipe": "<resolved recipe path>", "keras_dense_version": "..."}

`classes[i]` is the name of class id `i` (detection: of label `i + 1`, 0 being background).
"""

from __future__ import annotations

import json
import os

from keras_dense.data.writer import atomic_write_bytes

TASKS = ("segmentation", "detection")


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

    Raises:
        ValueError: `card["task"]` is not a known task.
    """
    if card.get("task", "segmentation") not in TASKS:
        raise ValueError(f"card['task']={card.get('task')!r}: expected one of {TASKS}")
    path = model_card_path(model_path)
    atomic_write_bytes(path, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return path


def _output_channels(model_path: str, model=None) -> int:
    if model is None:
        import keras

        import keras_dense  # noqa: F401  (registers the custom layers)

        model = keras.models.load_model(model_path, compile=False)
    return int(model.outputs[0].shape[-1])


def read_model_card(model_path: str, model=None, required: bool = False) -> dict:
    """Reads the card of `model_path`, filling defaults for missing fields or a missing file.

    Defaults: task "segmentation", normalization "caffe", ignore_label 255, input_channels 3,
    and classes `class_0 ... class_{C-1}` from the model's output channels (the model is
    loaded to count them unless given).

    Args:
        model_path: The saved model, `X.keras`.
        model: The loaded model, if at hand (only used when the card names no classes).
        required: Refuse a missing card or one without a normalisation (the CLI does): a
            guessed normalisation gives wrong outputs without any error.

    Returns:
        The card as a dict with at least the keys listed in the module docstring.

    Raises:
        ValueError: The card exists but is not valid JSON, or names an unknown task; with
            `required`, the card or its normalisation is missing.
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
    if card["task"] not in TASKS:
        raise ValueError(f"model card {path}: task={card['task']!r}, expected one of {TASKS}")
    card.setdefault("normalization", "caffe")
    card.setdefault("ignore_label", 255)
    card.setdefault("input_channels", 3)
    card.setdefault("builder", None)
    card.setdefault("builder_kwargs", {})
    card.setdefault("recipe", None)
    card.setdefault("keras_dense_version", None)
    if not card.get("classes"):
        channels = _output_channels(model_path, model)
        count = channels - 1 if card["task"] == "detection" else channels
        card["classes"] = [f"class_{i}" for i in range(count)]
    return card
