"""The detection report: precision-recall curves, per-image F1, the gallery and report.html."""

from __future__ import annotations

import html
import json

import keras
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.evaluation import evaluator
from keras_dense.evaluation.gallery import Gallery
from keras_dense.evaluation.image_detection_score import image_f1
from keras_dense.evaluation.voc_map import average_precision, voc_detection_map
from keras_dense.utils.model_card import write_model_card
from tests.test_html_report import _Page

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 40.0]


def _found(boxes, labels, scores):
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "scores": np.asarray(scores, np.float32),
    }


def _truth(boxes, labels, difficult=None):
    truth = {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels)}
    if difficult is not None:
        truth["difficult"] = np.asarray(difficult, bool)
    return truth


@pytest.mark.parametrize(
    "found, truth, expected",
    [
        (_found([A, B], [1, 2], [0.9, 0.8]), _truth([A, B], [1, 2]), 1.0),
        # One hit, one miss, one false alarm: 2 / (2 + 1 + 1).
        (_found([A, [50, 50, 60, 60]], [1, 2], [0.9, 0.8]), _truth([A, B], [1, 2]), 0.5),
        # The right box with the wrong class is a false alarm and a miss.
        (_found([A], [2], [0.9]), _truth([A], [1]), 0.0),
        # A duplicate of a found box is a false alarm: 2 / (2 + 1).
        (_found([A, A], [1, 1], [0.9, 0.8]), _truth([A], [1]), 2 / 3),
        # Below the score threshold: not counted (a miss remains).
        (_found([A], [1], [0.3]), _truth([A], [1]), 0.0),
        # A difficult box neither counts as a miss nor makes its detection a false alarm.
        (_found([A, B], [1, 2], [0.9, 0.9]), _truth([A, B], [1, 2], [False, True]), 1.0),
        (_found([A], [1], [0.9]), _truth([A, B], [1, 2], [False, True]), 1.0),
        # Nothing to find and nothing found.
        (_found([], [], []), _truth([], []), 1.0),
    ],
)
def test_image_f1_on_cases_counted_by_hand(found, truth, expected):
    assert image_f1(found, truth) == pytest.approx(expected)


def test_curves_are_the_ones_the_ap_is_computed_from():
    # Class 1: 2 positives; detections by score: hit, false alarm, hit.
    detections = [_found([A, [50, 50, 60, 60], B], [1, 1, 1], [0.9, 0.8, 0.7])]
    truths = [_truth([A, B], [1, 1])]
    result = voc_detection_map(detections, truths, curves=True)
    recall, precision = result["curves"][1]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])
    assert result["ap"][1] == pytest.approx(average_precision(recall, precision, False))
    assert "curves" not in voc_detection_map(detections, truths)


def test_gallery_keeps_the_ends_and_draws_only_what_enters():
    drawn = []
    gallery = Gallery(2)
    for index, value in enumerate([0.5, 0.1, 0.9, float("nan"), 0.3, 0.95, 0.2]):
        gallery.add(f"r{index}", value, lambda i=index: drawn.append(i) or np.full((2, 2), i))
    items = gallery.items()
    assert [(item["kind"], item["value"]) for item in items] == [
        ("worst", 0.1),
        ("worst", 0.2),
        ("best", 0.95),
        ("best", 0.9),
    ]
    assert 3 not in drawn  # NaN: no score to rank by
    assert len(drawn) == len(set(drawn))  # drawn at most once each
    assert int(items[0]["strip"][0, 0]) == 1


def test_evaluate_writes_a_detection_report_with_curves_and_a_gallery(tmp_path, monkeypatch):
    """Detections are scripted per record, so each image's F1 is known: 0, 2/3, 1 and 0.8."""
    from keras_dense.apps import faster_rcnn
    from tests.test_reliability_detection import CLASSES, TINY_FASTER, H, W, example, write_shard

    keras.utils.set_random_seed(0)
    path = str(tmp_path / "frcnn.keras")
    faster_rcnn(num_classes=len(CLASSES), **TINY_FASTER).save(path)
    card = {"task": "detection", "normalization": "caffe", "classes": CLASSES}
    write_model_card(path, {**card, "min_size": H, "max_size": W, "background_outputs": 1})
    boxes = [(0.1, 0.1, 0.6, 0.5), (0.3, 0.5, 0.9, 0.95)]
    records = [example(source_id=f"r{k}", boxes=boxes, labels=(1, 2)) for k in range(4)]
    data = write_shard(tmp_path / "val", records)

    size = np.array([H, W, H, W], np.float32)
    truth_boxes = np.asarray(boxes, np.float32) * size
    miss = [0.0, 0.0, 2.0, 2.0]
    scripted = {
        "r0": _found([], [], []),
        "r1": _found([truth_boxes[0]], [1], [0.9]),
        "r2": _found(truth_boxes, [1, 2], [0.9, 0.6]),
        "r3": _found([*truth_boxes, miss], [1, 2, 3], [0.9, 0.6, 0.7]),
    }
    expected_f1 = {"r0": 0.0, "r1": 2 / 3, "r2": 1.0, "r3": 0.8}

    def scripted_detections(model, card, example, *args):
        truth = _truth(example["boxes"] * size, example["labels"])
        return scripted[example["source_id"]], truth

    monkeypatch.setattr(evaluator, "example_detections", scripted_detections)
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", path, "--data", data, "--output", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert not [key for key in metrics if key.startswith("_")]
    page_text = (out / "report.html").read_text()
    page = _Page()
    page.feed(page_text)
    page.close()
    assert page.stack == []
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)
    assert "https://" not in page_text
    assert "http://" not in page_text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    text = "".join(page.text)
    assert f"{metrics['map']:.4f}" in text
    # One precision-recall curve per class with ground truth (a and b; c has none).
    assert page_text.count("<polyline") == len(metrics["ap"]) == 2
    # Gallery: all four records by F1, worst first, then best first.
    captions = [
        html.unescape(chunk.split("</figcaption>")[0])
        for chunk in page_text.split("<figcaption>")[1:]
    ]
    shown = [
        (c.split(":")[0].split("'")[1], float(c.split("F1 ")[1].split(" ")[0])) for c in captions
    ]
    by_f1 = sorted(expected_f1, key=expected_f1.get)
    assert [record for record, _ in shown] == by_f1 + by_f1[::-1]
    for record, value in shown:
        assert value == pytest.approx(expected_f1[record], abs=1e-4)
    assert len(page.images) == 8
