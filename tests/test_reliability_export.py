"""Reliability of evaluate, export, serving, tune-crf and receptive-field on bad arguments:
bounded scales and grids, a memory plan for evaluate, flags that do not apply, served folders
holding another model, concurrent exports, truncated images in a served batch."""

from __future__ import annotations

import json
import os
import re
import struct

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.data import SHAPE_CLASSES, convert_shapes, read_examples
from keras_dense.export import export_saved_model, list_versions, saved_model_export
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.tta import TestTimeAugmentation, parse_tta

from export_test_utils import Reached, card_only, encode, make_image, reached, tiny_faster_rcnn


def _unet(classes: int = 4, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return unet(classes, input_shape=(None, None, 3), padding="same", filters=4, depth=2)


def _save(model: keras.Model, path, card: dict) -> str:
    model.save(str(path))
    write_model_card(str(path), card)
    return str(path)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    convert_shapes(str(root / "val"), 2, size=32, seed=3, progress=False)
    return str(root / "val-*.tfrecord")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A 4-class U-Net (the shapes classes) saved with its card."""
    root = tmp_path_factory.mktemp("segmenter")
    card = {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    return _save(_unet(), root / "seg.keras", card)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny Faster R-CNN (compact backbone) saved with a detection card (trained at 64)."""
    root = tmp_path_factory.mktemp("detector")
    card = {
        "task": "detection",
        "normalization": "caffe",
        "classes": ["circle", "square"],
        "min_size": 64,
        "max_size": 96,
    }
    return _save(tiny_faster_rcnn(), root / "det.keras", card)


# --- item 11: --scales bounds and the memory plan of evaluate ---------------------------------


@pytest.mark.parametrize("scales", ["1e-9", "0.1", "0.75,1,100", "5", "1,0"])
def test_scales_outside_the_bounds_are_refused_naming_the_value(scales):
    with pytest.raises(ValueError, match=r"--scales .*\[0\.25, 4\]") as error:
        parse_tta("flip", scales)
    bad = [s for s in scales.split(",") if not 0.25 <= float(s) <= 4]
    assert repr(bad[0]) in str(error.value) or bad[0] in str(error.value)
    with pytest.raises(ValueError, match=r"\[0\.25, 4\]"):
        TestTimeAugmentation(True, tuple(float(s) for s in scales.split(",")))
    assert parse_tta("flip", "0.25,1,4").scales == (0.25, 1.0, 4.0)


def test_export_with_tiny_scales_is_refused_and_budget_is_never_above_the_plain_one(
    segmenter, tmp_path, capsys
):
    out = str(tmp_path / "m")
    code = cli.main(
        ["export", "--model", segmenter, "--output", out, "--tta", "flip"] + ["--scales", "1e-9"]
    )
    assert code == 2 and "--scales" in capsys.readouterr().err
    assert not os.path.exists(out)
    # The smallest allowed scale: the passes hold fewer pixels, but the request still holds
    # the full-size image and its outputs, so the budget may not exceed the plain one.
    from keras_dense.tasks import get_task
    from keras_dense.tasks import segmentation as segmentation_task

    model = keras.models.load_model(segmenter)
    card = json.load(open(segmenter[: -len(".keras")] + ".json"))
    task = get_task("segmentation")
    budgets = {}
    original = segmentation_task.segmentation_signatures
    try:
        segmentation_task.segmentation_signatures = lambda *a, **k: {}
        for name, tta in (("plain", TestTimeAugmentation()), ("small", parse_tta("none", "0.25"))):
            _, _, budgets[name] = task.export_signatures(model, card, task.export_options(tta=tta))
    finally:
        segmentation_task.segmentation_signatures = original
    assert budgets["small"].max_request_pixels <= budgets["plain"].max_request_pixels
    assert budgets["small"].bytes_per_pixel >= budgets["plain"].bytes_per_pixel


def test_evaluate_large_scales_are_refused(segmenter, shapes, tmp_path, capsys):
    code = cli.main(
        ["evaluate", "--model", segmenter, "--data", shapes, "--scales", "100"]
        + ["--output", str(tmp_path / "e")]
    )
    assert code == 2 and "--scales" in capsys.readouterr().err


def test_evaluate_follows_the_memory_plan_of_predict(segmenter, shapes, tmp_path, monkeypatch):
    """Within the budget whole; above it tiled (as `predict` plans it); beyond, refused."""
    from keras_dense.prediction import inference
    from keras_dense.tasks.model_loading import load_model_with_card

    model, card = load_model_with_card(segmenter)
    tta = parse_tta("flip", "1,2")
    # The budget at which predict's plan tiles a 32x32 image with these scales.
    budget = 2**31
    while inference.plan_prediction(model, card, 32, 32, budget, tta) == "whole":
        budget //= 2
    assert inference.plan_prediction(model, card, 32, 32, budget, tta) == "tiled"
    tiled_calls = []
    real = inference.predict_tiled
    monkeypatch.setattr(
        inference, "predict_tiled", lambda *a, **k: tiled_calls.append(1) or real(*a, **k)
    )
    args = ["evaluate", "--model", segmenter, "--data", shapes, "--tta", "flip", "--scales"]
    assert cli.main([*args, "1,2", "--output", str(tmp_path / "whole")]) == 0
    assert not tiled_calls
    tiled_out = str(tmp_path / "tiled")
    code = cli.main([*args, "1,2", "--output", tiled_out, "--max-memory", str(budget)])
    assert code == 0 and tiled_calls
    # The same as asking for tiling.
    forced_out = str(tmp_path / "forced")
    assert cli.main([*args, "1,2", "--output", forced_out, "--tiled"]) == 0
    forced = json.loads((tmp_path / "forced" / "metrics.json").read_text())
    tiled = json.loads((tmp_path / "tiled" / "metrics.json").read_text())
    assert tiled["confusion_matrix"] == forced["confusion_matrix"]
    assert (tiled["max_memory"], tiled["tiled_images"], forced["tiled_images"]) == (budget, 2, 0)


def test_evaluate_refuses_an_image_above_the_memory_budget_naming_it(
    segmenter, shapes, tmp_path, capsys
):
    code = cli.main(
        ["evaluate", "--model", segmenter, "--data", shapes, "--max-memory", "20000"]
        + ["--output", str(tmp_path / "e")]
    )
    err = capsys.readouterr().err
    first = next(read_examples(shapes))["source_id"]
    assert code == 2 and "--max-memory" in err and f"record {first!r}" in err
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.parametrize("value", ["0", "-1GiB", "inf", "nan", "1e400"])
def test_memory_sizes_must_be_finite_and_positive(segmenter, shapes, tmp_path, value, capsys):
    for command in (
        ["evaluate", "--model", segmenter, "--data", shapes, f"--max-memory={value}"],
        ["predict", "--model", segmenter, "--data", shapes, "--output", str(tmp_path)]
        + [f"--max-memory={value}"],
        ["export", "--model", segmenter, "--output", str(tmp_path / "m")]
        + [f"--max-request-memory={value}"],
    ):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert value in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "m")


# --- item 12 and the like: options that do not apply are refused -----------------------------


@pytest.mark.parametrize(
    "options, named",
    [
        (["--quantize", "int8"], "--quantize"),
        (["--quantize", "float16"], "--quantize"),
        (["--data", "x-*.tfrecord"], "--data"),
        (["--input-size", "32,32"], "--input-size"),
        (["--check-images", "3"], "--check-images"),
        (["--min-agreement", "0.5"], "--min-agreement"),
        (["--format", "tflite", "--version", "3"], "--version"),
        (["--format", "tflite", "--batch-mode", "pad"], "--batch-mode"),
        (["--format", "tflite", "--tta", "flip"], "--tta"),
        (["--format", "tflite", "--scales", "1,2"], "--scales"),
        (["--format", "tflite", "--max-pixels", "1000"], "--max-pixels"),
        (["--format", "tflite", "--max-request-memory", "1GiB"], "--max-request-memory"),
        (["--format", "tflite", "--representative-images", "4"], "--representative-images"),
        (["--min-size", "300"], "--min-size"),  # a segmenter: detection only
        (["--max-size", "500"], "--max-size"),
    ],
)
def test_export_refuses_options_that_do_not_apply(segmenter, tmp_path, options, named, capsys):
    out = tmp_path / "m"
    code = cli.main(["export", "--model", segmenter, "--output", str(out), *options])
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "does not apply" in err
    assert not out.exists()


def test_export_refuses_detection_only_and_segmentation_only_options(detector, tmp_path, capsys):
    out = tmp_path / "d"
    code = cli.main(["export", "--model", detector, "--output", str(out), "--tta", "flip"])
    assert code == 2 and "--tta" in capsys.readouterr().err
    assert not out.exists()


def test_detector_export_uses_the_cards_training_scale(detector, tmp_path):
    """The card's min_size / max_size (the training scale) are served, as predict uses them."""
    out = tmp_path / "d"
    assert cli.main(["export", "--model", detector, "--output", str(out)]) == 0
    card = json.loads((out / "1" / "assets.extra" / "model_card.json").read_text())
    assert (card["serving"]["min_size"], card["serving"]["max_size"]) == (64, 96)
    assert cli.main(["export", "--model", detector, "--output", str(out), "--min-size", "80"]) == 0
    card = json.loads((out / "2" / "assets.extra" / "model_card.json").read_text())
    assert (card["serving"]["min_size"], card["serving"]["max_size"]) == (80, 96)


@pytest.mark.parametrize(
    "options, named",
    [
        (["--min-size", "0"], "--min-size"),
        (["--max-size", "-5"], "--max-size"),
        (["--min-size", "100", "--max-size", "50"], "--max-size"),
    ],
)
def test_export_detection_sizes_are_checked(detector, tmp_path, options, named, capsys):
    code = cli.main(["export", "--model", detector, "--output", str(tmp_path / "d"), *options])
    assert code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, named",
    [
        (["predict", "--score-threshold", "0.3"], "--score-threshold"),  # a segmenter
        (["evaluate", "--use-07-metric"], "--use-07-metric"),
        (["evaluate", "--pointing-tolerance", "5"], "--pointing-tolerance"),
    ],
)
def test_predict_and_evaluate_refuse_options_of_other_tasks(
    segmenter, shapes, tmp_path, command, named, capsys
):
    extra = ["--output", str(tmp_path / "o")]
    code = cli.main([command[0], "--model", segmenter, "--data", shapes, *extra, *command[1:]])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "does not apply" in err


def test_predict_on_a_detector_refuses_tiling_options(detector, shapes, tmp_path, capsys):
    for option in (["--tiled", "always"], ["--tile-size", "64"], ["--max-memory", "1GiB"]):
        code = cli.main(
            ["predict", "--model", detector, "--data", shapes, "--output", str(tmp_path), *option]
        )
        err = capsys.readouterr().err
        # A detector's --max-memory budgets batches of tiles: it needs --slice.
        expected = "applies to detection with --slice" if option[0] == "--max-memory" else None
        assert code == 2 and option[0] in err and (expected or "does not apply") in err


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_score_threshold_must_be_a_probability(detector, shapes, tmp_path, value, capsys):
    code = cli.main(
        ["predict", "--model", detector, "--data", shapes, "--output", str(tmp_path)]
        + ["--score-threshold", value]
    )
    assert code == 2 and "--score-threshold" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_pointing_tolerance_must_be_finite_and_non_negative(segmenter, shapes, value, capsys):
    code = cli.main(
        ["evaluate", "--model", segmenter, "--data", shapes, "--pointing-tolerance", value]
    )
    assert code == 2 and "--pointing-tolerance" in capsys.readouterr().err


# --- item 13: a served folder holds one model; concurrent exports -----------------------------


def _card(path) -> dict:
    return json.loads((path / "assets.extra" / "model_card.json").read_text())


def test_export_into_a_folder_of_another_model_is_refused(segmenter, detector, tmp_path, capsys):
    out = tmp_path / "served"
    assert cli.main(["export", "--model", segmenter, "--output", str(out)]) == 0
    # Another class list (2 classes).
    other = _save(
        _unet(2, seed=1),
        tmp_path / "two.keras",
        {"task": "segmentation", "normalization": "caffe", "classes": ["bg", "fg"]},
    )
    code = cli.main(["export", "--model", other, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err and "version 1" in err and "classes" in err
    assert "--allow-different-model" in err
    # Another task.
    code = cli.main(["export", "--model", detector, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "version 1" in err and "task" in err and "detection" in err
    # Signatures: see test_added_outputs_are_compatible_removed_outputs_and_changed_inputs_are_not.
    assert list_versions(out) == [1]
    assert sorted(os.listdir(out)) == ["1"]  # no temporary folder left
    # The same model again is fine; another one only when asked.
    assert cli.main(["export", "--model", segmenter, "--output", str(out)]) == 0
    code = cli.main(["export", "--model", other, "--output", str(out), "--allow-different-model"])
    assert code == 0
    assert list_versions(out) == [1, 2, 3]
    assert _card(out / "3")["classes"] == ["bg", "fg"]


def test_a_version_not_written_by_keras_dense_is_not_taken_for_the_same_model(
    segmenter, tmp_path, capsys
):
    out = tmp_path / "served"
    (out / "7").mkdir(parents=True)
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None])])
    tf.saved_model.save(module, str(out / "7"), signatures=module.f.get_concrete_function())
    code = cli.main(["export", "--model", segmenter, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "version 7" in err and "model_card.json" in err
    assert list_versions(out) == [7]


def test_concurrent_exports_both_succeed_with_distinct_versions(tmp_path, monkeypatch):
    """The other export finishes while this one writes: this one takes the next number."""
    model = _unet(seed=2)
    card = {"normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    results, started = [], []
    real_audit = saved_model_export.audit_saved_model

    def audit_while_another_export_finishes(path):
        real_audit(path)
        if not started:  # once: the other process, racing for the same next version
            started.append(path)
            results.append(export_saved_model(model, tmp_path, name="m", card=card, verify=False))

    racing = audit_while_another_export_finishes
    monkeypatch.setattr(saved_model_export, "audit_saved_model", racing)
    mine = export_saved_model(model, tmp_path, name="m", card=card, verify=False)
    other = results[0]
    assert (other.version, mine.version) == (1, 2)
    assert mine.path == str(tmp_path / "m" / "2")
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]
    for version in (1, 2):
        loaded = tf.saved_model.load(str(tmp_path / "m" / str(version)))
        assert "serving_default" in loaded.signatures
    # An explicit version that appears meanwhile is never overwritten.
    started.clear()

    def racing_version_3(path):
        real_audit(path)
        if not started:
            started.append(path)
            results.append(
                export_saved_model(model, tmp_path, name="m", version=3, card=card, verify=False)
            )

    monkeypatch.setattr(saved_model_export, "audit_saved_model", racing_version_3)
    with pytest.raises(ValueError, match="never overwritten"):
        export_saved_model(model, tmp_path, name="m", version=3, card=card, verify=False)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2", "3"]


def test_a_concurrent_export_of_another_model_is_caught_before_the_rename(tmp_path, monkeypatch):
    card = {"normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    other_card = {"normalization": "caffe", "classes": ["bg", "fg"]}
    real_audit = saved_model_export.audit_saved_model
    done = []

    def another_model_lands(path):
        real_audit(path)
        if not done:
            done.append(path)
            export_saved_model(_unet(2), tmp_path, name="m", card=other_card, verify=False)

    monkeypatch.setattr(saved_model_export, "audit_saved_model", another_model_lands)
    with pytest.raises(ValueError, match=r"version 1 .*classes"):
        export_saved_model(_unet(), tmp_path, name="m", card=card, verify=False)
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]


# --- item 19: tune-crf ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, key",
    [
        ("theta_alpha=1e30", "theta_alpha"),
        ("theta_alpha=20,1e-6", "theta_alpha"),
        ("theta_beta=0.01", "theta_beta"),
        ("theta_gamma=1e9", "theta_gamma"),
        ("bilateral_weight=1e30", "bilateral_weight"),
        ("spatial_weight=5000", "spatial_weight"),
    ],
)
def test_tune_crf_grid_values_outside_the_valid_range_are_named(
    segmenter, shapes, item, key, capsys
):
    from keras_dense.evaluation.crf_tuning import parse_grid

    with pytest.raises(ValueError, match=rf"--grid {key}.*range \["):
        parse_grid([item])
    code = cli.main(["tune-crf", "--model", segmenter, "--data", shapes, "--grid", item])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "range" in err and "Graph execution" not in err


def test_tune_crf_fine_grid_stays_in_the_valid_range():
    from keras_dense.evaluation.crf_tuning import PARAMETER_RANGES, fine_grid, parse_grid

    grid = parse_grid(["theta_alpha=2000,10000", "theta_beta=0.1,0.2", "spatial_weight=1000"])
    for best in ({"theta_alpha": 10000.0, "theta_beta": 0.1}, {"theta_alpha": 2000.0}):
        point = {k: v[0] for k, v in grid.items()} | best
        for key, values in fine_grid(grid, point).items():
            low, high = PARAMETER_RANGES[key]
            assert all(low <= v <= high for v in values), (key, values)


def test_tune_crf_the_extremes_of_the_ranges_run(shapes):
    """The bounds themselves are valid CRF parameters on an image (no graph error)."""
    from keras_dense.crf import dense_crf
    from keras_dense.evaluation.crf_tuning import PARAMETER_RANGES

    example = next(read_examples(shapes))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=example["image"].shape[:2]).astype(np.float32)
    for key, (low, high) in PARAMETER_RANGES.items():
        for value in (low, high):
            refined = dense_crf(probs, example["image"], num_iterations=2, **{key: value})
            assert np.isfinite(refined).all()


def test_tune_crf_on_a_detector_says_segmentation_only(detector, tmp_path, capsys):
    code = cli.main(["tune-crf", "--model", detector, "--data", str(tmp_path / "none-*")])
    err = capsys.readouterr().err
    assert code == 2 and "segmentation models only" in err and "detection" in err


# --- item 20: receptive-field on a model with a nested backbone and several inputs ------------


def test_receptive_field_of_a_faster_rcnn_backbone(detector, shapes, tmp_path, capsys):
    from keras_dense.data.image_io import read_mask_file
    from keras_dense.utils.normalization import normalize

    png = str(tmp_path / "erf.png")
    code = cli.main(
        ["receptive-field", "--model", detector, "--layer", "backbone", "--data", shapes]
        + ["--images", "2", "--output", png]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    size = int(re.search(r"empirical receptive field (\d+) px", out).group(1))
    # Reference: the gradient of the backbone's centre unit, taken on the nested model itself.
    model = keras.models.load_model(detector, compile=False)
    backbone = model.get_layer("backbone")
    images = np.stack([r["image"] for r in list(read_examples(shapes))[:2]])
    x = tf.constant(np.asarray(normalize(images, "caffe")), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        features = backbone(x, training=False)
        centre = (features.shape[1] // 2, features.shape[2] // 2)
        objective = tf.reduce_sum(features[:, centre[0], centre[1], :])
    mass = np.abs(tape.gradient(objective, x).numpy()).sum(-1).mean(0)
    written = read_mask_file(png).astype(np.float64) / 255
    np.testing.assert_allclose(written, mass / mass.max(), atol=1 / 255 + 1e-6)
    assert 1 <= size <= 32
    assert re.search(r"theoretical receptive field size \d+x\d+ px, jump 16x16", out)


def test_empirical_field_of_multi_output_and_multi_input_layers(detector):
    """The RPN (two outputs on one grid) is measured; the RoI head, which also needs the image
    shapes and scales, is refused naming them."""
    from keras_dense.analysis import empirical_receptive_field

    model = keras.models.load_model(detector, compile=False)
    images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    rpn = empirical_receptive_field(model, "rpn", images)
    assert rpn.unit == (2, 2) and rpn.map.shape == (64, 64)
    with pytest.raises(ValueError, match=r"roi_head.*image_shape, scale"):
        empirical_receptive_field(model, "roi_head", images)


# --- item 21: truncated images in a served batch name their position -------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    result = export_saved_model(_unet(3), root, name="m", card={"normalization": "caffe"})
    return tf.saved_model.load(result.path).signatures["serving_default"]


def _with_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """`jpeg` with an APP1 (EXIF-like) segment holding a complete JPEG thumbnail."""
    payload = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_truncated_images_in_a_batch_name_their_position(served):
    image = make_image(40, 52, 1)
    png, jpeg = encode(image, "png"), encode(image, "jpg")
    ok, progressive = cv2.imencode(
        ".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    progressive = progressive.tobytes()
    thumbnail = encode(make_image(8, 8, 2), "jpg")
    exif = _with_thumbnail(jpeg, thumbnail)
    truncated = {
        "png, half": png[: len(png) // 2],
        "png, IEND cut": png[:-1],
        "png, no IEND": png[:-12],
        "jpeg, half": jpeg[: len(jpeg) // 2],
        "jpeg, no end marker": jpeg[:-2],
        "jpeg, header only": jpeg[:200],
        "progressive jpeg, half": progressive[: len(progressive) * 2 // 3],
        "jpeg with a thumbnail, half": exif[: len(exif) - len(jpeg) // 2],
    }
    for what, data in truncated.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[2\]: truncated"):
            served(image_bytes=tf.constant([png, jpeg, data]))
            pytest.fail(f"{what} was accepted")
    # Complete files, also with bytes after their end (decoders ignore them), are served.
    trailing = [png + b"\x00" * 100, jpeg + os.urandom(3000), progressive, exif]
    out = served(image_bytes=tf.constant([png, jpeg, *trailing]))
    assert out["image_sizes"].numpy().tolist() == [[40, 52]] * 6


# --- item 22: misleading message of convert instances -----------------------------------------


def test_instances_without_a_class_name_the_wildcard_lines_that_do_not_cover_them(tmp_path):
    from keras_dense.data import BadInputError
    from keras_dense.data.converters.instances import convert_instances
    from keras_dense.data.image_io import encode_png

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(encode_png(make_image(16, 16, 0)))
    ids = np.zeros((16, 16), np.uint8)
    ids[2:6, 2:6], ids[8:12, 8:12] = 1, 2
    (tmp_path / "masks" / "a_mask.png").write_bytes(encode_png(ids))
    classes = tmp_path / "classes.csv"
    classes.write_text("*,1,cat\n")
    with pytest.raises(BadInputError) as error:
        convert_instances(
            str(tmp_path / "images"),
            str(tmp_path / "masks"),
            str(tmp_path / "out" / "all"),
            classes_file=str(classes),
            progress=False,
        )
    message = str(error.value)
    assert "instance 2 of 'a'" in message and "*,1" in message
    assert "a '*' default" not in message and "*,*,CLASS" in message


# --- review of items 11-13 and 21: options typed at their default, the folder's newest version,
# compatible signatures, one memory measurement per evaluate, the commit lock, the JPEG check --


@pytest.mark.parametrize(
    "command, task, options, other",
    [
        ("export", "segmentation", ["--quantize", "none"], "int8"),
        ("export", "detection", ["--tta", "none"], "flip"),
        ("export", "instance_segmentation", ["--batch-mode", "per_image"], "pad"),
        ("predict", "detection", ["--tiled", "auto"], "always"),
        ("evaluate", "detection", ["--tta", "none"], "flip"),
    ],
)
def test_an_option_typed_at_its_default_is_not_refused(
    tmp_path, monkeypatch, command, task, options, other, capsys
):
    """Typing the default is leaving the option out: the command goes on (here: to loading)."""
    from keras_dense.tasks import model_loading

    monkeypatch.setattr(saved_model_export, "export_saved_model", reached)
    monkeypatch.setattr(model_loading, "load_model_with_card", reached)
    model = card_only(tmp_path, task)
    extra = {
        "export": ["--output", str(tmp_path / "served" / "m")],
        "predict": ["--data", str(tmp_path / "x-*"), "--output", str(tmp_path / "p")],
        "evaluate": ["--data", str(tmp_path / "x-*")],
    }[command]
    with pytest.raises(Reached):
        code = cli.main([command, "--model", model, *extra, *options])
        pytest.fail(f"exit {code}: {capsys.readouterr().err}")
    # Another value than the default still does not apply.
    code = cli.main([command, "--model", model, *extra, options[0], other])
    assert code == 2 and "does not apply" in capsys.readouterr().err


def _export_unet(root, classes: int, seed: int = 0, **kwargs):
    names = list(SHAPE_CLASSES) if classes == 4 else ["bg", "fg"]
    card = {"normalization": "caffe", "classes": names}
    return export_saved_model(
        _unet(classes, seed), root, name="m", card=card, verify=False, **kwargs
    )


def test_after_a_deliberate_change_the_folder_serves_its_newest_model(tmp_path):
    """Versions 1-2 serve 4 classes; version 3 (2 classes) was added on purpose. Retraining the
    2-class model gives version 4: it is compared with version 3, not with version 1."""
    for _ in range(2):
        _export_unet(tmp_path, 4)
    _export_unet(tmp_path, 2, seed=1, allow_different_model=True)
    assert _export_unet(tmp_path, 2, seed=2).version == 4
    with pytest.raises(ValueError, match=r"version 4 serves another model.*classes"):
        _export_unet(tmp_path, 4)
    assert list_versions(tmp_path / "m") == [1, 2, 3, 4]


def test_added_outputs_are_compatible_removed_outputs_and_changed_inputs_are_not(
    tmp_path, monkeypatch
):
    """`--tta flip` adds the `probabilities` output: clients of the plain version still work.
    Dropping it again, or changing an input, is another model; refused before anything is
    saved."""
    from keras_dense.export import served_models

    _export_unet(tmp_path, 4)
    described = []
    real_describe = served_models.describe_signatures
    monkeypatch.setattr(
        saved_model_export,
        "describe_signatures",
        lambda signatures: described.append(real_describe(signatures)) or described[-1],
    )
    assert _export_unet(tmp_path, 4, tta=parse_tta("flip")).version == 2
    # The signatures as described before saving are those the SavedModel holds.
    assert described == [served_models.read_signatures(tmp_path / "m" / "2")]
    saves = []
    real_save = tf.saved_model.save
    monkeypatch.setattr(
        tf.saved_model, "save", lambda *a, **k: saves.append(1) or real_save(*a, **k)
    )
    with pytest.raises(ValueError) as error:
        _export_unet(tmp_path, 4)
    message = str(error.value)
    assert "version 2" in message and "serving_tensor" in message
    missing = r"output 'probabilities' \(float32, rank 4\) is missing in this export"
    assert re.search(missing, message), message
    assert "scores" not in message  # what did not change is not listed
    # Another input: a grey-image model (1 channel instead of 3) with the same classes.
    keras.utils.set_random_seed(0)
    grey = unet(4, input_shape=(None, None, 1), padding="same", filters=4, depth=2)
    card = {"normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    with pytest.raises(ValueError) as error:
        export_saved_model(grey, tmp_path, name="m", card=card, verify=False, tta=parse_tta("flip"))
    message = str(error.value)
    assert re.search(
        r"serving_tensor input 'images' float32 \[\?, \?, \?, 3\] \(this export: "
        r"float32 \[\?, \?, \?, 1\]\)",
        message,
    ), message
    assert not saves  # refused before the SavedModel was written
    assert list_versions(tmp_path / "m") == [1, 2]
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]


def test_evaluate_measures_the_model_memory_once(segmenter, shapes, tmp_path, monkeypatch):
    """The bytes per pixel depend on the model, not on the image: one probe per evaluate."""
    from keras_dense.signatures import memory_budget

    calls = []
    real = memory_budget.measure_bytes_per_pixel
    monkeypatch.setattr(
        memory_budget,
        "measure_bytes_per_pixel",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    code = cli.main(
        ["evaluate", "--model", segmenter, "--data", shapes, "--output", str(tmp_path / "e")]
    )
    assert code == 0
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["images"] == 2 and len(calls) == 1


def test_another_model_cannot_land_between_the_last_check_and_the_rename(tmp_path, monkeypatch):
    """Export A (4 classes) passes its last check; export B (2 classes, --version 2) runs right
    then. B waits for A's rename and is then refused; A lands as version 1."""
    import threading

    from keras_dense.utils.file_lock import FileLock

    real_check = saved_model_export.check_same_model
    waiting = threading.Event()
    started, outcome = [], {}
    real_try = FileLock.try_acquire

    def try_acquire(self, note=""):
        taken = real_try(self, note)
        if not taken:
            waiting.set()  # B waits for the lock
        return taken

    monkeypatch.setattr(FileLock, "try_acquire", try_acquire)

    def run_b():
        try:
            outcome["b"] = _export_unet(tmp_path, 2, seed=1, version=2)
        except Exception as err:  # noqa: BLE001 - reported below
            outcome["b"] = err

    def check_then_b_runs(*args, **kwargs):
        real_check(*args, **kwargs)
        saved = list((tmp_path / "m").glob(".tmp-*/saved_model.pb"))
        if saved and not started:  # A's check right before its rename has passed
            started.append(1)
            thread = threading.Thread(target=run_b)
            thread.start()
            while not waiting.is_set() and thread.is_alive():
                waiting.wait(0.05)
            outcome["thread"] = thread

    monkeypatch.setattr(saved_model_export, "check_same_model", check_then_b_runs)
    mine = _export_unet(tmp_path, 4)
    outcome["thread"].join(120)
    assert mine.version == 1
    assert isinstance(outcome["b"], ValueError), outcome["b"]
    assert re.search(r"version 1 serves another model.*classes", str(outcome["b"]))
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]  # no lock file or temporary left


def test_a_well_terminated_jpeg_is_not_scanned_byte_by_byte(monkeypatch):
    """The end-of-image marker at the end of the file suffices; only a file with bytes after its
    end is searched for the marker."""
    from keras_dense.signatures import image_bytes

    scans = []
    real = image_bytes._contains
    monkeypatch.setattr(image_bytes, "_contains", lambda *a, **k: scans.append(1) or real(*a, **k))
    jpeg = encode(make_image(40, 52, 1), "jpg")
    size = image_bytes.checked_header_size(tf.constant(jpeg))
    assert size.numpy().tolist() == [40, 52] and not scans
    size = image_bytes.checked_header_size(tf.constant(jpeg + b"\x00" * 10))
    assert size.numpy().tolist() == [40, 52] and len(scans) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated JPEG"):
        image_bytes.checked_header_size(tf.constant(jpeg[:-2]))


def test_export_names_a_damaged_saved_model_of_the_folder(segmenter, tmp_path, capsys):
    out = tmp_path / "served"
    assert cli.main(["export", "--model", segmenter, "--output", str(out)]) == 0
    (out / "1" / "saved_model.pb").write_bytes(b"\xff\xff\xff not a protobuf")
    code = cli.main(["export", "--model", segmenter, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and os.path.join(str(out), "1", "saved_model.pb") in err, err
    assert "SavedModel" in err and len(err.strip().splitlines()) == 1, err
    assert list_versions(out) == [1]
