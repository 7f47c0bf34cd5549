"""Pseudo-labels from class maps: the rule, the CRF path and `keras-dense pseudo-label`."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_dense import apps, cli
from keras_dense.data import convert_shapes, read_examples
from keras_dense.localization import (
    class_maps,
    crf_pseudo_label_masks,
    pseudo_label_masks,
    pseudo_label_probabilities,
)
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.normalization import normalize


def _reference(maps, labels, threshold):
    """Loop-by-loop NumPy reference of the pseudo-label rule."""
    b, h, w, c = maps.shape
    out = np.zeros((b, h, w), np.uint8)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                best, best_value = 0, -np.inf
                for k in range(c):
                    peak = maps[i, :, :, k].max()
                    if not labels[i, k] or peak <= 0:
                        continue
                    value = maps[i, y, x, k] / peak
                    if value >= threshold and value > best_value:
                        best, best_value = k + 1, value
                out[i, y, x] = best
    return out


def _hand_made_maps():
    maps = np.zeros((2, 6, 7, 3), np.float32)
    maps[0, 1:3, 1:3, 0] = [[4.0, 2.0], [1.0, 3.0]]  # class 0: peak 4
    maps[0, 3:6, 4:7, 1] = 10.0  # class 1: strong, but absent from image 0's labels
    maps[0, 4, 5, 2] = 0.6  # class 2: weak peak, labelled
    maps[0, 4, 4, 2] = 0.2
    maps[1, :, :, 1] = np.linspace(-1, 1, 42).reshape(6, 7)
    maps[1, :, :, 0] = -1.0  # never positive: claims nothing even if labelled
    labels = np.array([[1, 0, 1], [1, 1, 0]])
    return maps, labels


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_pseudo_label_masks_match_a_reference(threshold):
    maps, labels = _hand_made_maps()
    got = pseudo_label_masks(maps, labels, threshold)
    np.testing.assert_array_equal(got, _reference(maps, labels, threshold))


def test_pseudo_label_rule_by_hand():
    maps, labels = _hand_made_maps()
    got = pseudo_label_masks(maps, labels, 0.5)
    assert not np.any(got[0] == 2)  # class 1 is absent from image 0: suppressed
    assert got[0, 1, 1] == 1 and got[0, 1, 2] == 1 and got[0, 2, 2] == 1  # 4, 2, 3 of peak 4
    assert got[0, 2, 1] == 0  # 1 / 4 below the threshold
    assert got[0, 4, 5] == 3 and got[0, 4, 4] == 0  # 0.6 / 0.6 and 0.2 / 0.6
    assert got[0].sum() == 3 * 1 + 3
    # Image 1: class 0 never positive; class 1's map above half its peak.
    np.testing.assert_array_equal(got[1] == 2, maps[1, :, :, 1] >= 0.5)
    # No labels at all: everything background.
    assert not pseudo_label_masks(maps, np.zeros_like(labels), 0.5).any()
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label_masks(maps, labels, 1.5)
    with pytest.raises(ValueError, match="labels"):
        pseudo_label_masks(maps, labels[:1], 0.5)


def test_probabilities_agree_with_the_masks_and_the_crf_keeps_absent_classes_out():
    maps, labels = _hand_made_maps()
    probabilities = pseudo_label_probabilities(maps, labels, 0.5)
    assert probabilities.shape == (2, 6, 7, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert np.all(probabilities[0, ..., 2] == 0)  # absent class
    masks = pseudo_label_masks(maps, labels, 0.5)
    # Where no tie with background, the argmax is the pseudo-label.
    clear = np.abs(probabilities.max(-1) - probabilities[..., 0]) > 1e-6
    clear |= masks == 0
    np.testing.assert_array_equal(np.argmax(probabilities, -1)[clear], masks[clear])
    rgb = np.random.default_rng(0).integers(0, 256, (2, 6, 7, 3), np.uint8)
    refined = crf_pseudo_label_masks(probabilities, rgb, labels, num_iterations=3)
    assert refined.shape == (2, 6, 7)
    assert not np.any(refined[0] == 2) and not np.any(refined[1] == 3)


def test_pseudo_label_command_writes_segmentation_shards(tmp_path):
    convert_shapes(str(tmp_path / "val"), 3, size=32, seed=5, progress=False)
    pattern = str(tmp_path / "val-*.tfrecord")
    keras.utils.set_random_seed(0)
    model = apps.wsl_classifier(num_classes=3, pooling="gap")
    path = str(tmp_path / "cls.keras")
    model.save(path)
    classes = ["circle", "square", "triangle"]
    card = {"task": "classification", "normalization": "caffe", "classes": classes}
    write_model_card(path, {**card, "background_threshold": 0.4})
    out = str(tmp_path / "pseudo" / "train")
    assert cli.main(["pseudo-label", "--model", path, "--data", pattern, "--output", out]) == 0
    manifest = json.loads(open(out + ".json").read())
    assert manifest["classes"] == ["background", *classes]
    assert manifest["task"] == "segmentation"
    provenance = manifest["arguments"]["pseudo_label"]
    assert provenance["model"] == path and provenance["data"] == pattern
    assert provenance["background_threshold"] == 0.4 and provenance["crf"] is False
    assert provenance["threshold_from"] == "model card"
    originals = list(read_examples(pattern))
    written = list(read_examples(out + "-*.tfrecord"))
    assert len(written) == len(originals) == manifest["num_images"]
    for original, pseudo in zip(originals, written):
        np.testing.assert_array_equal(original["image"], pseudo["image"])
        x = np.asarray(normalize(original["image"][None], "caffe"))
        labels = np.zeros((1, 3))
        labels[0, np.unique(original["mask"][original["mask"] > 0]) - 1] = 1
        want = pseudo_label_masks(class_maps(model, x), labels, 0.4)[0]
        np.testing.assert_array_equal(pseudo["mask"], want)
    args = ["pseudo-label", "--model", path, "--data", pattern, "--output", out + "_crf"]
    assert cli.main([*args, "--crf", "--background-threshold", "0.6"]) == 0
    provenance = json.loads(open(out + "_crf.json").read())["arguments"]["pseudo_label"]
    assert provenance["crf"] is True and provenance["background_threshold"] == 0.6
    assert cli.main([*args, "--background-threshold", "2"]) == 2
