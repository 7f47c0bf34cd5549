"""The VOC converter: detection on BCCD and a generated devkit, segmentation on palettes."""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from keras_dense.data import BadInputError, convert_voc, read_examples

from data_fixtures import random_image, write_palette_png, write_rgb, write_voc_xml


def _devkit(root, rng, n=4):
    for sub in (
        "JPEGImages",
        "Annotations",
        "SegmentationClass",
        "ImageSets/Main",
        "ImageSets/Segmentation",
    ):
        os.makedirs(root / sub)
    truth = {}
    for i in range(n):
        stem = f"2007_{i:06d}"
        h, w = 40 + 3 * i, 50 + 5 * i
        write_rgb(root / "JPEGImages" / f"{stem}.jpg", random_image(rng, h, w))
        mask = rng.integers(0, 21, (h, w)).astype(np.uint8)
        mask[:, 0] = 255
        write_palette_png(root / "SegmentationClass" / f"{stem}.png", mask)
        objects = [("dog", 1, 1, w, h, 0), ("cat", 5, 7, 20, 30, 1)]
        write_voc_xml(root / "Annotations" / f"{stem}.xml", stem, w, h, objects)
        truth[stem] = (mask, objects, w, h)
    (root / "ImageSets/Main/train.txt").write_text("2007_000001\n2007_000003\n")
    return truth


def test_generated_devkit_segmentation_and_detection(tmp_path):
    truth = _devkit(tmp_path / "voc", np.random.default_rng(1))
    m = convert_voc(
        str(tmp_path / "voc"), str(tmp_path / "seg"), task="segmentation", progress=False
    )
    assert m["num_images"] == 4 and len(m["classes"]) == 21
    for e in read_examples(str(tmp_path / "seg-*")):
        np.testing.assert_array_equal(e["mask"], truth[e["source_id"]][0])

    m = convert_voc(
        str(tmp_path / "voc"),
        str(tmp_path / "det"),
        task="detection",
        split="train",
        progress=False,
    )
    assert m["num_images"] == 2 and m["num_boxes"] == 4
    classes = m["classes"]
    for e in read_examples(str(tmp_path / "det-*")):
        _, objects, w, h = truth[e["source_id"]]
        expected = np.array([[(o[2] - 1) / h, (o[1] - 1) / w, o[4] / h, o[3] / w] for o in objects])
        np.testing.assert_allclose(e["boxes"], expected, atol=1e-6)
        assert [classes[k - 1] for k in e["labels"]] == ["dog", "cat"]
        np.testing.assert_array_equal(e["difficult"], [False, True])
    assert np.allclose(expected[0], [0, 0, 1, 1])  # a full-image box is exactly [0,0,1,1]


def test_bccd_detection_round_trip(shared_datasets, tmp_path):
    root = shared_datasets / "bccd"
    with pytest.raises(BadInputError, match="BloodImage_00338.xml object #12.*zero area"):
        convert_voc(str(root), str(tmp_path / "fail"), task="detection", progress=False)
    assert not glob.glob(str(tmp_path / "fail*"))  # nothing half-written is left behind
    m = convert_voc(
        str(root),
        str(tmp_path / "bccd"),
        task="detection",
        on_error="skip",
        num_shards=3,
        workers=2,
        progress=False,
    )
    assert m["classes"] == ["Platelets", "RBC", "WBC"]
    assert [s["input"].rsplit("/", 1)[1] for s in m["skipped"]] == [
        "BloodImage_00338.xml object #12 (RBC)",
        "BloodImage_00343.xml object #3 (RBC)",
    ]
    xml_files = sorted(glob.glob(str(root / "Annotations" / "*.xml")))
    assert m["num_images"] == len(xml_files)
    total = 0
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "bccd-*"))}
    for path in xml_files:
        r = ET.parse(path).getroot()
        w, h = int(r.findtext("size/width")), int(r.findtext("size/height"))
        boxes, names = [], []
        for o in r.findall("object"):
            x0, y0, x1, y1 = (
                float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            if x1 > x0 and y1 > y0:  # VOC pixels are 1-based and inclusive
                boxes.append([(y0 - 1) / h, (x0 - 1) / w, y1 / h, x1 / w])
                names.append(o.findtext("name"))
        e = examples[os.path.basename(path)[:-4]]
        np.testing.assert_allclose(e["boxes"], np.array(boxes).reshape(-1, 4), atol=1.0 / w)
        assert [m["classes"][k - 1] for k in e["labels"]] == names
        total += len(boxes)
    assert m["num_boxes"] == total
