"""`keras-dense evaluate` and `keras-dense predict` against direct NumPy computations."""

from __future__ import annotations

import importlib
import json

import cv2
import keras
import numpy as np
import pytest

import keras_dense.crf
from keras_dense import cli
from keras_dense.apps import FastRCNN, unet
from keras_dense.data import SHAPE_CLASSES, convert_shapes, normalize, read_examples
from keras_dense.evaluation.boundary_iou import boundary_counts
from keras_dense.layers.roi_pooling import RoIPooling
from keras_dense.prediction import inference
from keras_dense.prediction.palette import PALETTE, voc_palette
from keras_dense.utils.model_card import write_model_card


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_shapes")
    convert_shapes(str(root / "val"), 3, size=32, seed=3, progress=False)
    return str(root / "val-*.tfrecord")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = unet(num_classes=4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(tmp_path_factory.mktemp("segmenter") / "model.keras")
    model.save(path)
    write_model_card(
        path,
        {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)},
    )
    return path, model


def _direct_scores(model, rgb):
    return model.predict(np.asarray(normalize(rgb, "caffe"))[None], verbose=0)[0]


def test_evaluate_matches_direct_computation(shapes, segmenter, tmp_path):
    path, model = segmenter
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", path, "--data", shapes, "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    expected = np.zeros((4, 4), np.int64)
    intersections, unions = np.zeros(4), np.zeros(4)
    bands = np.zeros((2, 4), np.int64)
    for example in read_examples(shapes):
        predicted = np.argmax(_direct_scores(model, example["image"]), -1)
        truth = example["mask"].astype(np.int64)
        keep = truth != 255
        np.add.at(expected, (truth[keep], predicted[keep]), 1)
        bands += boundary_counts(truth, predicted, 4, 255)
        for c in range(4):
            intersections[c] += np.sum(keep & (truth == c) & (predicted == c))
            unions[c] += np.sum(keep & ((truth == c) | (predicted == c)))
    np.testing.assert_array_equal(report["confusion_matrix"], expected)
    present = unions > 0
    assert report["mean_iou"] == pytest.approx(np.mean(intersections[present] / unions[present]))
    boundary = bands[1] > 0
    assert report["boundary_iou"] == pytest.approx(np.mean(bands[0][boundary] / bands[1][boundary]))
    assert report["images"] == 3
    image = cv2.imread(str(out / "confusion_matrix.png"))
    assert image is not None and image.shape[0] > 40


def test_evaluate_bad_pattern_is_an_error(segmenter, tmp_path, capsys):
    path, _ = segmenter
    code = cli.main(["evaluate", "--model", path, "--data", str(tmp_path / "none-*.tfrecord")])
    assert code == 2 and "none-*.tfrecord" in capsys.readouterr().err


def test_evaluate_with_crf(shapes, segmenter, tmp_path):
    path, model = segmenter
    # The CRF is part of the package: a missing module fails here instead of taking another
    # branch.
    module = importlib.import_module("keras_dense.crf.dense_crf")
    dense_crf = module.dense_crf
    assert keras_dense.crf.dense_crf is dense_crf
    out = tmp_path / "crf"
    assert (
        cli.main(["evaluate", "--model", path, "--data", shapes, "--crf", "--output", str(out)])
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    expected = np.zeros((4, 4), np.int64)
    for example in read_examples(shapes):
        scores = _direct_scores(model, example["image"]).astype(np.float64)
        probabilities = np.exp(scores - scores.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        refined = dense_crf(probabilities.astype(np.float32), example["image"])
        np.add.at(expected, (example["mask"].ravel(), np.argmax(refined, -1).ravel()), 1)
    assert report["crf"] is True
    np.testing.assert_array_equal(report["confusion_matrix"], expected)


def test_voc_palette_bits():
    palette = voc_palette()
    # VOC colour map: id 1 dark red, 2 dark green, 3 olive, 15 (person) (192, 128, 128).
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in palette[:255]}) == 255


def test_predict_reports_bad_inputs_and_processes_the_rest(segmenter, tmp_path, capsys):
    path, model = segmenter
    rng = np.random.default_rng(0)
    good_a = rng.integers(0, 256, (32, 40, 3), np.uint8)
    good_b = rng.integers(0, 256, (24, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), good_a[..., ::-1])
    cv2.imwrite(str(tmp_path / "b.png"), good_b[..., ::-1])
    (tmp_path / "notes.png").write_text("this is not an image")
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    inputs = [str(tmp_path / n) for n in ("a.png", "notes.png", "b.png", "cut.png", "gone.png")]
    code = cli.main(["predict", "--model", path, *inputs, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    for bad in ("notes.png", "cut.png", "gone.png"):
        assert str(tmp_path / bad) in err
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png",
        "a_overlay.png",
        "b_mask.png",
        "b_overlay.png",
    ]
    for name, rgb in (("a", good_a), ("b", good_b)):
        mask = cv2.imread(str(out / f"{name}_mask.png"))[..., ::-1]
        predicted = np.argmax(_direct_scores(model, rgb), -1)
        np.testing.assert_array_equal(mask, PALETTE[predicted])
        blended = cv2.imread(str(out / f"{name}_overlay.png"))[..., ::-1]
        background = predicted == 0
        np.testing.assert_array_equal(blended[background], rgb[background])


def test_large_images_go_through_overlap_tiles(segmenter, monkeypatch):
    path, model = segmenter
    calls = []
    original = inference.predict_tiled

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_tiled", spy)
    monkeypatch.setattr(inference, "LARGE_SIDE", 60)
    rgb = np.random.default_rng(2).integers(0, 256, (56, 72, 3), np.uint8)
    card = {"normalization": "caffe", "input_channels": 3}
    tiled = inference.segment(model, rgb, card, tile_size=96)
    assert len(calls) == 1
    direct = _direct_scores(model, rgb)
    # Away from the border (where mirror padding and zero padding differ) the tiles agree
    # with one pass over the whole image.
    np.testing.assert_allclose(tiled[12:-12, 12:-12], direct[12:-12, 12:-12], atol=1e-3)
    small = rgb[:40, :40]
    inference.segment(model, small, card)
    assert len(calls) == 1  # small images go in one pass


def _tiny_fast_rcnn(num_classes: int = 3) -> FastRCNN:
    """A Fast R-CNN-shaped model whose box deltas are all zero (boxes = proposals)."""
    images = keras.Input((None, None, 3), name="images")
    rois = keras.Input((None, 4), name="rois")
    features = keras.layers.Conv2D(4, 3, strides=16, padding="same")(images)
    pooled = RoIPooling(2, 1.0 / 16.0, name="roi_pool")([features, rois])
    x = keras.layers.Reshape((-1, 16))(pooled)
    cls_score = keras.layers.Dense(num_classes + 1, name="cls_score")(x)
    bbox_pred = keras.layers.Dense(
        4 * (num_classes + 1), kernel_initializer="zeros", name="bbox_pred"
    )(x)
    return FastRCNN(inputs=[images, rois], outputs=[cls_score, bbox_pred])


def test_predict_detection_draws_boxes_in_image_pixels(tmp_path):
    from keras_dense.detection import selective_search

    keras.utils.set_random_seed(0)
    model = _tiny_fast_rcnn()
    path = str(tmp_path / "det.keras")
    model.save(path)
    names = ["circle", "square", "triangle"]
    write_model_card(
        path,
        {
            "task": "detection",
            "classes": names,
            "min_size": 96,
            "max_size": 160,
            "normalization": "caffe",
        },
    )
    rgb = np.full((60, 80, 3), 90, np.uint8)
    cv2.circle(rgb, (25, 30), 12, (250, 40, 40), -1)
    cv2.rectangle(rgb, (50, 10), (70, 30), (40, 250, 40), -1)
    cv2.imwrite(str(tmp_path / "scene.png"), rgb[..., ::-1])
    out = tmp_path / "out"
    args = ["predict", "--model", path, str(tmp_path / "scene.png"), "--output", str(out)]
    assert cli.main([*args, "--score-threshold", "0.0"]) == 0
    detections = json.loads((out / "scene_detections.json").read_text())
    drawn = cv2.imread(str(out / "scene_boxes.png"))
    assert drawn.shape == rgb.shape
    assert detections, "a zero threshold keeps detections"
    proposals = selective_search(rgb)
    for det in detections:
        assert det["class"] in names and names[det["label"] - 1] == det["class"]
        box = np.array(det["box_yxyx"])
        # Zero deltas: every box is a proposal, mapped back to the original image's pixels.
        assert np.min(np.abs(proposals - box).max(axis=1)) < 1.0
