"""Shared preparation of segmentation losses: flat probabilities, labels and a validity mask."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


def check_class_weights(class_weights: Sequence[float] | None) -> list[float] | None:
    """`class_weights` as a list of floats (None when empty).

    Raises:
        ValueError: A negative weight (the argument is named).
    """
    weights = None if not class_weights else [float(w) for w in class_weights]
    if weights is not None and min(weights) < 0:
        raise ValueError(f"class_weights={class_weights!r}: expected non-negative numbers")
    return weights


def class_weight_vector(class_weights: list[float] | None, num_classes: int):
    """The (K,) float32 weight tensor (ones without weights).

    Raises:
        ValueError: The weights do not have one entry per class.
    """
    if class_weights is None:
        return ops.ones((num_classes,), "float32")
    if len(class_weights) != num_classes:
        raise ValueError(
            f"class_weights has {len(class_weights)} entries but the model predicts "
            f"{num_classes} classes"
        )
    return ops.convert_to_tensor(class_weights, "float32")


def pixel_labels(y_true, y_pred, ignore_label: int):
    """Labels of a batch next to its predictions, and which pixels count.

    Args:
        y_true: (B, H, W) or (B, H, W, 1) integer labels.
        y_pred: (B, H, W, K) logits or probabilities.
        ignore_label: Label of pixels that do not count.

    Returns:
        `(labels (B, H, W) int32 with uncounted pixels set to 0, valid (B, H, W) float32 1 for
        counted pixels)`. A pixel counts when its label is in `[0, K)` and is not
        `ignore_label`.
    """
    num_classes = y_pred.shape[-1]
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == len(y_pred.shape):
        labels = ops.squeeze(labels, axis=-1)
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    valid = ops.logical_and(valid, labels != ignore_label)
    return ops.where(valid, labels, 0), ops.cast(valid, "float32")


def log_probabilities(y_pred, from_logits: bool):
    """float32 log-probabilities of logits (`from_logits`) or of probabilities (clipped)."""
    y_pred = ops.cast(y_pred, "float32")
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    return ops.log(ops.clip(y_pred, 1e-7, 1.0))


def flat_pixels(y_true, y_pred, ignore_label: int, from_logits: bool):
    """Flattens a batch into per-pixel rows.

    Args:
        y_true: (B, H, W) or (B, H, W, 1) integer labels.
        y_pred: (B, H, W, K) logits (`from_logits`) or probabilities.
        ignore_label: Label of pixels that do not count.
        from_logits: Whether `y_pred` holds logits.

    Returns:
        `(log_probs (N, K), probs (N, K), labels (N,) int32 with uncounted pixels set to 0,
        valid (N,) float32 1 for counted pixels)`, as `pixel_labels` counts them.
    """
    labels, valid = pixel_labels(y_true, y_pred, ignore_label)
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1, y_pred.shape[-1]))
    probs = ops.softmax(y_pred, axis=-1) if from_logits else y_pred
    log_probs = log_probabilities(y_pred, from_logits)
    return log_probs, probs, ops.reshape(labels, (-1,)), ops.reshape(valid, (-1,))


def weighted_pixel_losses(
    losses, labels, valid, class_weights: list[float] | None, num_classes: int
):
    """Per-pixel `losses` scaled so that Keras' mean reduction gives their weighted mean.

    The result's mean is `sum_i w_i * L_i / sum_i w_i` with `w_i = class_weights[labels_i]`
    (1 without weights) on counted pixels and 0 elsewhere; 0 when no pixel counts.

    Args:
        losses: Per-pixel losses, any shape.
        labels: int32 labels of the same shape (uncounted pixels any valid class).
        valid: float32 1 for counted pixels, of the same shape.
        class_weights: Optional weight per class.
        num_classes: Number of classes K (`class_weights` must have K entries).

    Returns:
        The scaled losses, shaped like `losses`.

    Raises:
        ValueError: `class_weights` does not have K entries.
    """
    weights = ops.take(class_weight_vector(class_weights, num_classes), labels) * valid
    total = ops.cast(ops.size(losses), "float32")
    return losses * weights * ops.divide_no_nan(total, ops.sum(weights))


def mean_over_present(per_class, present, weights):
    """Weighted mean of (K,) per-class losses over the classes present; 0 when none is."""
    w = present * weights
    return ops.divide_no_nan(ops.sum(per_class * w), ops.sum(w))


class MaskedPixelLoss(keras.losses.Loss):
    """Base of the per-pixel segmentation losses: the arguments they all share.

    Pixels whose label is `ignore_label` or outside `[0, K)` do not count (and get zero
    gradient); the losses compute in float32 whatever the dtype policy.

    Args:
        ignore_label: Label value of pixels that do not count (255).
        class_weights: Optional non-negative weight per class.
        from_logits: `y_pred` holds logits (True) or probabilities (False).
        name: Loss name; the class's `default_name` when not given.
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `dtype`).
    """

    default_name: str | None = None

    def __init__(
        self,
        ignore_label: int = 255,
        class_weights: Sequence[float] | None = None,
        from_logits: bool = True,
        name: str | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name or self.default_name, **kwargs)
        self.ignore_label = int(ignore_label)
        self.class_weights = check_class_weights(class_weights)
        self.from_logits = bool(from_logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ignore_label": self.ignore_label,
                "class_weights": self.class_weights,
                "from_logits": self.from_logits,
            }
        )
        return config
