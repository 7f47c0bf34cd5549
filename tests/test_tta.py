"""Test-time augmentation (flip + scales) in `segment_probabilities`, `evaluate`, `predict` and
the exported serving signatures, against a direct computation."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.data import SHAPE_CLASSES, convert_shapes, normalize, read_examples
from keras_dense.export import export_saved_model
from keras_dense.prediction import inference
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.tta import TestTimeAugmentation, parse_tta

SCALES = (0.75, 1.0, 1.25)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(2)
    return unet(num_classes=4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_tta(model, x, scales, flip):
    """Direct computation: run every scaled (cv2 bilinear) and mirrored copy, average."""
    height, width = x.shape[:2]
    total, count = 0.0, 0
    for s in scales:
        size = (int(np.floor(height * s + 0.5)), int(np.floor(width * s + 0.5)))
        scaled = cv2.resize(x, size[::-1], interpolation=cv2.INTER_LINEAR)
        for mirror in (False, True) if flip else (False,):
            inputs = scaled[:, ::-1] if mirror else scaled
            probs = _softmax(model.predict(inputs[None], verbose=0)[0].astype(np.float64))
            probs = probs[:, ::-1] if mirror else probs
            probs = cv2.resize(probs.astype(np.float32), (width, height), cv2.INTER_LINEAR)
            total, count = total + probs, count + 1
    return total / count


def _image(height=37, width=45, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(image, (0, 0), 2.0) * 2 - 128, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("flip, scales", [(True, SCALES), (False, (0.5, 1.5)), (True, (1.0,))])
def test_tta_equals_direct_computation(model, flip, scales):
    rgb = _image()
    card = {"normalization": "caffe"}
    got = inference.segment_probabilities(model, rgb, card, TestTimeAugmentation(flip, scales))
    want = reference_tta(model, np.asarray(normalize(rgb, "caffe")), scales, flip)
    assert got.shape == (37, 45, 4)
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_tta_off_leaves_outputs_unchanged(model):
    rgb = _image(seed=1)
    card = {"normalization": "caffe"}
    scores = inference.segment(model, rgb, card)
    direct = model.predict(np.asarray(normalize(rgb, "caffe"))[None], verbose=0)[0]
    np.testing.assert_array_equal(scores, direct)
    for tta in (None, TestTimeAugmentation(), parse_tta("none", "1")):
        probs = inference.segment_probabilities(model, rgb, card, tta)
        np.testing.assert_allclose(probs, _softmax(direct), atol=1e-6)


def test_parse_tta_names_the_option():
    assert parse_tta("flip", "0.75,1,1.25") == TestTimeAugmentation(True, SCALES)
    assert not parse_tta("none", None).enabled
    assert parse_tta("none", "0.5,1").enabled
    assert TestTimeAugmentation(True, SCALES).pixel_factor == pytest.approx(2 * 3.125)
    with pytest.raises(ValueError, match="--tta 'mirror'"):
        parse_tta("mirror")
    for bad in ("0,1", "a,b", "", "1,-2"):
        with pytest.raises(ValueError, match="--scales"):
            parse_tta("flip", bad)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    path = str(root / "model.keras")
    model.save(path)
    write_model_card(
        path, {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    )
    convert_shapes(str(root / "val"), 2, size=32, seed=3, progress=False)
    return root, path, str(root / "val-*.tfrecord")


def test_evaluate_and_predict_with_tta(model, saved, tmp_path):
    root, path, shapes = saved
    args = ["--tta", "flip", "--scales", "0.75,1,1.25"]
    out = tmp_path / "eval"
    assert (
        cli.main(["evaluate", "--model", path, "--data", shapes, "--output", str(out), *args]) == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    assert report["tta"] == {"flip": True, "scales": list(SCALES)}
    expected = np.zeros((4, 4), np.int64)
    first = None
    for example in read_examples(shapes):
        x = np.asarray(normalize(example["image"], "caffe"))
        predicted = np.argmax(reference_tta(model, x, SCALES, True), -1)
        first = predicted if first is None else first
        truth = example["mask"].astype(np.int64)
        keep = truth != 255
        np.add.at(expected, (truth[keep], predicted[keep]), 1)
    np.testing.assert_array_equal(report["confusion_matrix"], expected)
    # Plain evaluation (no --tta) reports no "tta" key.
    plain = tmp_path / "plain"
    assert cli.main(["evaluate", "--model", path, "--data", shapes, "--output", str(plain)]) == 0
    assert "tta" not in json.loads((plain / "metrics.json").read_text())
    # predict writes the argmax of the averaged softmax.
    pred = tmp_path / "pred"
    assert (
        cli.main(["predict", "--model", path, "--data", shapes, "--output", str(pred), *args]) == 0
    )
    example = next(read_examples(shapes))
    mask = cv2.imread(str(pred / f"{example['source_id']}_mask.png"))
    assert mask.shape[:2] == first.shape


def test_bad_scales_fail_before_any_work(saved, capsys):
    _, path, shapes = saved
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", path, "--data", shapes, "--tta", "mirror"])
    assert cli.main(["evaluate", "--model", path, "--data", shapes, "--scales", "0,1"]) != 0
    assert "--scales" in capsys.readouterr().err


def test_exported_tta_matches_in_memory(model, tmp_path):
    tta = TestTimeAugmentation(True, SCALES)
    plain = export_saved_model(model, tmp_path, name="plain", card={"normalization": "caffe"})
    result = export_saved_model(
        model, tmp_path, name="tta", card={"normalization": "caffe"}, tta=tta
    )  # runs the op audit and the verification of `probabilities`
    from keras_dense.export.saved_model_export import CARD_ASSET

    card = json.loads((tmp_path / "tta" / "1" / CARD_ASSET).read_text())
    assert card["serving"]["tta"] == {"flip": True, "scales": list(SCALES)}
    assert result.memory_budget.bytes_per_pixel == pytest.approx(
        plain.memory_budget.bytes_per_pixel * tta.pixel_factor
    )
    loaded = tf.saved_model.load(result.path)
    rgb = _image(41, 30, seed=4)
    x = np.asarray(normalize(rgb, "caffe"))
    want = inference.segment_probabilities(model, rgb, {"normalization": "caffe"}, tta)
    got = loaded.signatures["serving_tensor"](images=tf.constant(x[None]))["probabilities"]
    np.testing.assert_allclose(got.numpy()[0], want, atol=1e-5)
    png = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([png, png]))
    classes = out["classes"].numpy()
    top2 = np.sort(want, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(classes[0][clear], want.argmax(-1)[clear])
    np.testing.assert_array_equal(classes[0], classes[1])
    # Without --tta the exported classes are the plain argmax.
    plain_loaded = tf.saved_model.load(plain.path)
    plain_out = plain_loaded.signatures["serving_default"](image_bytes=tf.constant([png]))
    assert "probabilities" not in plain_loaded.signatures["serving_tensor"].structured_outputs
    scores = model.predict(x[None], verbose=0)[0]
    top2 = np.sort(scores, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(plain_out["classes"].numpy()[0][clear], scores.argmax(-1)[clear])


def test_export_tta_refuses_pad_mode(model, tmp_path):
    with pytest.raises(ValueError, match="batch_mode='pad' with tta"):
        export_saved_model(
            model, tmp_path, name="pad", batch_mode="pad", tta=TestTimeAugmentation(True)
        )


def test_evaluate_crf_takes_the_tta_probabilities(model, saved, tmp_path):
    from keras_dense.crf import dense_crf

    _, path, shapes = saved
    out = tmp_path / "crf"
    argv = ["evaluate", "--model", path, "--data", shapes, "--crf", "--tta", "flip"]
    assert cli.main([*argv, "--scales", "0.75,1", "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    expected = np.zeros((4, 4), np.int64)
    tta = TestTimeAugmentation(True, (0.75, 1.0))
    for example in read_examples(shapes):
        probs = inference.segment_probabilities(
            model, example["image"], {"normalization": "caffe"}, tta
        )
        refined = dense_crf(probs, example["image"])
        truth = example["mask"].astype(np.int64)
        keep = truth != 255
        np.add.at(expected, (truth[keep], np.argmax(refined, -1)[keep]), 1)
    assert report["crf"] is True and report["tta"]["scales"] == [0.75, 1.0]
    np.testing.assert_array_equal(report["confusion_matrix"], expected)


def test_predict_memory_plan_accounts_for_the_largest_scale(model):
    from keras_dense.signatures.geometry import segmenter_geometry
    from keras_dense.signatures.memory_budget import measure_bytes_per_pixel

    per_pixel = measure_bytes_per_pixel(model, segmenter_geometry(model), 4)
    budget = int(1000 * 1000 * per_pixel * 1.1)
    card = {"normalization": "caffe"}
    assert inference.plan_prediction(model, card, 1000, 1000, budget) == "whole"
    tta = TestTimeAugmentation(True, SCALES)
    assert inference.plan_prediction(model, card, 1000, 1000, budget, tta) == "tiled"
    assert inference.plan_prediction(model, card, 1000, 1000, budget, parse_tta()) == "whole"


def test_export_tta_fixed_size_model_flips_and_refuses_scales(tmp_path):
    keras.utils.set_random_seed(5)
    fixed = unet(num_classes=3, input_shape=(48, 64, 3), padding="same", filters=4, depth=2)
    with pytest.raises(ValueError, match="fixed input size"):
        export_saved_model(fixed, tmp_path, name="bad", tta=TestTimeAugmentation(True, SCALES))
    result = export_saved_model(fixed, tmp_path, name="fixed", tta=TestTimeAugmentation(True))
    rgb = _image(30, 41, seed=6)
    png = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    x = cv2.resize(rgb.astype(np.float32), (64, 48), interpolation=cv2.INTER_LINEAR)
    x = np.asarray(normalize(x, "caffe"))
    probs = _softmax(fixed.predict(x[None], verbose=0)[0])
    probs += _softmax(fixed.predict(x[None, :, ::-1], verbose=0)[0])[:, ::-1]
    probs = cv2.resize(probs.astype(np.float32), (41, 30), interpolation=cv2.INTER_LINEAR)
    serve = tf.saved_model.load(result.path).signatures["serving_default"]
    classes = serve(image_bytes=tf.constant([png]))["classes"].numpy()[0]
    top2 = np.sort(probs, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(classes[clear], probs.argmax(-1)[clear])


def test_export_tta_valid_model(tmp_path):
    keras.utils.set_random_seed(6)
    valid = unet(num_classes=3, input_shape=(None, None, 3), padding="valid", filters=4, depth=2)
    result = export_saved_model(
        valid, tmp_path, name="valid", tta=TestTimeAugmentation(True, SCALES)
    )
    png = cv2.imencode(".png", _image(30, 41, seed=7))[1].tobytes()
    serve = tf.saved_model.load(result.path).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([png]))
    assert out["classes"].shape == (1, 30, 41)
    assert out["classes"].numpy().min() >= 0


def test_detection_refuses_tta():
    """A detector supports no TTA: the export keyword is refused in the one mapping place
    (the commands refuse --tta through the capabilities, tests/test_task_capabilities.py)."""
    from keras_dense.export.saved_model_export import task_export_options
    from keras_dense.tasks import get_task

    task = get_task("detection")
    assert not (task.capabilities.score_tta or task.capabilities.map_tta)
    with pytest.raises(ValueError, match="tta does not apply to detection models.*segmentation"):
        task_export_options(task, None, {"tta": TestTimeAugmentation(True)})
    # The default (no augmentation) says nothing and is not refused.
    assert task_export_options(task, None, {"tta": TestTimeAugmentation()}) == task.export_options()


def test_export_command_takes_tta(saved, tmp_path):
    from keras_dense.export.saved_model_export import CARD_ASSET

    _, path, _ = saved
    argv = ["export", "--model", path, "--output", str(tmp_path / "m"), "--tta", "flip"]
    assert cli.main([*argv, "--scales", "0.75,1"]) == 0
    card = json.loads((tmp_path / "m" / "1" / CARD_ASSET).read_text())
    assert card["serving"]["tta"] == {"flip": True, "scales": [0.75, 1.0]}
    loaded = tf.saved_model.load(str(tmp_path / "m" / "1"))
    assert "probabilities" in loaded.signatures["serving_tensor"].structured_outputs
