"""Pseudo-labels from class maps: the rule, the CRF path and `keras-dense pseudo-label`."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_dense import apps, cli
from keras_dense.data import convert_shapes, read_examples
from keras_dense.evaluation import confusion_matrix
from keras_dense.evaluation.threshold_tuning import (
    choose_background_threshold,
    pick_threshold,
    threshold_confusions,
)
from keras_dense.localization import (
    card_background_threshold,
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
    assert provenance["threshold_from"] == "model card background_threshold"
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


# ------------------------------------------------------------------ background threshold


def _brute_force_miou(maps, labels, truth, threshold, k):
    """mIoU over the classes that occur, pixel by pixel from `_reference`."""
    pseudo = _reference(maps, labels, threshold)
    inter, union = np.zeros(k), np.zeros(k)
    for want, got in zip(truth.ravel(), pseudo.ravel()):
        if want == 255:
            continue
        for c in range(k):
            inter[c] += want == c and got == c
            union[c] += want == c or got == c
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_threshold_choice_by_hand():
    # One class on a 1 x 10 image: its map rises 0.1 .. 1.0; the object is where it is >= 0.7.
    maps = np.linspace(0.1, 1.0, 10, dtype=np.float32).reshape(1, 1, 10, 1)
    truth = (maps[..., 0] >= 0.65).astype(np.uint8)
    grid = [0.25, 0.5, 0.65, 0.68, 0.85]  # no value on a pixel's (float32) value
    confusions = threshold_confusions(maps, np.ones((1, 1)), truth, grid)
    best, curve = pick_threshold(confusions, grid)
    # T = 0.65 and 0.68 both give the exact mask; the smaller wins. T = 0.25: 2 background
    # pixels, both right, of 6 (IoU 2/6), 8 object pixels, 4 right (4/8). T = 0.85: object
    # 0.9 and 1.0 (2/4), background 6 right of 8 (6/8).
    assert best == 0.65 and curve[0.65] == curve[0.68] == 1.0
    assert curve[0.25] == pytest.approx((2 / 6 + 4 / 8) / 2)
    assert curve[0.85] == pytest.approx((6 / 8 + 2 / 4) / 2)


def test_threshold_confusions_match_the_brute_force():
    rng = np.random.default_rng(3)
    maps = rng.normal(0, 1, (3, 5, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 2, (3, 3))
    truth = rng.integers(0, 4, (3, 5, 6)).astype(np.uint8)
    truth[0, 0, :3] = 255
    grid = [0.0, 0.2, 0.45, 0.8, 1.0]
    confusions = threshold_confusions(maps, labels, truth, grid)
    for t, cm in zip(grid, confusions):
        want = confusion_matrix(truth, pseudo_label_masks(maps, labels, t), 4)
        np.testing.assert_array_equal(cm, want)
    _, curve = pick_threshold(confusions, grid)
    for t in grid:
        assert curve[t] == pytest.approx(_brute_force_miou(maps, labels, truth, t, 4))
    with pytest.raises(ValueError, match="thresholds"):
        threshold_confusions(maps, labels, truth, [1.5])


def _classifier(tmp_path):
    convert_shapes(str(tmp_path / "val"), 3, size=32, seed=5, progress=False)
    keras.utils.set_random_seed(0)
    model = apps.wsl_classifier(num_classes=3, backbone="compact", pooling="gap", width=4)
    path = str(tmp_path / "cls.keras")
    model.save(path)
    classes = ["circle", "square", "triangle"]
    write_model_card(path, {"task": "classification", "normalization": "tf", "classes": classes})
    return model, path, str(tmp_path / "val-*.tfrecord")


def test_choose_background_threshold_against_the_brute_force(tmp_path):
    model, path, pattern = _classifier(tmp_path)
    card = {"classes": ["circle", "square", "triangle"], "normalization": "tf"}
    grid = (0.2, 0.5, 0.8)
    raw = choose_background_threshold(model, card, pattern, grid)
    crf = choose_background_threshold(
        model, card, pattern, grid, crf=True, crf_parameters={"num_iterations": 2}
    )
    records = list(read_examples(pattern))
    for choice, refine in ((raw, False), (crf, True)):
        want = np.zeros((len(grid), 4, 4), np.int64)
        for record in records:
            x = np.asarray(normalize(record["image"][None], "tf"))
            maps = class_maps(model, x)
            labels = np.zeros((1, 3))
            labels[0, np.unique(record["mask"][record["mask"] > 0]) - 1] = 1
            for i, t in enumerate(grid):
                if refine:
                    p = pseudo_label_probabilities(maps, labels, t)
                    got = crf_pseudo_label_masks(p, record["image"][None], labels, num_iterations=2)
                else:
                    got = pseudo_label_masks(maps, labels, t)
                want[i] += confusion_matrix(record["mask"], got[0], 4)
        best, curve = pick_threshold(want, grid)
        assert choice.threshold == best and choice.mean_iou_by_threshold == curve
        assert choice.images == 3 and choice.crf is refine


def test_tune_threshold_command_writes_the_card_and_pseudo_label_uses_it(tmp_path):
    model, path, pattern = _classifier(tmp_path)
    tune = ["tune-threshold", "--model", path, "--data", pattern]
    assert cli.main([*tune, "--grid", "0.3,0.6"]) == 0
    card = json.loads(open(path[: -len(".keras")] + ".json").read())
    choice = choose_background_threshold(model, card, pattern, (0.3, 0.6))
    assert card["background_threshold"] == choice.threshold
    assert card["background_threshold_search"]["mean_iou"] == pytest.approx(choice.mean_iou)
    assert card_background_threshold(card) == (choice.threshold, "model card background_threshold")
    assert card_background_threshold(card, crf=True)[0] == choice.threshold  # falls back
    args = ["tune-threshold", "--model", path, "--data", pattern, "--grid", "0.25", "--crf"]
    assert cli.main([*args, "--crf-parameter", "num_iterations=2"]) == 0
    card = json.loads(open(path[: -len(".keras")] + ".json").read())
    assert card["background_threshold_crf"] == 0.25
    assert card["crf"] == {"num_iterations": 2}
    assert card["background_threshold_crf_search"]["crf_parameters"] == {"num_iterations": 2}
    want = (0.25, "model card background_threshold_crf")
    assert card_background_threshold(card, crf=True) == want
    out = str(tmp_path / "pseudo")
    assert cli.main(["pseudo-label", "--model", path, "--data", pattern, "--output", out]) == 0
    provenance = json.loads(open(out + ".json").read())["arguments"]["pseudo_label"]
    assert provenance["background_threshold"] == choice.threshold
    assert cli.main([*tune, "--grid", "x"]) == 2
    assert cli.main([*tune, "--crf", "--crf-parameter", "theta=3"]) == 2
    assert cli.main([*tune, "--crf-parameter", "theta_alpha=3"]) == 2  # without --crf
    assert card_background_threshold({}) == (0.5, "default")
    with pytest.raises(ValueError, match="background_threshold"):
        card_background_threshold({"background_threshold": 3})
