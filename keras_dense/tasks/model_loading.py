"""Loading a saved model with its card, the task named in the card filling the defaults."""

from __future__ import annotations

import keras

from keras_dense.prediction.inference import load_keras_model
from keras_dense.tasks.task import get_task
from keras_dense.utils.model_card import read_model_card


def load_model_with_card(path: str, required_card: bool = True) -> tuple[keras.Model, dict]:
    """Loads `X.keras` (safe mode, no compilation) and its model card `X.json`.

    Args:
        path: The saved model.
        required_card: Refuse a model without a card (or without a normalisation in it).

    Returns:
        `(model, card)`; the card's task is a registered one, and `classes` and
        `background_outputs` are filled from the task when the card lacks them.

    Raises:
        FileNotFoundError: The model file is missing.
        ValueError: The file is not a complete, loadable Keras model, its card is missing, or
            the card names an unknown task.
    """
    model = load_keras_model(path)
    card = read_model_card(path, model, required=required_card, fill_classes=False)
    task = get_task(card["task"])
    card.setdefault("background_outputs", task.background_outputs)
    if not card.get("classes"):
        count = int(model.outputs[0].shape[-1]) - int(card["background_outputs"])
        card["classes"] = [f"class_{i}" for i in range(count)]
    return model, card
