"""Segmentation loss: per-pixel softmax cross-entropy that skips the ignore label."""

from __future__ import annotations

import keras
from keras import ops

from keras_dense.losses.pixels import (
    MaskedPixelLoss,
    log_probabilities,
    pixel_labels,
    weighted_pixel_losses,
)


@keras.saving.register_keras_serializable(package="keras_dense")
class MaskedSparseCrossEntropy(MaskedPixelLoss):
    """Sparse softmax cross-entropy over pixels, skipping `ignore_label`, with class weights.

    The loss of a batch is the weighted mean over its labelled pixels:
    `sum_i w[y_i] * CE_i / sum_i w[y_i]`, with `w = 1` when no class weights are given (the
    plain mean over pixels whose label is not `ignore_label`). Labels outside
    `[0, num_classes)` other than `ignore_label` are skipped too. A batch without any
    labelled pixel has loss 0.

    Takes the arguments of `MaskedPixelLoss` (`ignore_label`, `class_weights` with one weight
    per class, `from_logits`, `name`, Keras `Loss` arguments).
    """

    default_name = "masked_sparse_cross_entropy"

    def call(self, y_true, y_pred):
        """Per-pixel losses scaled so that the mean reduction gives the weighted mean."""
        num_classes = y_pred.shape[-1]
        labels, valid = pixel_labels(y_true, y_pred, self.ignore_label)
        log_probs = log_probabilities(y_pred, self.from_logits)
        picked = ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1)
        cross_entropy = -ops.squeeze(picked, axis=-1)
        return weighted_pixel_losses(cross_entropy, labels, valid, self.class_weights, num_classes)
