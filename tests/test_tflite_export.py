"""`keras-dense export --format tflite`: converted, run with LiteRT, compared, then written."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.data import convert_shapes, read_examples
from keras_dense.export import tflite_export
from keras_dense.export.tflite_export import (
    MIN_AGREEMENT,
    TFLiteCheckError,
    TFLiteUnsupportedError,
    export_tflite,
)
from keras_dense.utils.model_card import write_model_card
from tests.export_test_utils import normalize_np

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="the tflite extra is missing")

SIZE = 32
RECORDS = 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite_data")
    convert_shapes(str(root / "val"), RECORDS, size=SIZE, seed=4, progress=False)
    return str(root / "val-*.tfrecord")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = unet(3, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(tmp_path_factory.mktemp("tflite_model") / "tiny.keras")
    model.save(path)
    card = {"task": "segmentation", "normalization": "caffe", "input_size": [SIZE, SIZE]}
    write_model_card(path, card)
    return path, model


def _independent_check(tflite_path: str, model, images: np.ndarray):
    """Agreement and max |difference| recomputed with the interpreter on the written file."""
    interpreter = litert.Interpreter(model_path=tflite_path)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    got = []
    for image in images:
        interpreter.set_tensor(source, image[None].astype(np.float32))
        interpreter.invoke()
        got.append(interpreter.get_tensor(target)[0].copy())
    got = np.stack(got)
    want = model.predict(images, verbose=0)
    return float(np.mean(got.argmax(-1) == want.argmax(-1))), float(np.max(np.abs(got - want)))


def _records(pattern: str, count: int) -> np.ndarray:
    images = [e["image"] for _, e in zip(range(count), read_examples(pattern))]
    return np.stack([normalize_np(image, "caffe") for image in images])


@pytest.mark.parametrize("quantize", ["none", "float16"])
def test_float_exports_agree_and_report_the_true_difference(segmenter, shards, tmp_path, quantize):
    path, model = segmenter
    result = export_tflite(path, str(tmp_path), quantize=quantize, data=shards, check_images=8)
    suffix = "" if quantize == "none" else f"_{quantize}"
    assert result.path == str(tmp_path / f"tiny{suffix}.tflite")
    report = json.loads((tmp_path / f"tiny{suffix}.tflite.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    check = report["check"]
    assert check["images"] == 8 and check["source"] == shards
    assert check["agreement"] >= MIN_AGREEMENT[quantize] == 0.999
    assert report["input_shape"] == [1, SIZE, SIZE, 3]
    agreement, max_diff = _independent_check(result.path, model, _records(shards, 8))
    assert check["agreement"] == pytest.approx(agreement, abs=1e-9)
    assert check["max_abs_diff"] == pytest.approx(max_diff, rel=1e-5, abs=1e-6)
    if quantize == "float16":
        assert check["max_abs_diff"] > 0  # the weights were rounded: this is not the float file


def test_int8_is_calibrated_on_the_representative_set(segmenter, shards, tmp_path):
    path, model = segmenter
    result = export_tflite(
        path, str(tmp_path), quantize="int8", data=shards, check_images=4, min_agreement=0.5
    )
    check = result.report["check"]
    assert check["representative_images"] == RECORDS and check["images"] == 4
    interpreter = litert.Interpreter(model_path=result.path)
    dtypes = {detail["dtype"] for detail in interpreter.get_tensor_details()}
    assert np.int8 in dtypes  # weights and activations are int8 inside
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    # With 10 records all calibrate, and the last 4 (those read last) are also checked.
    agreement, max_diff = _independent_check(result.path, model, _records(shards, RECORDS)[-4:])
    assert check["agreement"] == pytest.approx(agreement, abs=1e-9)
    assert check["max_abs_diff"] == pytest.approx(max_diff, rel=1e-5, abs=1e-6)
    # The default threshold accepts or refuses by the same numbers.
    again = tmp_path / "default"
    if check["agreement"] >= MIN_AGREEMENT["int8"]:
        export_tflite(path, str(again), quantize="int8", data=shards, check_images=4)
    else:
        with pytest.raises(TFLiteCheckError, match="below the 98.0% required"):
            export_tflite(path, str(again), quantize="int8", data=shards, check_images=4)
        assert not again.exists()


@pytest.mark.parametrize(
    "fault, message",
    [("swapped", "below the 99.9% required"), ("nan", "NaN or infinite values")],
)
def test_a_conversion_that_disagrees_is_refused_and_not_written(
    segmenter, tmp_path, monkeypatch, capsys, fault, message
):
    path, _ = segmenter
    real = tflite_export.run_tflite

    def broken(content, images):
        got = real(content, images)
        if fault == "nan":  # e.g. weights left as uninitialised variables
            return np.where(np.arange(got.shape[-1]) == 0, np.nan, got)
        return got[..., ::-1]  # classes swapped, as a bad conversion would

    monkeypatch.setattr(tflite_export, "run_tflite", broken)
    output = tmp_path / "out"
    args = ["export", "--format", "tflite", "--model", path, "--output", str(output)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-dense export: error: ") and "nothing was written" in err
    assert message in err and len(err.splitlines()) == 1
    assert not output.exists() or not os.listdir(output)


def test_generated_images_without_data_through_the_cli(segmenter, tmp_path, capsys):
    path, _ = segmenter
    args = ["export", "--format", "tflite", "--model", path, "--output", str(tmp_path)]
    assert cli.main([*args, "--input-size", "24,40", "--check-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "class agreement 100.0000%" in out and "(generated)" in out
    report = json.loads((tmp_path / "tiny.tflite.json").read_text())
    assert report["input_shape"] == [1, 24, 40, 3] and report["check"]["images"] == 2


def test_detection_is_refused_by_name(segmenter, tmp_path, capsys):
    _, model = segmenter
    path = str(tmp_path / "detector.keras")
    model.save(path)
    write_model_card(path, {"task": "detection", "normalization": "caffe"})
    with pytest.raises(TFLiteUnsupportedError, match="not supported for detection models"):
        export_tflite(path, str(tmp_path / "out"))
    args = ["export", "--format", "tflite", "--model", path, "--output", str(tmp_path / "out")]
    assert cli.main(args) == 2
    assert "TFLite export is not supported for detection models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_fixed_size_is_required(segmenter, tmp_path):
    _, model = segmenter
    path = str(tmp_path / "nosize.keras")
    model.save(path)
    write_model_card(path, {"task": "segmentation", "normalization": "caffe"})
    with pytest.raises(ValueError, match="--input-size H,W"):
        export_tflite(path, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--input-size '3,x'"):
        tflite_export.parse_input_size("3,x")
