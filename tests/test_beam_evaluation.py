"""`evaluate --runner beam`: the local evaluation's numbers, to the last digit."""

from __future__ import annotations

import json

import keras
import pytest

pytest.importorskip("apache_beam", reason="the 'beam' extra (apache-beam) is not installed")

from keras_dense import cli  # noqa: E402
from keras_dense.apps import unet  # noqa: E402
from keras_dense.data import SHAPE_CLASSES, convert_shapes  # noqa: E402
from keras_dense.utils.model_card import write_model_card  # noqa: E402


def _local_and_beam(path: str, tmp_path, options=()) -> tuple[dict, dict]:
    """`evaluate`'s metrics.json of `path` on `tmp_path/val-*`, locally and on 2 Beam workers."""
    common = ["evaluate", "--model", path, "--data", str(tmp_path / "val-*.tfrecord"), *options]
    assert cli.main([*common, "--output", str(tmp_path / "local")]) == 0
    beam = ["--runner", "beam", "--beam-option", "direct_num_workers=2"]
    assert cli.main([*common, *beam, "--output", str(tmp_path / "beam")]) == 0
    reports = [json.loads((tmp_path / f"{k}/metrics.json").read_text()) for k in ("local", "beam")]
    return reports[0], reports[1]


def test_beam_scores_equal_the_local_ones_with_crf_and_tta(tmp_path):
    convert_shapes(str(tmp_path / "val"), 5, size=32, seed=4, num_shards=2, progress=False)
    keras.utils.set_random_seed(2)
    model = unet(num_classes=4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(tmp_path / "model.keras")
    model.save(path)
    card = {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    write_model_card(path, card)
    local, remote = _local_and_beam(path, tmp_path, ["--crf", "--tta", "flip"])
    assert local["images"] == remote["images"] == 5
    assert remote["confusion_matrix"] == local["confusion_matrix"]
    for key in ("mean_iou", "pixel_accuracy", "frequency_weighted_iou", "per_class_iou"):
        assert remote[key] == local[key], key


def test_beam_evaluation_of_a_classifier_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "classifier.keras"
    path.write_bytes(b"")
    write_model_card(str(path), {"task": "classification", "classes": ["a"]})
    argv = ["evaluate", "--model", str(path), "--data", "x-*.tfrecord", "--runner", "beam"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--runner" in err and "classification" in err


def test_beam_detection_ap_equals_the_local_one(tmp_path):
    from test_evaluate_predict import _tiny_fast_rcnn

    convert_shapes(str(tmp_path / "val"), 4, size=64, seed=5, num_shards=2, progress=False)
    keras.utils.set_random_seed(3)
    model = _tiny_fast_rcnn()
    path = str(tmp_path / "det.keras")
    model.save(path)
    card = {"task": "detection", "classes": list(SHAPE_CLASSES[1:]), "normalization": "caffe"}
    write_model_card(path, {**card, "min_size": 64, "max_size": 96})
    local, remote = _local_and_beam(path, tmp_path)
    assert local["images"] == remote["images"] == 4
    assert remote["map"] == local["map"] and remote["ap"] == local["ap"]
    assert local["map"] > 0  # some detection matched: the comparison is not of two zeros
    # The same precision-recall curves on both pages; the gallery only from the local run.
    pages = {k: (tmp_path / k / "report.html").read_text() for k in ("local", "beam")}
    curves = {k: page[page.index("<polyline") :].split("</svg>")[0] for k, page in pages.items()}
    assert curves["local"] == curves["beam"]
    assert curves["local"].count("<polyline") == len(local["ap"])
    assert "Worst images" in pages["local"] and "Worst images" not in pages["beam"]


def test_beam_instance_ap_equals_the_local_one(tmp_path):
    from test_mask_rcnn import small_model

    convert_shapes(str(tmp_path / "val"), 3, size=48, seed=6, num_shards=2, progress=False)
    manifest = json.loads((tmp_path / "val.json").read_text())
    path = str(tmp_path / "mask_rcnn.keras")
    small_model(seed=1).save(path)
    card = {"task": "instance_segmentation", "classes": manifest["classes"][1:]}
    write_model_card(path, {**card, "normalization": "caffe", "min_size": 64, "max_size": 96})
    local, remote = _local_and_beam(path, tmp_path)
    assert local["images"] == remote["images"] == 3
    for key in ("box_ap", "mask_ap", "voc_map", "voc_ap", "coco"):
        assert remote[key] == local[key], key
    # report.html from either runner: the COCO scores head the VOC page, one curve per class.
    for runner in ("local", "beam"):
        page = (tmp_path / runner / "report.html").read_text()
        assert f"COCO mask AP <b>{local['mask_ap']:.4f}</b>" in page
        assert page.count("<polyline") == len(local["voc_ap"])
