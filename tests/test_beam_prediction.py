"""`predict --model EXPORT_DIR`, locally and with `--runner beam`: the same files per image."""

from __future__ import annotations

import glob
import json
import os

import cv2
import pytest

pytest.importorskip("apache_beam", reason="the 'beam' extra (apache-beam) is not installed")

from keras_dense import cli  # noqa: E402
from keras_dense.utils.model_card import write_model_card  # noqa: E402

from export_test_utils import (  # noqa: E402
    assert_classes_match,
    decode_rgb,
    encode,
    make_image,
    normalize_np,
    small_unet,
)

SIZES = {"a": (37, 45, "png"), "b": (64, 50, "jpg"), "c": (33, 33, "png"), "d": (40, 29, "jpg")}


def test_beam_prediction_writes_the_local_files_and_lists_bad_inputs(tmp_path):
    model = small_unet()
    model_path = str(tmp_path / "unet.keras")
    model.save(model_path)
    write_model_card(model_path, {"task": "segmentation", "normalization": "tf"})
    assert cli.main(["export", "--model", model_path, "--output", str(tmp_path / "export")]) == 0
    (export_dir,) = {
        os.path.dirname(p)
        for p in glob.glob(str(tmp_path / "export/**/saved_model.pb"), recursive=True)
    }
    images = tmp_path / "images"
    images.mkdir()
    datas = {}
    for seed, (name, (height, width, fmt)) in enumerate(SIZES.items()):
        datas[name] = encode(make_image(height, width, seed), fmt)
        (images / f"{name}.{fmt}").write_bytes(datas[name])
    (images / "e.png").write_bytes(b"not an image")
    common = ["predict", "--model", export_dir, str(images)]
    assert cli.main([*common, "--output", str(tmp_path / "local")]) == 1  # e.png failed
    beam = ["--runner", "beam", "--beam-option", "direct_num_workers=2"]
    assert cli.main([*common, *beam, "--output", str(tmp_path / "beam")]) == 1
    local = sorted(os.listdir(tmp_path / "local"))
    assert local == sorted(os.listdir(tmp_path / "beam"))
    assert {"a_mask.png", "a.json", "errors.jsonl"} <= set(local)
    for name in local:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "beam" / name).read_bytes()
    (error,) = [
        json.loads(line) for line in (tmp_path / "beam/errors.jsonl").read_text().splitlines()
    ]
    assert error["input"] == str(images / "e.png") and "JPEG or PNG" in error["reason"]
    for name, data in datas.items():  # the mask is the Keras model's argmax (independent)
        mask = cv2.imread(str(tmp_path / "beam" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        scores = model.predict(normalize_np(decode_rgb(data), "tf")[None], verbose=0)[0]
        assert_classes_match(mask.astype("int32"), scores)


def test_options_of_a_keras_model_are_refused_for_an_export(tmp_path, capsys):
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "saved_model.pb").write_bytes(b"")
    argv = ["predict", "--model", str(export_dir), "x.png", "--output", str(tmp_path / "o")]
    assert cli.main([*argv, "--crf", "--tta", "flip"]) == 2
    err = capsys.readouterr().err
    assert "--tta, --crf" in err and "not for an export" in err


def test_a_detector_export_gives_its_detections_cut_to_num_detections(tmp_path):
    from keras_dense.export import export_saved_model
    from keras_dense.prediction.export_prediction import ServingModel

    from export_test_utils import tiny_faster_rcnn

    card = {"task": "detection", "classes": ["a", "b"], "normalization": "caffe"}
    options = dict(min_size=80, max_size=120, score_threshold=0.0, max_detections=20)
    export_saved_model(tiny_faster_rcnn(), tmp_path / "export", name="det", card=card, **options)
    (export_dir,) = {
        os.path.dirname(p)
        for p in glob.glob(str(tmp_path / "export/**/saved_model.pb"), recursive=True)
    }
    data = encode(make_image(48, 64, 7), "png")
    (tmp_path / "scene.png").write_bytes(data)
    argv = ["predict", "--model", export_dir, str(tmp_path / "sc*.png")]  # a glob pattern
    assert cli.main([*argv, "--output", str(tmp_path / "out")]) == 0
    got = json.loads((tmp_path / "out/scene.json").read_text())
    raw = ServingModel(export_dir)(data)  # the signature's own padded outputs
    count = int(raw["num_detections"])
    assert 0 < count < raw["detection_boxes"].shape[0]  # some rows are padding
    assert got["num_detections"] == count and len(got["detection_boxes"]) == count
    assert got["detection_boxes"] == raw["detection_boxes"][:count].tolist()
    assert got["detection_scores"] == raw["detection_scores"][:count].tolist()
    assert sorted(os.listdir(tmp_path / "out")) == ["scene.json"]
