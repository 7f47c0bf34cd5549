"""Reliability of the converters: EXIF orientation, ambiguous inputs, debris and atomicity."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keras_dense.data import BadInputError, convert_pairs, convert_voc, read_examples
from keras_dense.data.image_io import (
    apply_orientation,
    encode_jpeg,
    encode_png,
    exif_orientation,
    image_size_from_header,
    read_image_file,
)

from data_fixtures import write_voc_xml


def with_exif_orientation(jpeg: bytes, orientation: int, big_endian: bool = False) -> bytes:
    """A JPEG with an APP1 Exif segment holding a one-entry TIFF IFD (tag 0x0112)."""
    order = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    tiff += struct.pack(order + "H", 1)  # one entry
    tiff += struct.pack(order + "HHI", 0x0112, 3, 1) + struct.pack(order + "HH", orientation, 0)
    tiff += struct.pack(order + "I", 0)  # no next IFD
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def _photo(h=32, w=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8)
    base[: h // 2, : w // 3] = (250, 20, 20)  # a corner block: orientation is visible
    return np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("big_endian", [False, True])
def test_orientation_matches_opencv(tmp_path, orientation, big_endian):
    """Our parser and transform against OpenCV's own EXIF handling (an independent decoder)."""
    data = with_exif_orientation(encode_jpeg(_photo(), quality=98), orientation, big_endian)
    assert exif_orientation(data) == orientation
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    loaded = read_image_file(str(path))
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), 4)
    np.testing.assert_array_equal(loaded.rgb, reference)
    assert loaded.orientation == orientation
    assert loaded.format == ("jpeg" if orientation == 1 else "png")
    # The stored bytes decode (ignoring EXIF, as TensorFlow does) to the same pixels.
    stored = cv2.imdecode(np.frombuffer(loaded.data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), reference)
    assert image_size_from_header(loaded.data) == reference.shape[:2]


def test_apply_orientation_is_a_permutation_of_pixels():
    image = np.arange(2 * 3).reshape(2, 3)
    assert apply_orientation(image, 6).tolist() == [[3, 0], [4, 1], [5, 2]]  # 90 deg clockwise
    assert apply_orientation(image, 8).tolist() == [[2, 5], [1, 4], [0, 3]]


def test_exif_rotated_phone_photo_round_trips_through_pairs(tmp_path):
    """Orientation 6: stored 32x48, shown 48x32; the mask is drawn on the shown image."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    stored = _photo(32, 48)
    (images / "phone.jpg").write_bytes(with_exif_orientation(encode_jpeg(stored, 98), 6))
    shown = cv2.cvtColor(
        cv2.imdecode(np.frombuffer((images / "phone.jpg").read_bytes(), np.uint8), 1), 4
    )
    assert shown.shape[:2] == (48, 32)
    mask = (shown[..., 0] > 128).astype(np.uint8)
    (masks / "phone.png").write_bytes(encode_png(mask))
    manifest = convert_pairs(
        str(images), str(masks), str(tmp_path / "out" / "train"), classes="bg,fg", progress=False
    )
    assert manifest["exif_reoriented"] == [{"input": str(images / "phone.jpg"), "orientation": 6}]
    (example,) = list(read_examples(str(tmp_path / "out" / "train-*.tfrecord")))
    np.testing.assert_array_equal(example["image"], shown)
    np.testing.assert_array_equal(example["mask"], mask)


def test_duplicate_stems_are_refused_naming_both(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    (images / "a.png").write_bytes(encode_png(_photo()))
    (images / "a.jpg").write_bytes(encode_jpeg(_photo()))
    (masks / "a.png").write_bytes(encode_png(np.zeros((32, 48), np.uint8)))
    with pytest.raises(BadInputError, match=r"a\.jpg and .*a\.png share the stem 'a'"):
        convert_pairs(str(images), str(masks), str(tmp_path / "o"), progress=False)
    assert not list(tmp_path.glob("o*"))


def _voc(root, objects_by_stem, filename=None):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for stem, objects in objects_by_stem.items():
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(encode_jpeg(_photo(40, 50)))
        write_voc_xml(root / "Annotations" / f"{stem}.xml", stem, 50, 40, objects)
        if filename is not None:
            xml = (root / "Annotations" / f"{stem}.xml").read_text()
            xml = xml.replace(
                f"<filename>{stem}.jpg</filename>", f"<filename>{filename}</filename>"
            )
            (root / "Annotations" / f"{stem}.xml").write_text(xml)


def test_voc_class_outside_the_twenty_suggests_classes(tmp_path):
    _voc(tmp_path, {"a": [("person", 2, 2, 20, 20)], "b": [("persn", 3, 3, 30, 30)]})
    with pytest.raises(BadInputError, match=r"\['persn'\] are not among the VOC 20.*--classes"):
        convert_voc(str(tmp_path), str(tmp_path / "o"), task="detection", progress=False)


def test_voc_all_foreign_names_still_sorted(tmp_path):
    _voc(tmp_path, {"a": [("WBC", 2, 2, 20, 20)], "b": [("RBC", 3, 3, 30, 30)]})
    manifest = convert_voc(str(tmp_path), str(tmp_path / "o"), task="detection", progress=False)
    assert manifest["classes"] == ["RBC", "WBC"]


@pytest.mark.parametrize("filename", ["../../secret.jpg", "/etc/hostname"])
def test_voc_filename_leaving_root_is_refused(tmp_path, filename):
    root = tmp_path / "voc"
    _voc(root, {"a": [("person", 2, 2, 20, 20)]}, filename=filename)
    (tmp_path / "secret.jpg").write_bytes(encode_jpeg(_photo(40, 50)))
    with pytest.raises(BadInputError, match="points outside"):
        convert_voc(str(root), str(tmp_path / "o"), task="detection", progress=False)


def test_voc_missing_split_file_is_an_error(tmp_path):
    _voc(tmp_path, {"a": [("person", 2, 2, 20, 20)]})
    with pytest.raises(BadInputError, match="no such split file"):
        convert_voc(str(tmp_path), str(tmp_path / "o"), task="detection", split="val")


def _coco(tmp_path, annotation):
    images = tmp_path / "images"
    images.mkdir()
    (images / "x.jpg").write_bytes(encode_jpeg(_photo(40, 50)))
    good = {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 2, 10, 10], "area": 100}
    data = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 50, "height": 40}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [good, {**good, "id": 2, **annotation}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(images)


@pytest.mark.parametrize(
    "annotation, message",
    [
        ({"category_id": 99}, r"annotation 2 \(image 7\): field 'category_id' is 99"),
        ({"bbox": "10,10,5,5"}, r"annotation 2 \(image 7\): field 'bbox' is '10,10,5,5'"),
        ({"bbox": [1, 2, 3]}, r"field 'bbox' is \[1, 2, 3\]"),
    ],
)
def test_coco_annotation_errors_are_named_and_skippable(tmp_path, annotation, message):
    pytest.importorskip("pycocotools")
    from keras_dense.data import convert_coco

    annotations, images = _coco(tmp_path, annotation)
    with pytest.raises(BadInputError, match=message):
        convert_coco(annotations, images, str(tmp_path / "o"), progress=False)
    manifest = convert_coco(
        annotations, images, str(tmp_path / "o"), on_error="skip", progress=False
    )
    assert manifest["num_boxes"] == 1
    assert len(manifest["skipped"]) == 1 and "annotation 2" in manifest["skipped"][0]["input"]


def _pairs(tmp_path, n=3):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    for i in range(n):
        (images / f"i{i}.png").write_bytes(encode_png(_photo(seed=i)))
        (masks / f"i{i}.png").write_bytes(encode_png(np.zeros((32, 48), np.uint8)))
    return str(images), str(masks)


def test_stale_temporaries_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    images, masks = _pairs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = out / f"train-00000-of-00001.tfrecord.tmp-{dead.pid}"
        stale_manifest = out / f"train.json.tmp-{dead.pid}"
        busy = out / f"train-00000-of-00001.tfrecord.tmp-{live.pid}"
        for path in (stale, stale_manifest, busy):
            path.write_bytes(b"x" * 100)
        convert_pairs(images, masks, str(out / "train"), progress=False)
        assert not stale.exists() and not stale_manifest.exists()
        assert busy.exists()
    finally:
        live.kill()
        live.wait()


def test_failed_manifest_step_leaves_the_previous_complete_set(tmp_path, monkeypatch):
    images, masks = _pairs(tmp_path)
    target = str(tmp_path / "out" / "train")
    first = convert_pairs(images, masks, target, num_shards=2, progress=False)
    before = {p: open(p, "rb").read() for p in map(str, (tmp_path / "out").iterdir())}
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("train.json") and ".old" not in str(src):  # the new manifest
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    (tmp_path / "images" / "i0.png").write_bytes(encode_png(_photo(seed=9)))  # new content
    with pytest.raises(OSError, match="No space"):
        convert_pairs(images, masks, target, num_shards=2, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    after = {p: open(p, "rb").read() for p in map(str, (tmp_path / "out").iterdir())}
    assert after == before  # old shards and manifest back, no temporaries
    assert json.loads(after[target + ".json"])["shards"] == first["shards"]
