"""Segmentation loss: per-pixel softmax cross-entropy that skips the ignore label."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_dense.losses.pixels import MaskedPixelLoss


@keras.saving.register_keras_serializable(package="keras_dense")
class MaskedSparseCrossEntropy(MaskedPixelLoss):
    """Sparse softmax cross-entropy over pixels, skipping `ignore_label`, with class weights.

    The loss of a batch is the weighted mean over its labelled pixels:
    `sum_i w[y_i] * CE_i / sum_i w[y_i]`, with `w = 1` when no class weights are given (the
    plain mean over pixels whose label is not `ignore_label`). Labels outside
    `[0, num_classes)` other than `ignore_label` are skipped too. A batch without any
    labelled pixel has loss 0.

    Args:
        ignore_label: Label value of pixels that do not count (255).
        class_weights: Optional weight per class (length = number of classes).
        from_logits: `y_pred` holds logits (True) or probabilities (False).
        name: Loss name.
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `dtype`).
    """

    def __init__(
        self,
        ignore_label: int = 255,
        class_weights: Sequence[float] | None = None,
        from_logits: bool = True,
        name: str = "masked_sparse_cross_entropy",
        **kwargs,
    ):
        super().__init__(ignore_label, class_weights, from_logits, name, **kwargs)

    def call(self, y_true, y_pred):
        """Per-pixel losses scaled so that the mean reduction gives the weighted mean."""
        y_pred = ops.cast(y_pred, "float32")
        num_classes = y_pred.shape[-1]
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        valid = ops.logical_and(labels >= 0, labels < num_classes)
        valid = ops.logical_and(valid, labels != self.ignore_label)
        safe = ops.where(valid, labels, 0)
        if self.from_logits:
            log_probs = ops.log_softmax(y_pred, axis=-1)
        else:
            log_probs = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        picked = ops.take_along_axis(log_probs, ops.expand_dims(safe, -1), axis=-1)
        cross_entropy = -ops.squeeze(picked, axis=-1)
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(
                    f"class_weights has {len(self.class_weights)} entries but the model "
                    f"predicts {num_classes} classes"
                )
            weights = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe)
        else:
            weights = ops.ones_like(cross_entropy)
        weights = ops.where(valid, weights, 0.0)
        # The mean reduction divides by the pixel count; rescale so it divides by sum(w).
        total = ops.cast(ops.size(cross_entropy), "float32")
        scale = ops.divide_no_nan(total, ops.sum(weights))
        return cross_entropy * weights * scale
