"""`keras-dense export --format onnx|openvino`: converted, run in its own runtime, compared,
then written; refused by name where the format cannot express the model."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import cli
from keras_dense.apps import unet, with_crf, wsl_classifier
from keras_dense.data import convert_shapes, read_examples
from keras_dense.export.runtime_export import (
    MIN_AGREEMENT,
    export_runtime,
)
from keras_dense.export.runtimes import RUNTIMES, RuntimeUnsupportedError
from keras_dense.utils.model_card import write_model_card
from tests.export_test_utils import normalize_np

SIZE = 32


def _runtime_or_skip(output_format: str):
    try:
        RUNTIMES[output_format].require()
    except ImportError as error:
        pytest.skip(f"the {output_format} extra is missing: {error}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime_data")
    convert_shapes(str(root / "val"), 6, size=SIZE, seed=5, progress=False)
    return str(root / "val-*.tfrecord")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = unet(3, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(tmp_path_factory.mktemp("runtime_model") / "tiny.keras")
    model.save(path)
    write_model_card(
        path, {"task": "segmentation", "normalization": "caffe", "input_size": [SIZE, SIZE]}
    )
    return path, model


def _run_written(output_format: str, path: str, images: np.ndarray) -> np.ndarray:
    """The written file run by its runtime directly (not through keras_dense)."""
    if output_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})[0]
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled([images])[compiled.output(0)]


def _records(pattern: str) -> np.ndarray:
    return np.stack([normalize_np(e["image"], "caffe") for e in read_examples(pattern)])


@pytest.mark.parametrize("output_format", ["onnx", "openvino"])
def test_segmenter_export_agrees_in_its_runtime(segmenter, shards, tmp_path, output_format):
    _runtime_or_skip(output_format)
    path, model = segmenter
    result = export_runtime(path, str(tmp_path), output_format, data=shards, check_images=6)
    names = {"onnx": ["tiny.onnx"], "openvino": ["tiny.bin", "tiny.xml"]}[output_format]
    assert list(result.files) == [str(tmp_path / name) for name in names]
    assert sorted(os.listdir(tmp_path)) == sorted([*names, names[-1] + ".json"])
    report = json.loads(open(result.report_path).read())
    assert report == result.report and report["input_shape"] == [None, SIZE, SIZE, 3]
    check = report["check"]
    assert check["source"] == shards and check["images"] == 6
    assert check["min_agreement"] == MIN_AGREEMENT
    images = _records(shards)
    got = _run_written(output_format, result.path, images)
    want = model.predict(images, verbose=0)
    agreement = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    assert agreement >= MIN_AGREEMENT and check["agreement"] == pytest.approx(agreement)
    assert check["max_abs_diff"] == pytest.approx(float(np.abs(got - want).max()), abs=1e-6)
    assert check["max_abs_diff"] < 1e-3


def test_dynamic_onnx_runs_at_another_size(segmenter, tmp_path, capsys):
    _runtime_or_skip("onnx")
    path, model = segmenter
    args = ["export", "--format", "onnx", "--model", path, "--output", str(tmp_path)]
    assert cli.main([*args, "--dynamic", "--check-images", "2"]) == 0
    assert "class agreement 100.0000%" in capsys.readouterr().out
    report = json.loads((tmp_path / "tiny.onnx.json").read_text())
    assert report["input_shape"] == [None, None, None, 3]
    images = np.random.default_rng(1).normal(0, 40, (2, 48, 40, 3)).astype(np.float32)
    got = _run_written("onnx", str(tmp_path / "tiny.onnx"), images)
    np.testing.assert_allclose(got, model.predict(images, verbose=0), atol=1e-3)


@pytest.mark.parametrize(
    ("fault", "message"),
    [("swapped", "below the 99.9% required"), ("nan", "NaN or infinite values")],
)
def test_a_disagreeing_conversion_is_refused_and_not_written(
    segmenter, tmp_path, monkeypatch, capsys, fault, message
):
    _runtime_or_skip("onnx")
    path, _ = segmenter
    runtime = RUNTIMES["onnx"]
    real = runtime.run

    def broken(model_path, images):
        got = real(model_path, images)
        if fault == "nan":
            return [np.where(np.arange(g.shape[-1]) == 0, np.nan, g) for g in got]
        return [g[..., ::-1] for g in got]  # classes swapped, as a bad conversion would

    monkeypatch.setattr(runtime, "run", broken)
    output = tmp_path / "out"
    args = ["export", "--format", "onnx", "--model", path, "--output", str(output)]
    assert cli.main([*args, "--check-images", "2"]) == 2
    err = capsys.readouterr().err
    assert "nothing was written" in err and message in err
    assert not output.exists()


@pytest.mark.parametrize("output_format", ["onnx", "openvino"])
def test_a_crf_segmenter_exports_through_the_twin(segmenter, tmp_path, output_format):
    """CRF-as-RNN converts through its stock-TF lattice, traced for converters (gathers and
    segment sums for the sparse products, integer lattice codes)."""
    _runtime_or_skip(output_format)
    _, model = segmenter
    path = str(tmp_path / "crf.keras")
    crf = with_crf(model, num_iterations=1)
    crf.save(path)
    card = {"task": "segmentation", "normalization": "caffe", "input_size": [16, 16]}
    write_model_card(path, card)
    result = export_runtime(path, str(tmp_path / "out"), output_format, check_images=2)
    images = np.stack(
        [
            np.repeat(np.repeat(np.random.default_rng(s).uniform(0, 255, (4, 4, 3)), 4, 0), 4, 1)
            - 120
            for s in range(2)
        ]
    ).astype(np.float32)
    got = _run_written(output_format, result.path, images)
    want = crf.predict(images, verbose=0)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= MIN_AGREEMENT
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())


class _SetDiagonal(keras.layers.Layer):
    def call(self, x):
        square = tf.reshape(x, [-1, 4, 4])
        return tf.linalg.set_diag(square, tf.zeros_like(square[:, 0]))


def test_openvino_names_an_operation_without_a_conversion_rule(tmp_path):
    _runtime_or_skip("openvino")
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, _SetDiagonal()(inputs))
    spec = tf.TensorSpec((None, 4, 4, 1), tf.float32, name="images")
    with pytest.raises(RuntimeUnsupportedError, match="^MatrixSetDiagV3$"):
        RUNTIMES["openvino"].convert(model, [spec], str(tmp_path / "m.xml"))


def _wsl(tmp_path, pooling: str) -> tuple[str, keras.Model]:
    keras.utils.set_random_seed(0)
    model = wsl_classifier(3, backbone="compact", width=4, pooling=pooling)
    path = str(tmp_path / f"wsl_{pooling}.keras")
    model.save(path)
    card = {"task": "classification", "normalization": "caffe", "input_size": [SIZE, SIZE]}
    write_model_card(path, card)
    return path, model


@pytest.mark.parametrize("output_format", ["onnx", "openvino"])
def test_wsl_classifier_scores_export(tmp_path, output_format):
    _runtime_or_skip(output_format)
    path, model = _wsl(tmp_path, "gap")
    result = export_runtime(path, str(tmp_path / "out"), output_format, check_images=4)
    assert result.report["check"]["compared"] == 4  # one argmax per image
    images = np.random.default_rng(2).normal(0, 40, (3, SIZE, SIZE, 3)).astype(np.float32)
    got = _run_written(output_format, result.path, images)
    np.testing.assert_allclose(got, model.predict(images, verbose=0), rtol=1e-4, atol=1e-4)


def test_lse_pooling_is_refused_naming_what_onnx_lacks(tmp_path):
    """LSE pooling's stable form needs expm1 / log1p, which tf2onnx does not convert."""
    _runtime_or_skip("onnx")
    path, _ = _wsl(tmp_path, "lse")
    with pytest.raises(RuntimeUnsupportedError, match="the operations Expm1, Log1p of this"):
        export_runtime(path, str(tmp_path / "out"), "onnx", check_images=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("detection", "ONNX export of detection models covers Faster R-CNN with RoIAlign"),
        ("instance_segmentation", "ONNX export is not supported for instance segmentation"),
    ],
)
def test_detectors_are_refused_by_name(segmenter, tmp_path, capsys, task, message):
    _, model = segmenter
    path = str(tmp_path / "detector.keras")
    model.save(path)
    write_model_card(path, {"task": task, "normalization": "caffe"})
    args = ["export", "--format", "onnx", "--model", path, "--output", str(tmp_path / "out")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "export a SavedModel instead" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "onnx", "--quantize", "int8"], "--quantize"),
        (["--format", "tflite", "--dynamic"], "--dynamic"),
        (["--format", "savedmodel", "--dynamic"], "--dynamic"),
    ],
)
def test_options_of_other_formats_are_refused(segmenter, tmp_path, capsys, extra, message):
    path, _ = segmenter
    args = ["export", "--model", path, "--output", str(tmp_path / "out"), *extra]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("output_format", ["onnx", "openvino"])
def test_many_outputs_come_back_in_the_keras_order(tmp_path, output_format):
    """OpenVINO lists outputs by name (Identity, Identity_10, Identity_11, Identity_1, ...):
    they are put back in the Keras model's order."""
    _runtime_or_skip(output_format)
    inputs = keras.Input((4, 4, 1))
    outputs = [keras.layers.Lambda(lambda x, k=k: x * float(k + 1))(inputs) for k in range(12)]
    model = keras.Model(inputs, outputs)
    spec = tf.TensorSpec((None, 4, 4, 1), tf.float32, name="images")
    runtime = RUNTIMES[output_format]
    path = str(tmp_path / f"m{runtime.suffix}")
    runtime.convert(model, [spec], path)
    images = np.random.default_rng(0).normal(size=(2, 4, 4, 1)).astype(np.float32)
    got = runtime.run(path, [images])
    assert len(got) == 12
    for k, value in enumerate(got):
        np.testing.assert_allclose(value, images * (k + 1), rtol=1e-6)


def test_openvino_pair_is_vouched_for_by_its_report_and_an_interrupted_one_is_not(
    segmenter, tmp_path, monkeypatch
):
    """The report holds each file's SHA-256; a failure between the two renames leaves no
    report (the old one is removed first), so a mixed .bin/.xml pair cannot pass for whole."""
    import hashlib

    _runtime_or_skip("openvino")
    path, _ = segmenter
    result = export_runtime(path, str(tmp_path), "openvino", check_images=2)
    sums = json.loads(open(result.report_path).read())["files"]
    assert sums == {
        os.path.basename(f): hashlib.sha256(open(f, "rb").read()).hexdigest() for f in result.files
    }
    renames = []
    real_replace = os.replace

    def fail_on_second(source, target):
        renames.append(target)
        if len(renames) == 2:
            raise OSError("disk gone")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", fail_on_second)
    with pytest.raises(OSError, match="disk gone"):
        export_runtime(path, str(tmp_path), "openvino", check_images=2)
    monkeypatch.undo()
    assert not os.path.exists(result.report_path)  # nothing vouches for the mixed pair
    assert sorted(os.listdir(tmp_path)) == ["tiny.bin", "tiny.xml"]  # no temporaries left


def _faster_rcnn(tmp_path, roi_mode: str) -> tuple[str, keras.Model]:
    from tests.export_test_utils import tiny_faster_rcnn

    model = tiny_faster_rcnn(roi_mode=roi_mode)
    path = str(tmp_path / f"frcnn_{roi_mode}.keras")
    model.save(path)
    card = {"task": "detection", "classes": ["a", "b"], "normalization": "caffe"}
    write_model_card(path, {**card, "min_size": 64, "max_size": 96, "background_outputs": 1})
    return path, model


def test_faster_rcnn_with_roialign_exports_to_onnx_and_detects_as_keras(tmp_path):
    """The ONNX graph gives the raw heads; decoded, clipped and NMS-ed as `detect` does, its
    boxes equal the Keras model's (checked again here in onnxruntime, outside the export)."""
    import onnxruntime

    from keras_dense.detection import detect
    from keras_dense.tasks.detection import box_agreement
    from tests.export_test_utils import make_image

    _runtime_or_skip("onnx")
    path, model = _faster_rcnn(tmp_path, "align")
    result = export_runtime(path, str(tmp_path / "out"), "onnx", check_images=4, dynamic=True)
    check = result.report["check"]
    assert check["agreement"] >= 0.99 and check["compared"] > 0 and check["min_agreement"] == 0.99
    assert check["max_box_diff"] < 1e-2
    assert [i["name"] for i in result.report["inputs"]] == ["images", "image_shape", "scale"]
    assert result.report["outputs"] == sorted(model.output)
    assert result.report["postprocess"]["box_stds"] == list(model.box_stds)
    image = normalize_np(make_image(64, 80, seed=5), "caffe")[None]
    shape, scale = np.array([[64, 80]], np.float32), np.ones(1, np.float32)
    session = onnxruntime.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    raw = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {"images": image, "image_shape": shape, "scale": scale}),
        )
    )
    from keras_dense.detection.detect import postprocess_detections, unpad_detections

    onnx_found = unpad_detections(
        postprocess_detections(
            raw["cls_score"],
            raw["bbox_pred"],
            raw["proposals"],
            shape,
            num_proposals=raw["num_proposals"],
            box_stds=model.box_stds,
        )
    )
    keras_found = unpad_detections(detect(model, image, image_shape=shape, scale=scale))
    assert len(keras_found[0]["boxes"]) > 0
    assert box_agreement(onnx_found, keras_found)["agreement"] == 1.0


def test_box_agreement_counts_both_sides():
    from keras_dense.tasks.detection import box_agreement

    one = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), "labels": [1, 2]}
    moved = {"boxes": np.array([[0, 0, 10, 10], [22, 22, 42, 42]], np.float32), "labels": [1, 2]}
    relabelled = {"boxes": one["boxes"], "labels": [2, 1]}
    assert box_agreement([one], [one])["agreement"] == 1.0
    # The second box moved by 2 px: IoU 0.82 < 0.9, so 2 of the 4 detections agree.
    assert box_agreement([one], [moved]) == {
        "agreement": 0.5,
        "compared": 4,
        "max_abs_diff": 0.0,
        "max_box_diff": 0.0,
    }
    shifted = {"boxes": one["boxes"] + np.float32(0.5), "labels": [1, 2]}
    assert box_agreement([one], [shifted])["max_box_diff"] == 0.5
    assert box_agreement([one], [relabelled])["agreement"] == 0.0
    # Nothing to compare proves nothing: the check fails.
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": []}
    assert box_agreement([empty], [empty])["agreement"] == 0.0


@pytest.mark.parametrize(
    ("roi_mode", "output_format", "message"),
    [
        ("max", "onnx", "build it with roi_mode='align'"),
        ("align", "openvino", "CombinedNonMaxSuppression"),
    ],
)
def test_detectors_that_cannot_convert_are_refused_by_name(
    tmp_path, capsys, roi_mode, output_format, message
):
    path, _ = _faster_rcnn(tmp_path, roi_mode)
    args = ["export", "--format", output_format, "--model", path, "--output", str(tmp_path / "o")]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_detector_too_large_for_tf2onnx_is_refused_naming_the_fix(tmp_path, capsys, monkeypatch):
    from keras_dense.tasks import detection

    path, _ = _faster_rcnn(tmp_path, "align")
    monkeypatch.setattr(detection, "MAX_ONNX_DENSE_WEIGHTS", 1000)
    args = ["export", "--format", "onnx", "--model", path, "--output", str(tmp_path / "o")]
    assert cli.main(args) == 2
    assert "build it with fc_units=1024" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
