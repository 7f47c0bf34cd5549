"""`keras-dense convert folders`: one sub-folder per class, image-level labels."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from keras_dense import cli
from keras_dense.data import BadInputError, convert_folders, read_examples
from keras_dense.data.classification_pipeline import classification_dataset
from tests.data_fixtures import random_image, write_rgb


def _make_root(root, counts=None):
    rng = np.random.default_rng(0)
    counts = counts or {"zebra": 2, "cat": 3, "dog": 1}
    images = {}
    for name, count in counts.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            rgb = random_image(rng, 20 + i, 24)
            write_rgb(root / name / f"img{i}.png", rgb)
            images[f"{name}/img{i}"] = rgb
    (root / "README.txt").write_text("not a class")  # files in the root are ignored
    os.makedirs(root / ".hidden")
    return images


def test_round_trip(tmp_path):
    images = _make_root(tmp_path / "root")
    out = str(tmp_path / "out" / "train")
    code = cli.main(["convert", "folders", "--root", str(tmp_path / "root"), "--output", out])
    assert code == 0
    manifest = json.loads(open(out + ".json").read())
    assert manifest["classes"] == ["cat", "dog", "zebra"]  # sorted
    assert manifest["task"] == "classification" and manifest["num_images"] == 6
    assert manifest["images_per_class"] == {"cat": 3, "dog": 1, "zebra": 2}
    records = list(read_examples(out + "-*.tfrecord"))
    assert sorted(r["source_id"] for r in records) == sorted(images)
    for record in records:
        name = record["source_id"].split("/")[0]
        np.testing.assert_array_equal(record["image"], images[record["source_id"]])
        np.testing.assert_array_equal(record["image_labels"], [manifest["classes"].index(name) + 1])
        assert "mask" not in record and "boxes" not in record
    labels = np.concatenate(
        [y for _, y in classification_dataset(out + "-*.tfrecord", 2, 3, (16, 16))]
    )
    want = [np.eye(3)[manifest["classes"].index(r["source_id"].split("/")[0])] for r in records]
    np.testing.assert_array_equal(labels, want)


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="no such folder"):
        convert_folders(str(tmp_path / "missing"), str(tmp_path / "o"), progress=False)
    (tmp_path / "flat").mkdir()
    write_rgb(tmp_path / "flat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(BadInputError, match="no class sub-folders"):
        convert_folders(str(tmp_path / "flat"), str(tmp_path / "o"), progress=False)
    root = tmp_path / "root"
    _make_root(root, {"a": 2, "b": 1})
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "empty").mkdir()
    with pytest.raises(BadInputError, match="empty class folder"):
        convert_folders(str(root), str(tmp_path / "o"), progress=False)
    os.rmdir(root / "empty")
    with pytest.raises(BadInputError, match="broken.jpg"):
        convert_folders(str(root), str(tmp_path / "o"), progress=False)
    assert not os.path.exists(str(tmp_path / "o.json"))  # nothing half-written
    (root / "empty").mkdir()
    manifest = convert_folders(str(root), str(tmp_path / "o"), on_error="skip", progress=False)
    assert manifest["num_images"] == 3
    assert manifest["classes"] == ["a", "b", "empty"]
    reasons = {os.path.basename(s["input"]): s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"broken.jpg", "empty"}
    code = cli.main(["convert", "folders", "--root", str(tmp_path / "nope"), "--output", "x"])
    assert code == 2
