"""Soft Dice loss over the counted pixels of a batch, averaged over the classes present."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_dense.losses.pixels import (
    MaskedPixelLoss,
    class_weight_vector,
    flat_pixels,
    mean_over_present,
)


@keras.saving.register_keras_serializable(package="keras_dense")
class DiceLoss(MaskedPixelLoss):
    """Soft Dice loss (Milletari et al. 2016) of softmax probabilities.

    For each class c, over all counted pixels of the batch (label in `[0, K)` and not
    `ignore_label`), with p_c the predicted probability and g_c the one-hot truth:
    `L_c = 1 - (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)`. The loss is
    the mean of `L_c` over the classes present in `y_true` (weighted by `class_weights` when
    given); a batch without counted pixels has loss 0. Uncounted pixels get zero gradient.

    Args:
        smooth: Added to numerator and denominator (>= 0).
        ignore_label: Label value of pixels that do not count (255).
        class_weights: Optional weight per class for the mean over the classes.
        from_logits: `y_pred` holds logits (True) or probabilities (False).
        name: Loss name.
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `dtype`).
    """

    def __init__(
        self,
        smooth: float = 1.0,
        ignore_label: int = 255,
        class_weights: Sequence[float] | None = None,
        from_logits: bool = True,
        name: str = "dice_loss",
        **kwargs,
    ):
        super().__init__(ignore_label, class_weights, from_logits, name, **kwargs)
        if not float(smooth) >= 0:
            raise ValueError(f"smooth={smooth!r}: expected a non-negative number")
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        """The batch's Dice loss (a scalar)."""
        num_classes = y_pred.shape[-1]
        _, probs, labels, valid = flat_pixels(y_true, y_pred, self.ignore_label, self.from_logits)
        truth = ops.one_hot(labels, num_classes) * valid[:, None]
        probs = probs * valid[:, None]
        intersection = ops.sum(probs * truth, axis=0)
        total = ops.sum(probs, axis=0) + ops.sum(truth, axis=0)
        per_class = 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth)
        present = ops.cast(ops.sum(truth, axis=0) > 0, "float32")
        weights = class_weight_vector(self.class_weights, num_classes)
        return mean_over_present(per_class, present, weights)

    def get_config(self):
        config = super().get_config()
        config.update({"smooth": self.smooth})
        return config
