"""Streaming segmentation metrics over a confusion matrix accumulated in the graph."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dense")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates a `(num_classes, num_classes)` confusion matrix over batches.

    Rows are true classes, columns predicted classes (`argmax` of `y_pred` over the last
    axis). Pixels labelled `ignore_label`, or with a label outside `[0, num_classes)`, are
    skipped. `result()` is the mean IoU over the classes that occur (in the truth or the
    predictions): `IoU_c = cm[c, c] / (sum(cm[c, :]) + sum(cm[:, c]) - cm[c, c])`.

    Args:
        num_classes: Number of classes.
        ignore_label: Label of pixels that do not count (255).
        name: Metric name.
        **kwargs: `keras.metrics.Metric` arguments.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, name: str = "mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float64",
            name="confusion",
            aggregation="sum",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true` (B, H, W) ids, `y_pred` (B, H, W, C) scores or logits."""
        classes = self.num_classes
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        predicted = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
        valid = (labels >= 0) & (labels < classes) & (labels != self.ignore_label)
        if sample_weight is not None:
            valid = valid & (ops.reshape(sample_weight, (-1,)) > 0)
        # One-hot products instead of bincount: XLA (jit_compile) cannot compile bincount.
        truth = (
            ops.one_hot(ops.where(valid, labels, 0), classes) * ops.cast(valid, "float32")[:, None]
        )
        counts = ops.matmul(ops.transpose(truth), ops.one_hot(predicted, classes))
        self.confusion.assign_add(ops.cast(counts, "float64"))

    def per_class_iou(self):
        """IoU per class (NaN-free: 0 where a class never occurs) and the occurrence mask."""
        cm = self.confusion
        true_positives = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - true_positives
        return ops.divide_no_nan(true_positives, union), union > 0

    def result(self):
        iou, present = self.per_class_iou()
        present = ops.cast(present, "float64")
        return ops.cast(ops.divide_no_nan(ops.sum(iou * present), ops.sum(present)), "float32")

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), "float64"))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "ignore_label": self.ignore_label})
        return config


@keras.saving.register_keras_serializable(package="keras_dense")
class PixelAccuracy(ConfusionMatrixMetric):
    """Share of labelled pixels predicted correctly, from the same confusion matrix.

    Args:
        num_classes: Number of classes.
        ignore_label: Label of pixels that do not count (255).
        name: Metric name.
        **kwargs: `keras.metrics.Metric` arguments.
    """

    def __init__(
        self, num_classes: int, ignore_label: int = 255, name: str = "pixel_accuracy", **kwargs
    ):
        super().__init__(num_classes, ignore_label, name=name, **kwargs)

    def result(self):
        cm = self.confusion
        return ops.cast(ops.divide_no_nan(ops.trace(cm), ops.sum(cm)), "float32")


def build_metrics(names, num_classes: int, ignore_label: int) -> list[keras.metrics.Metric]:
    """The metric objects for the recipe's `training.metrics` names."""
    classes = {"mean_iou": ConfusionMatrixMetric, "pixel_accuracy": PixelAccuracy}
    return [classes[name](num_classes, ignore_label, name=name) for name in names]
