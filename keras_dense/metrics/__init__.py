"""Keras (streaming, in-graph) metrics for dense prediction, registered under `keras_dense`."""

from keras_dense.metrics.confusion_matrix import (
    ConfusionMatrixMetric,
    PixelAccuracy,
    build_metrics,
)

__all__ = ["ConfusionMatrixMetric", "PixelAccuracy", "build_metrics"]
