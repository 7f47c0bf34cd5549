"""Segmentation scores and the streaming Keras metrics against brute-force NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from keras_dense.evaluation.confusion_image import confusion_matrix_image
from keras_dense.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores
from keras_dense.metrics.confusion_matrix import ConfusionMatrixMetric, PixelAccuracy

IGNORE = 255


def _random_case(seed: int, classes: int = 4, shape=(3, 17, 19)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, shape)
    labels[rng.random(shape) < 0.2] = IGNORE
    predictions = np.where(
        rng.random(shape) < 0.6, labels % classes, rng.integers(0, classes, shape)
    )
    return labels, predictions


def _reference_scores(labels, predictions, classes):
    """Scores from pixel sets, one class at a time (no confusion matrix)."""
    keep = labels != IGNORE
    t, p = labels[keep], predictions[keep]
    ious, present, accuracies = [], [], []
    for c in range(classes):
        inter = np.sum((t == c) & (p == c))
        union = np.sum((t == c) | (p == c))
        present.append(union > 0)
        ious.append(inter / union if union else 0.0)
        if np.sum(t == c):
            accuracies.append(inter / np.sum(t == c))
    ious = np.array(ious)
    freq = np.array([np.mean(t == c) for c in range(classes)])
    return {
        "mean_iou": ious[np.array(present)].mean(),
        "pixel_accuracy": np.mean(t == p),
        "mean_accuracy": np.mean(accuracies),
        "frequency_weighted_iou": np.sum(freq * ious),
        "iou": ious,
    }


def test_confusion_matrix_matches_pixel_loop():
    labels, predictions = _random_case(0)
    cm = confusion_matrix(labels, predictions, 4, IGNORE)
    expected = np.zeros((4, 4), np.int64)
    for t, p in zip(labels.ravel(), predictions.ravel()):
        if t != IGNORE:
            expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == np.sum(labels != IGNORE)


@pytest.mark.parametrize("seed", [1, 2])
def test_scores_match_reference(seed):
    labels, predictions = _random_case(seed, classes=5)
    scores = segmentation_scores(confusion_matrix(labels, predictions, 5, IGNORE))
    ref = _reference_scores(labels, predictions, 5)
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "frequency_weighted_iou"):
        assert scores[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_allclose(list(scores["per_class_iou"].values()), ref["iou"], atol=1e-12)


def test_absent_class_is_left_out_of_the_mean():
    labels = np.array([[0, 0, 1, 1]])
    predictions = np.array([[0, 1, 1, 1]])
    scores = segmentation_scores(confusion_matrix(labels, predictions, 3), ["a", "b", "c"])
    assert scores["per_class_iou"]["c"] is None
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="equal shapes"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="class_names"):
        segmentation_scores(np.eye(2), ["only one"])


def test_streaming_metrics_equal_numpy_over_batches():
    classes = 4
    metric = ConfusionMatrixMetric(classes, IGNORE)
    accuracy = PixelAccuracy(classes, IGNORE)
    rng = np.random.default_rng(3)
    all_labels, all_predictions = [], []
    for seed in range(3):
        labels, predictions = _random_case(10 + seed, classes)
        logits = rng.normal(size=(*labels.shape, classes)).astype(np.float32)
        # Make the argmax equal to `predictions`.
        np.put_along_axis(logits, predictions[..., None], 10.0, axis=-1)
        metric.update_state(labels, logits)
        accuracy.update_state(labels, logits)
        all_labels.append(labels)
        all_predictions.append(predictions)
    labels, predictions = np.concatenate(all_labels), np.concatenate(all_predictions)
    ref = _reference_scores(labels, predictions, classes)
    np.testing.assert_array_equal(
        np.asarray(metric.confusion), confusion_matrix(labels, predictions, classes, IGNORE)
    )
    assert float(metric.result()) == pytest.approx(ref["mean_iou"], abs=1e-6)
    assert float(accuracy.result()) == pytest.approx(ref["pixel_accuracy"], abs=1e-6)
    metric.reset_state()
    assert float(np.asarray(metric.confusion).sum()) == 0.0


def test_confusion_image_shades_follow_row_shares():
    cm = np.array([[90, 10], [0, 100]])
    image = confusion_matrix_image(cm, ["background", "object"], cell=40)
    assert image.dtype == np.uint8 and image.ndim == 3
    # A perfect diagonal is the darkest shade; a zero cell stays white.
    dark = image.reshape(-1, 3).min(axis=0)
    assert dark[0] < 60 and (image == 255).all(axis=-1).any()
