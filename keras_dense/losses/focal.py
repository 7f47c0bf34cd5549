"""Focal loss (Lin et al. 2017) over the counted pixels."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_dense.losses.pixels import MaskedPixelLoss, flat_pixels, weighted_pixel_losses


@keras.saving.register_keras_serializable(package="keras_dense")
class FocalLoss(MaskedPixelLoss):
    """Softmax focal loss `-(1 - p_t)^gamma * log(p_t)`, the mean over the counted pixels.

    `p_t` is the probability of the true class; `log(p_t)` comes from `log_softmax` of the
    logits, so the loss is finite for any logits. With `class_weights` the mean is weighted,
    `sum_i w[y_i] FL_i / sum_i w[y_i]`, as in `MaskedSparseCrossEntropy` (gamma = 0 gives that
    loss). Pixels whose label is `ignore_label` or outside `[0, K)` do not count (zero
    gradient); a batch without counted pixels has loss 0.

    Args:
        gamma: Focusing parameter (>= 0).
        ignore_label: Label value of pixels that do not count (255).
        class_weights: Optional weight per class (length = number of classes).
        from_logits: `y_pred` holds logits (True) or probabilities (False).
        name: Loss name.
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `dtype`).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        ignore_label: int = 255,
        class_weights: Sequence[float] | None = None,
        from_logits: bool = True,
        name: str = "focal_loss",
        **kwargs,
    ):
        super().__init__(ignore_label, class_weights, from_logits, name, **kwargs)
        if not float(gamma) >= 0:
            raise ValueError(f"gamma={gamma!r}: expected a non-negative number")
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        """Per-pixel losses scaled so that the mean reduction gives the weighted mean."""
        num_classes = y_pred.shape[-1]
        log_probs, _, labels, valid = flat_pixels(
            y_true, y_pred, self.ignore_label, self.from_logits
        )
        log_pt = ops.squeeze(ops.take_along_axis(log_probs, labels[:, None], axis=-1), -1)
        if self.gamma == 0:  # x ** 0 has a NaN gradient at x = 0 (p_t = 1)
            focal = -log_pt
        else:
            focus = ops.power(ops.maximum(1.0 - ops.exp(log_pt), 0.0), self.gamma)
            focal = -focus * log_pt
        return weighted_pixel_losses(focal, labels, valid, self.class_weights, num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma})
        return config
