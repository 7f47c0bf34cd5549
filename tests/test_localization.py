"""Localisation without boxes: class maps, CAM, points, boxes and their metrics."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import apps
from keras_dense.evaluation import corloc, multilabel_average_precision, pointing_game
from keras_dense.localization import (
    boxes_from_maps,
    class_activation_maps,
    class_maps,
    points_from_maps,
)


def _images(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------------------ class_maps


def test_class_maps_of_a_wsl_classifier():
    model = apps.wsl_classifier(num_classes=3, pooling="gap", maps_per_class=2)
    images = _images((2, 64, 48, 3), scale=50.0)
    coarse = class_maps(model, images, upsample=False)
    assert coarse.shape == (2, 4, 3, 3)
    # GAP of the per-class averaged maps is the image logit.
    np.testing.assert_allclose(
        coarse.mean(axis=(1, 2)), np.asarray(model(images)), rtol=1e-4, atol=1e-4
    )
    raw = np.asarray(keras.Model(model.inputs, model.get_layer("class_maps").output)(images))
    np.testing.assert_allclose(coarse[..., 1], raw[..., 2:4].mean(-1), rtol=1e-5, atol=1e-5)
    fine = class_maps(model, images)
    assert fine.shape == (2, 64, 48, 3)
    want = tf.image.resize(coarse, (64, 48), method="bilinear").numpy()
    np.testing.assert_allclose(fine, want, rtol=1e-5, atol=1e-5)


def test_class_maps_needs_the_class_maps_layer():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="score")(inputs))
    with pytest.raises(ValueError, match="class_maps"):
        class_maps(model, _images((1, 8, 8, 3)))


# ------------------------------------------------------------------------------------- CAM


def _gap_dense_model(activation=None, separate_activation=False, dropout=False):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(4, activation=activation, bias_initializer="random_normal")(x)
    if separate_activation:
        x = keras.layers.Activation("softmax")(x)
    return keras.Model(inputs, x)


def test_cam_mean_plus_bias_is_the_logit_of_a_linear_dense():
    model = _gap_dense_model(dropout=True)
    images = _images((3, 20, 18, 3))
    maps = class_activation_maps(model, images, upsample=False)
    assert maps.shape == (3, 10, 9, 4)
    bias = model.layers[-1].bias.numpy()
    logits = np.asarray(model(images))
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + bias, logits, rtol=1e-5, atol=1e-6)
    assert class_activation_maps(model, images).shape == (3, 20, 18, 4)


@pytest.mark.parametrize("separate", [False, True], ids=["dense-softmax", "softmax-layer"])
def test_cam_gives_the_logit_before_softmax(separate):
    model = _gap_dense_model(
        activation=None if separate else "softmax", separate_activation=separate
    )
    images = _images((2, 16, 16, 3))
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    logits = class_activation_maps(model, images, upsample=False).mean(axis=(1, 2))
    logits = logits + dense.bias.numpy()
    log_probabilities = np.log(np.asarray(model(images), np.float64))
    np.testing.assert_allclose(_log_softmax(logits), log_probabilities, atol=1e-5)


def test_cam_of_keras_applications_resnet50():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=4)
    images = _images((1, 64, 64, 3), scale=20.0)
    maps = class_activation_maps(model, images, upsample=False)
    assert maps.shape == (1, 2, 2, 4)
    logits = maps.mean(axis=(1, 2)) + model.get_layer("predictions").bias.numpy()
    log_probabilities = np.log(np.asarray(model(images), np.float64))
    np.testing.assert_allclose(_log_softmax(logits), log_probabilities, atol=1e-4)


@pytest.mark.parametrize("kind", ["sequential", "nested-backbone"])
def test_cam_of_sequential_and_nested_models(kind):
    if kind == "sequential":
        model = keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                keras.layers.Conv2D(4, 3),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(2, bias_initializer="random_normal"),
            ]
        )
    else:
        backbone = keras.applications.MobileNetV2(
            weights=None, include_top=False, input_shape=(32, 32, 3)
        )
        inputs = keras.Input((32, 32, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2, bias_initializer="random_normal")(pooled))
    size = model.inputs[0].shape[1]
    images = _images((2, size, size, 3))
    maps = class_activation_maps(model, images, upsample=False)
    bias = model.layers[-1].bias.numpy()
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + bias, np.asarray(model(images)), atol=1e-5)


def test_cam_maps_are_the_weighted_features():
    # GAP directly on the input: the features are the image channels, the kernel mixes them.
    inputs = keras.Input((None, None, 2))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.array([[1.0, 2.0], [0.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    images = _images((1, 3, 4, 2))
    maps = class_activation_maps(model, images, upsample=False)
    np.testing.assert_allclose(maps[..., 0], images[..., 0], atol=1e-6)
    np.testing.assert_allclose(maps[..., 1], 2 * images[..., 0] - images[..., 1], atol=1e-6)


def test_cam_refuses_other_heads():
    inputs = keras.Input((8, 8, 3))
    flat = keras.layers.Dense(2)(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="GlobalAveragePooling2D.*Flatten"):
        class_activation_maps(keras.Model(inputs, flat), _images((1, 8, 8, 3)))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    two = keras.layers.Dense(2)(keras.layers.Dense(3)(pooled))
    with pytest.raises(ValueError, match="fed by Dense"):
        class_activation_maps(keras.Model(inputs, two), _images((1, 8, 8, 3)))
    conv = keras.layers.Conv2D(2, 1)(inputs)
    with pytest.raises(ValueError, match="not a Dense layer"):
        class_activation_maps(keras.Model(inputs, conv), _images((1, 8, 8, 3)))


# -------------------------------------------------------------------------- points, boxes


def test_points_are_the_argmax_of_each_map():
    maps = _images((3, 5, 7, 4), seed=1)
    points = points_from_maps(maps)
    assert points.shape == (3, 4, 2) and points.dtype == np.int64
    for b in range(3):
        for c in range(4):
            y, x = np.unravel_index(np.argmax(maps[b, :, :, c]), (5, 7))
            assert tuple(points[b, c]) == (y, x)


def test_boxes_of_the_largest_region_above_the_threshold():
    heat = np.zeros((10, 12), np.float32)
    heat[1:3, 1:4] = 1.0  # small, strong: 6 px, holds the maximum
    heat[5:9, 4:10] = 0.5  # large, weaker: 24 px
    heat[3, 4] = 0.3  # touches the small blob diagonally only: 8-connected, so it joins it
    maps = np.stack([heat, -heat - 1.0], axis=-1)[None]  # second map: no positive maximum
    boxes = boxes_from_maps(maps, threshold=0.2)
    assert boxes.shape == (1, 2, 4) and boxes.dtype == np.int64
    assert tuple(boxes[0, 0]) == (5, 4, 8, 9)  # inclusive ends
    assert tuple(boxes[0, 1]) == (0, 0, 0, 0)  # the single pixel of its maximum
    assert tuple(boxes_from_maps(maps, threshold=0.6)[0, 0]) == (1, 1, 2, 3)
    heat[4, 5] = 0.3  # now the diagonal link joins both blobs into one region
    merged = boxes_from_maps(heat[None, :, :, None], threshold=0.2)
    assert tuple(merged[0, 0]) == (1, 1, 8, 9)
    with pytest.raises(ValueError, match="threshold"):
        boxes_from_maps(maps, threshold=1.5)


# --------------------------------------------------------------------------- pointing game


def _hand_masks():
    mask = np.zeros((1, 10, 10), np.int64)
    mask[0, 2:5, 2:5] = 1
    mask[0, 8, 8] = 2
    boxes = [{"boxes": [[2, 2, 4, 4], [8, 8, 8, 8]], "labels": [1, 2]}]
    # class 0 (id 5) absent; class 1 on its object; class 2 three pixels left of its object
    points = np.array([[[0, 0], [3, 3], [8, 5]]])
    return mask, boxes, points


@pytest.mark.parametrize("form", ["masks", "boxes"])
@pytest.mark.parametrize(("tolerance", "class2_hit"), [(0, False), (2.9, False), (3, True)])
def test_pointing_game_hand_case(form, tolerance, class2_hit):
    mask, boxes, points = _hand_masks()
    truth = mask if form == "masks" else boxes
    result = pointing_game(points, truth, tolerance=tolerance, class_ids=[5, 1, 2])
    assert list(result["counts"]) == [0, 1, 1]
    assert np.isnan(result["per_class"][0])
    assert result["per_class"][1] == 1.0 and result["per_class"][2] == float(class2_hit)
    assert result["accuracy"] == pytest.approx((1 + class2_hit) / 2)


def test_pointing_game_masks_against_brute_force():
    rng = np.random.default_rng(4)
    masks = rng.integers(0, 4, (3, 12, 14)) * (rng.random((3, 12, 14)) < 0.15)
    masks[1] = np.where(masks[1] == 2, 0, masks[1])  # class 2 absent from image 1
    masks[0, 0, 0] = 255  # ignored value
    points = rng.integers(0, 12, (3, 3, 2))
    class_ids = [1, 2, 3]
    for tolerance in (0, 1.5, 4):
        hits = np.zeros(3)
        counts = np.zeros(3)
        for n in range(3):
            for c, cid in enumerate(class_ids):
                pixels = np.argwhere(masks[n] == cid)
                if len(pixels) == 0:
                    continue
                counts[c] += 1
                distance = np.hypot(*(pixels - points[n, c]).T).min()
                hits[c] += distance <= tolerance
        result = pointing_game(points, masks, tolerance=tolerance, class_ids=class_ids)
        np.testing.assert_array_equal(result["hits"], hits)
        np.testing.assert_array_equal(result["counts"], counts)
        assert result["accuracy"] == pytest.approx(hits.sum() / counts.sum())


def test_pointing_game_checks_its_arguments():
    mask, _, points = _hand_masks()
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(points, mask, tolerance=-1)
    with pytest.raises(ValueError, match="class_ids"):
        pointing_game(points, mask, class_ids=[1, 2])
    with pytest.raises(ValueError, match="ground_truth"):
        pointing_game(points, np.zeros((2, 10, 10), np.int64))


# ---------------------------------------------------------------------------------- CorLoc


def test_corloc_hand_case():
    boxes = np.array(
        [
            [[0, 0, 9, 9], [0, 0, 9, 9], [5, 5, 6, 6]],
            [[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 1, 1]],
        ]
    )
    ground_truth = [
        # class 0: IoU 50 / 100 = 0.5 (correct); class 1: best of 40/100 and 0 -> 0.4
        {"boxes": [[0, 0, 9, 4], [0, 0, 9, 3], [20, 20, 30, 30]], "labels": [0, 1, 1]},
        # class 0 absent; class 1: two boxes, the second one matches; class 2: 0.25
        {"boxes": [[50, 50, 60, 60], [0, 0, 9, 9], [0, 0, 1, 7]], "labels": [1, 1, 2]},
    ]
    result = corloc(boxes, ground_truth)
    assert list(result["counts"]) == [1, 2, 1]
    assert list(result["hits"]) == [1, 1, 0]
    assert result["corloc"] == pytest.approx(2 / 4)
    np.testing.assert_allclose(result["per_class"], [1.0, 0.5, 0.0])
    assert result["mean_class_corloc"] == pytest.approx(0.5)
    assert corloc(boxes, ground_truth, iou_threshold=0.2)["hits"][2] == 1
    with pytest.raises(ValueError, match="ground_truth_boxes"):
        corloc(boxes, ground_truth[:1])


# ------------------------------------------------------------------------------------- mAP


def _brute_force_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    positives = np.nonzero(labels == 1)[0]
    precisions = []
    for i in positives:
        above = scores >= scores[i]
        precisions.append(labels[above].sum() / above.sum())
    return float(np.mean(precisions))


def test_multilabel_ap_hand_case():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    result = multilabel_average_precision(scores, labels)
    assert result["ap"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(result["ap"][1]) and result["excluded"] == [1]
    assert result["map"] == pytest.approx((1 + 2 / 3) / 2)


def test_multilabel_ap_against_brute_force_with_ties():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=(40, 5)), 1)  # many ties
    labels = (rng.random((40, 5)) < 0.3).astype(np.int64)
    labels[:, 4] = 0
    result = multilabel_average_precision(scores, labels)
    want = [_brute_force_ap(scores[:, c], labels[:, c]) for c in range(4)]
    np.testing.assert_allclose(result["ap"][:4], want, rtol=1e-12)
    assert result["excluded"] == [4]
    assert result["map"] == pytest.approx(np.mean(want))
    with pytest.raises(ValueError, match="0 or 1"):
        multilabel_average_precision(scores, labels * 2)


def test_the_localization_package_imports_at_module_level():
    """One concept per module, every import at the top (no function-local imports)."""
    import ast
    import pathlib

    import keras_dense.localization as package

    folder = pathlib.Path(package.__file__).parent
    assert folder.name == "localization" and len(list(folder.glob("*.py"))) > 5
    local = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local += [
                    f"{path.name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, (ast.Import, ast.ImportFrom))
                ]
    assert not local, f"function-local imports: {local}"
    for name in package.__all__:
        value = getattr(package, name)
        assert name.isupper() or value.__module__.startswith("keras_dense.localization."), name
