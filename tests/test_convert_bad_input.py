"""Bad input never passes silently: fail names the file, skip lists it in the manifest."""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np
import pytest

from keras_dense.data import BadInputError, convert_pairs, convert_voc

from data_fixtures import make_pairs_folder, write_voc_xml


def _convert(tmp_path, on_error="fail", **kwargs):
    return convert_pairs(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "out" / "p"),
        classes="a,b,c",
        on_error=on_error,
        progress=False,
        **kwargs,
    )


def _assert_fails_then_skips(tmp_path, culprit: str, message: str):
    with pytest.raises(BadInputError, match=message) as info:
        _convert(tmp_path)
    assert os.path.basename(culprit) in str(info.value)
    assert not glob.glob(str(tmp_path / "out" / "*")), "a failed conversion left files"
    manifest = _convert(tmp_path, on_error="skip")
    assert [os.path.basename(s["input"]) for s in manifest["skipped"]] == [
        os.path.basename(culprit)
    ]
    assert manifest["num_images"] == 5


def test_truncated_jpeg(tmp_path):
    make_pairs_folder(tmp_path, n=6)
    path = tmp_path / "images" / "img01.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    _assert_fails_then_skips(tmp_path, str(path), "truncated JPEG")


def test_not_an_image(tmp_path):
    make_pairs_folder(tmp_path, n=6)
    path = tmp_path / "images" / "img02.png"
    path.write_bytes(b"this is not a picture" * 10)
    _assert_fails_then_skips(tmp_path, str(path), "not a decodable image|truncated PNG")


def test_mask_size_differs(tmp_path):
    make_pairs_folder(tmp_path, n=6)
    path = tmp_path / "masks" / "img04.png"
    cv2.imwrite(str(path), np.zeros((7, 9), np.uint8))
    _assert_fails_then_skips(tmp_path, str(path), "mask size 9x7 differs")


def test_mask_value_outside_classes(tmp_path):
    make_pairs_folder(tmp_path, n=6)
    path = tmp_path / "masks" / "img05.png"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    mask[3, 3] = 17
    cv2.imwrite(str(path), mask)
    _assert_fails_then_skips(tmp_path, str(path), r"mask values \[17\]")


def test_image_without_annotation(tmp_path):
    make_pairs_folder(tmp_path, n=6)
    os.remove(tmp_path / "masks" / "img03.png")
    _assert_fails_then_skips(
        tmp_path, str(tmp_path / "images" / "img03.jpg"), "without an annotation"
    )


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(BadInputError, match="empty input folder"):
        _convert(tmp_path)


def test_voc_boxes_outside_or_empty(tmp_path):
    root = tmp_path / "voc"
    os.makedirs(root / "JPEGImages")
    os.makedirs(root / "Annotations")
    cv2.imwrite(str(root / "JPEGImages" / "a.jpg"), np.zeros((30, 40, 3), np.uint8))
    write_voc_xml(
        root / "Annotations" / "a.xml",
        "a",
        40,
        30,
        [("cat", 1, 1, 10, 10), ("cat", 5, 5, 41, 20), ("dog", 3, 3, 3, 9)],
    )
    with pytest.raises(BadInputError, match="a.xml object #1 .*outside the 40x30 image"):
        convert_voc(str(root), str(tmp_path / "v"), task="detection", progress=False)
    manifest = convert_voc(
        str(root), str(tmp_path / "v"), task="detection", on_error="skip", progress=False
    )
    assert manifest["num_boxes"] == 1
    reasons = [s["reason"] for s in manifest["skipped"]]
    assert "outside" in reasons[0] and "zero area" in reasons[1]


def test_voc_annotation_without_image_and_empty_root(tmp_path):
    root = tmp_path / "voc"
    os.makedirs(root / "Annotations")
    os.makedirs(root / "JPEGImages")
    with pytest.raises(BadInputError, match="empty input"):
        convert_voc(str(root), str(tmp_path / "v"), task="detection", progress=False)
    write_voc_xml(root / "Annotations" / "b.xml", "b", 40, 30, [("cat", 1, 1, 10, 10)])
    with pytest.raises(BadInputError, match="annotation without an image"):
        convert_voc(str(root), str(tmp_path / "v"), task="detection", progress=False)


def test_bad_arguments_name_themselves(tmp_path):
    make_pairs_folder(tmp_path, n=2)
    with pytest.raises(ValueError, match="--remap '3-4'"):
        _convert(tmp_path, remap=["3-4"])
    with pytest.raises(ValueError, match="on_error='ignore'"):
        _convert(tmp_path, on_error="ignore")
    with pytest.raises(BadInputError, match="--masks: no such folder"):
        convert_pairs(str(tmp_path / "images"), str(tmp_path / "nope"), str(tmp_path / "o"))
