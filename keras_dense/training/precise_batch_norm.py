"""Precise BatchNorm: running statistics re-estimated as a population average before scoring.

A `BatchNormalization` layer scores with running statistics that follow the batch moments by
an exponential average (`moving = momentum * moving + (1 - momentum) * batch`). At Keras's
default momentum of 0.99, `0.99 ** n` of the statistics from `n` steps ago still weigh in:
after 100 steps 37 % is the initial mean 0 / variance 1 and much of the rest comes from
weights the network has since left. A short run then trains well in training mode and scores
badly in inference mode (training loss falling while validation loss rises). Re-estimating
the statistics of the current weights over a few training batches (Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm", the "precise BN" of pycls / Detectron2) removes that lag;
nothing else of the model changes.

The re-estimate runs the model in training mode on `steps` batches, with each trainable
BatchNorm layer's momentum set to `(k - 1) / k` for the k-th batch, so that its running mean
and variance end as the plain average of the `steps` batch moments. Frozen BatchNorm layers
(`trainable=False`, e.g. a pretrained trunk's) do not update in training mode and keep their
statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras


def batch_norm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """The trainable BatchNorm layers of `model`, nested models and layers included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def recalibrate_batch_norm(
    model: keras.Model, batches: Iterable, steps: int, stage: Callable | None = None
) -> int:
    """Sets every trainable BatchNorm layer's running statistics to their average over batches.

    Args:
        model: A built Keras model.
        batches: Training batches, `(images, targets)` or images alone, as the training data
            set yields them (an iterable or a `tf.data.Dataset`; only the first `steps` are
            read).
        steps: How many batches to average over, at least 1.
        stage: The task's training batch stage (`Task.train_batch_stage`), applied to each
            batch first, as `fit` does.

    Returns:
        The number of batches averaged (fewer than `steps` when `batches` ran out; 0 when the
        model has no trainable BatchNorm layer, which leaves it untouched).

    Raises:
        ValueError: `steps` is below 1.
    """
    if steps < 1:
        raise ValueError(f"precise BatchNorm steps = {steps}: expected at least 1")
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for batch in batches:
            if seen == steps:
                break
            if stage is not None:
                batch = stage(batch)
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            seen += 1
            for layer in layers:
                layer.momentum = (seen - 1) / seen  # 0 first: the batch's moments replace
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return seen


class PreciseBatchNorm(keras.callbacks.Callback):
    """Re-estimates the BatchNorm statistics on training batches before each validation.

    Validation, the best checkpoint and the saved model then use the statistics of the weights
    they score. Training carries on from the re-estimated statistics.

    Args:
        batches: The training data set (`fit`'s `x`).
        steps: Batches averaged per re-estimate.
        stage: The task's training batch stage, if any.
    """

    def __init__(self, batches, steps: int, stage: Callable | None = None):
        super().__init__()
        self.batches, self.steps, self.stage = batches, steps, stage

    def on_test_begin(self, logs=None):
        recalibrate_batch_norm(self.model, self.batches, self.steps, self.stage)
