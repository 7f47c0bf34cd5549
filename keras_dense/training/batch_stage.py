"""Runs a function on each training batch at the start of the train step (inside `fit`).

`Task.train_batch_stage` may return such a function (the segmentation task's
`data.augment_on = "device"` augmentation): it then runs in the compiled train function, on
each replica's device, before the model's own `train_step`. Only training batches pass through
it; validation batches come from the host as before. Nothing of it is saved with the model.
"""

from __future__ import annotations

from collections.abc import Callable

import keras


def install_batch_stage(model: keras.Model, stage: Callable) -> keras.Model:
    """Makes `model.fit` apply `stage` to every training batch before its `train_step`.

    Args:
        model: A compiled Keras model (its class's `train_step` stays as it is).
        stage: Maps a batch as the dataset yields it to the `(x, y)` batch `train_step` takes.

    Returns:
        `model` (the same object).
    """
    step = model.train_step  # bound: the class's (or a previously installed) step

    def train_step(data):
        return step(stage(data))

    # An instance attribute: Keras builds its train function from `self.train_step`.
    object.__setattr__(model, "train_step", train_step)
    model.train_function = None  # rebuilt with the stage on the next `fit`
    return model
