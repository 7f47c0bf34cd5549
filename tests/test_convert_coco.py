"""The COCO converter on a small generated instances file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keras_dense.data import BadInputError, convert_coco, read_examples

from data_fixtures import random_image, write_rgb

pytest.importorskip("pycocotools", reason="the COCO converter needs the 'coco' extra")


def _coco(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    images, anns = [], []
    for i, (h, w) in enumerate([(40, 60), (50, 30), (20, 20)]):
        write_rgb(tmp_path / "img" / f"{i}.jpg", random_image(rng, h, w))
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "height": h, "width": w})

    def poly(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    anns = [
        {
            "id": 1,
            "image_id": 10,
            "category_id": 18,
            "bbox": [2, 3, 20, 10],
            "segmentation": poly(2, 3, 22, 13),
            "iscrowd": 0,
            "area": 200,
        },
        {
            "id": 2,
            "image_id": 10,
            "category_id": 5,
            "bbox": [30, 20, 10, 15],
            "segmentation": poly(30, 20, 40, 35),
            "iscrowd": 1,
            "area": 150,
        },
        {
            "id": 3,
            "image_id": 11,
            "category_id": 5,
            "bbox": [0, 0, 30, 50],
            "segmentation": poly(0, 0, 30, 50),
            "iscrowd": 0,
            "area": 1500,
        },
    ]
    cats = [{"id": 5, "name": "airplane"}, {"id": 18, "name": "dog"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_boxes_labels_crowd_and_masks(tmp_path):
    path = _coco(tmp_path)
    with pytest.raises(BadInputError, match="2.jpg: image without an annotation"):
        convert_coco(str(path), str(tmp_path / "img"), str(tmp_path / "c"), progress=False)
    m = convert_coco(
        str(path),
        str(tmp_path / "img"),
        str(tmp_path / "c"),
        semantic_masks=True,
        on_error="skip",
        progress=False,
    )
    assert m["classes"] == ["airplane", "dog"] and m["num_images"] == 2
    ex = {e["source_id"]: e for e in read_examples(str(tmp_path / "c-*"))}
    np.testing.assert_allclose(
        ex["0"]["boxes"], [[3 / 40, 2 / 60, 13 / 40, 22 / 60], [20 / 40, 30 / 60, 35 / 40, 40 / 60]]
    )
    np.testing.assert_array_equal(ex["0"]["labels"], [2, 1])
    np.testing.assert_array_equal(ex["0"]["is_crowd"], [False, True])
    mask = ex["0"]["mask"]
    assert (mask[5:11, 4:20] == 2).all() and (mask[22:33, 32:38] == 255).all()
    assert (mask[:, 45:] == 0).all()
    np.testing.assert_allclose(ex["1"]["boxes"], [[0, 0, 1, 1]])
