"""The shapes converter: round trip, determinism and geometric consistency."""

from __future__ import annotations

import json

import numpy as np

from keras_dense.data import convert_shapes, read_examples, render_shapes


def test_round_trip_is_exact(tmp_path):
    manifest = convert_shapes(
        str(tmp_path / "s"), 12, size=64, seed=3, num_shards=3, progress=False
    )
    examples = list(read_examples(str(tmp_path / "s-*.tfrecord")))
    assert len(examples) == 12 == manifest["num_images"]
    assert sum(s["records"] for s in manifest["shards"]) == 12
    assert manifest["num_boxes"] == sum(len(e["boxes"]) for e in examples)
    for example in examples:
        index = int(example["source_id"].rsplit("_", 1)[1])
        rgb, mask, boxes, labels = render_shapes(index, 64, 3)
        np.testing.assert_array_equal(example["image"], rgb)
        np.testing.assert_array_equal(example["mask"], mask)
        np.testing.assert_allclose(example["boxes"] * 64, boxes, atol=1.0)
        np.testing.assert_array_equal(example["labels"], labels)


def test_boxes_and_masks_agree():
    """Every class-c mask pixel lies in a box of class c, and every box holds its class."""
    for index in range(20):
        _, mask, boxes, labels = render_shapes(index, 96, 0)
        for cls in (1, 2, 3):
            covered = np.zeros_like(mask, bool)
            for (y0, x0, y1, x1), label in zip(boxes.astype(int), labels):
                if label == cls:
                    covered[y0:y1, x0:x1] = True
                    assert (mask[y0:y1, x0:x1] == cls).any()
            assert not ((mask == cls) & ~covered).any()


def test_output_is_deterministic_across_workers(tmp_path):
    a = convert_shapes(str(tmp_path / "a"), 10, size=48, num_shards=2, workers=1, progress=False)
    b = convert_shapes(str(tmp_path / "b"), 10, size=48, num_shards=2, workers=3, progress=False)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    on_disk = json.loads((tmp_path / "a.json").read_text())
    assert on_disk["shards"] == a["shards"] and on_disk["classes"][0] == "background"
