"""Instance masks in the data layer: schema, `convert instances`, shapes, COCO, detection input.

References are independent NumPy: an instance's box is recomputed here from `np.nonzero` of its
mask (`[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] / [H, W, H, W]`).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.cli import main
from keras_dense.data import (
    BadInputError,
    convert_instances,
    convert_shapes,
    decode_record,
    read_examples,
)
from keras_dense.data.image_io import encode_png
from keras_dense.data.schema import INSTANCE_MASK, Record, serialize_record
from keras_dense.data.writer import write_dataset

from data_fixtures import random_image, write_palette_png, write_rgb


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(K, 4) normalised yxyx tight boxes of (K, H, W) masks, max exclusive (float32)."""
    h, w = masks.shape[1:]
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.asarray(out, np.float32).reshape(-1, 4) / np.float32([h, w, h, w])


def _instance_map(rng, h, w, n):
    """An instance-id map with ids 1..n, each with pixels (later ellipses paint over earlier)."""
    ids = np.zeros((h, w), np.uint8)
    for k in range(1, n + 1):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, w // 3)), int(rng.integers(2, h // 3)))
        cv2.ellipse(ids, centre, axes, float(rng.uniform(0, 180)), 0, 360, k, -1)
    present = [v for v in np.unique(ids) if v]
    relabel = np.zeros(256, np.uint8)
    relabel[present] = np.arange(1, len(present) + 1)
    return relabel[ids]


def _instances_folder(root, n_images=4, seed=0):
    """`images/` (PNG and JPEG) and `masks/STEM_mask.png` (grey and palette PNGs)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for i in range(n_images):
        h, w = int(rng.integers(32, 72)), int(rng.integers(32, 72))
        stem = f"Ped{i:03d}"
        write_rgb(root / "images" / f"{stem}{'.jpg' if i % 2 else '.png'}", random_image(rng, h, w))
        ids = _instance_map(rng, h, w, int(rng.integers(1, 6)))
        if i % 2:  # Penn-Fudan's masks are palette PNGs
            write_palette_png(root / "masks" / f"{stem}_mask.png", ids)
        else:
            assert cv2.imwrite(str(root / "masks" / f"{stem}_mask.png"), ids)
        truth[stem] = ids
    return truth


def _masks_of(ids):
    n = int(ids.max())
    return (ids[None] == np.arange(1, n + 1)[:, None, None]).astype(np.uint8)


def test_record_round_trip_and_empty_masks():
    rng = np.random.default_rng(1)
    masks = (rng.random((3, 20, 30)) < 0.3).astype(np.uint8)
    masks[:, 5, 5] = 1
    record = Record(
        "r",
        encode_png(random_image(rng, 20, 30)),
        "png",
        20,
        30,
        boxes=tight_boxes(masks),
        labels=np.array([1, 2, 1]),
        instance_masks=[encode_png(m) for m in masks],
    )
    ex = decode_record(serialize_record(record))
    np.testing.assert_array_equal(ex["instance_masks"], masks)
    assert ex["instance_masks"].dtype == np.uint8
    # 0/255 masks from other tools read as 0/1.
    record.instance_masks = [encode_png(m * 255) for m in masks]
    np.testing.assert_array_equal(decode_record(serialize_record(record))["instance_masks"], masks)
    bare = decode_record(serialize_record(Record("b", record.image_bytes, "png", 20, 30)))
    assert bare["instance_masks"].shape == (0, 20, 30)
    record.instance_masks = record.instance_masks[:2]
    with pytest.raises(ValueError, match="record 'r': 2 instance masks for 3 boxes"):
        serialize_record(record)


def _write_examples(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for ex in examples:
            writer.write(ex.SerializeToString())


def test_reader_names_records_with_bad_masks(tmp_path):
    rng = np.random.default_rng(2)
    masks = np.zeros((2, 16, 24), np.uint8)
    masks[0, 2:5, 3:9] = masks[1, 8:12, 1:4] = 1
    record = Record(
        "bad_one",
        encode_png(random_image(rng, 16, 24)),
        "png",
        16,
        24,
        boxes=tight_boxes(masks),
        labels=np.array([1, 1]),
        instance_masks=[encode_png(m) for m in masks],
    )
    fewer = tf.train.Example.FromString(serialize_record(record))
    del fewer.features.feature[INSTANCE_MASK].bytes_list.value[1]
    smaller = tf.train.Example.FromString(serialize_record(record))
    smaller.features.feature[INSTANCE_MASK].bytes_list.value[1] = encode_png(masks[1, :8])
    _write_examples(tmp_path / "a.tfrecord", [fewer])
    _write_examples(tmp_path / "b.tfrecord", [smaller])
    with pytest.raises(BadInputError, match=r"a.tfrecord record 0 \(bad_one\): 1 instance masks"):
        list(read_examples(str(tmp_path / "a.tfrecord")))
    with pytest.raises(BadInputError, match=r"bad_one\): instance mask 1 is 24x8 but the image"):
        list(read_examples(str(tmp_path / "b.tfrecord")))


def test_convert_instances_round_trip(tmp_path):
    truth = _instances_folder(tmp_path)
    manifest = convert_instances(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "out" / "ped"),
        class_name="pedestrian",
        num_shards=2,
        workers=2,
        progress=False,
    )
    assert manifest["classes"] == ["pedestrian"] and manifest["box_label_offset"] == 1
    assert manifest["num_boxes"] == sum(int(ids.max()) for ids in truth.values())
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "out" / "ped-*"))}
    assert sorted(examples) == sorted(truth)
    for stem, ids in truth.items():
        ex, masks = examples[stem], _masks_of(ids)
        assert ex["image"].shape[:2] == ids.shape
        np.testing.assert_array_equal(ex["instance_masks"], masks)
        np.testing.assert_array_equal(ex["boxes"], tight_boxes(masks))
        np.testing.assert_array_equal(ex["labels"], np.ones(len(masks)))


def test_convert_instances_command_with_classes_file(tmp_path, capsys):
    truth = _instances_folder(tmp_path, n_images=3, seed=4)
    stems = sorted(truth)
    classes = tmp_path / "classes.csv"
    classes.write_text(
        f"# stem,instance,class\n*,*,person\n{stems[1]},1,bicycle\n{stems[2]},*,dog\n"
    )
    status = main(
        [
            "convert",
            "instances",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--classes-file",
            str(classes),
            "--output",
            str(tmp_path / "o" / "p"),
        ]
    )
    assert status == 0 and "wrote 3 images" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "o" / "p.json").read_text())
    assert manifest["classes"] == ["person", "bicycle", "dog"]
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "o" / "p-*"))}
    for stem, ids in truth.items():
        n = int(ids.max())
        expected = {stems[0]: [1] * n, stems[1]: [2] + [1] * (n - 1), stems[2]: [3] * n}[stem]
        np.testing.assert_array_equal(examples[stem]["labels"], expected)
        np.testing.assert_array_equal(examples[stem]["boxes"], tight_boxes(_masks_of(ids)))


def _one_pair(tmp_path, ids, image_shape=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    h, w = image_shape or ids.shape
    write_rgb(tmp_path / "images" / "a.png", np.zeros((h, w, 3), np.uint8))
    write_rgb(tmp_path / "images" / "b.png", np.zeros((20, 20, 3), np.uint8))
    good = np.zeros((20, 20), np.uint8)
    good[3:6, 4:9] = 1
    assert cv2.imwrite(str(tmp_path / "masks" / "b_mask.png"), good)
    assert cv2.imwrite(str(tmp_path / "masks" / "a_mask.png"), ids)


@pytest.mark.parametrize(
    "case, message",
    [
        ("gap", r"a_mask.png: instance id 2 has no pixels \(ids present: \[1, 3\]\)"),
        ("size", r"a_mask.png: mask size 20x20 differs from its image's 24x20"),
        ("too_many", r"a_mask.png: 4 instances \(largest id 4\) but --max-instances is 3"),
        ("missing", r"a.png: image without an annotation: expected mask .*a_mask.png"),
        ("no_class", r"a_mask.png: no class for instance 2 of 'a' in --classes-file"),
    ],
)
def test_bad_instance_input_is_named_then_skipped(tmp_path, case, message):
    ids = np.zeros((20, 20), np.uint8)
    ids[1:4, 1:4], ids[5:9, 5:9], ids[10:12, 2:6], ids[14:18, 14:18] = 1, 2, 3, 4
    if case == "gap":
        ids[ids >= 2] = 3
    elif case != "too_many":
        ids[ids == 4] = 0
    _one_pair(tmp_path, ids, (20, 24) if case == "size" else None)
    if case == "missing":
        (tmp_path / "masks" / "a_mask.png").unlink()
    options = {"max_instances": 3}
    if case == "no_class":
        (tmp_path / "c.csv").write_text("a,1,x\nb,*,x\na,3,y\n")
        options["classes_file"] = str(tmp_path / "c.csv")
    args = (str(tmp_path / "images"), str(tmp_path / "masks"), str(tmp_path / "o"))
    with pytest.raises(BadInputError, match=message):
        convert_instances(*args, progress=False, **options)
    manifest = convert_instances(*args, on_error="skip", progress=False, **options)
    assert manifest["num_images"] == 1 and manifest["num_boxes"] == 1
    [skip] = manifest["skipped"]
    assert skip["input"].endswith("a_mask.png" if case != "missing" else "a.png")


def test_bad_classes_file_lines_are_named(tmp_path):
    _one_pair(tmp_path, np.ones((20, 20), np.uint8))
    args = (str(tmp_path / "images"), str(tmp_path / "masks"), str(tmp_path / "o"))
    for text, message in [
        ("*,*,a\nb,1\n", r"c.csv line 2: 'b,1': expected STEM,INSTANCE_ID,CLASS"),
        ("b,x,a\n", r"c.csv line 1: instance id 'x': expected an integer in \[1, 255\] or '\*'"),
        ("b,1,a\nb,01,c\n", r"c.csv line 2: b,01 is already given the class 'a'"),
    ]:
        (tmp_path / "c.csv").write_text(text)
        with pytest.raises(BadInputError, match=message):
            convert_instances(*args, classes_file=str(tmp_path / "c.csv"), progress=False)


def test_shapes_instance_masks_agree_with_the_semantic_mask_and_boxes(tmp_path):
    convert_shapes(str(tmp_path / "s"), 8, size=64, seed=5, progress=False)
    examples = list(read_examples(str(tmp_path / "s-*.tfrecord")))
    assert sum(len(e["boxes"]) for e in examples) > 8
    for ex in examples:
        masks, mask = ex["instance_masks"], ex["mask"]
        assert masks.shape == (len(ex["boxes"]), 64, 64) and masks.max() == 1
        assert masks.sum(axis=0).max() == 1  # visible pixels: no pixel in two instances
        for cls in (1, 2, 3):
            union = masks[ex["labels"] == cls].sum(axis=0).astype(bool)
            np.testing.assert_array_equal(union, mask == cls)
        np.testing.assert_allclose(ex["boxes"], tight_boxes(masks), atol=1e-7)


def test_write_dataset_counts_only_consistent_records(tmp_path):
    """A converter bug (masks not one per box) stops the conversion instead of writing it."""

    def make(i):
        return Record(
            "x",
            encode_png(np.zeros((8, 8, 3), np.uint8)),
            "png",
            8,
            8,
            boxes=np.zeros((1, 4), np.float32),
            labels=np.array([1]),
            instance_masks=[],
        )

    with pytest.raises(ValueError, match="0 instance masks for 1 boxes"):
        write_dataset(str(tmp_path / "w"), [0], make, progress=False)
    assert not list(tmp_path.glob("w-*"))


def _coco_file(tmp_path, drop_segmentation_of=None):
    """Two images; a polygon, an uncompressed crowd RLE, a compressed RLE and a 2-part polygon."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir(exist_ok=True)
    sizes = [(40, 60), (48, 32)]
    images = []
    for i, (h, w) in enumerate(sizes):
        write_rgb(tmp_path / "img" / f"{i}.png", random_image(rng, h, w))
        images.append({"id": 10 + i, "file_name": f"{i}.png", "height": h, "width": w})
    blob = np.zeros((40, 60), np.uint8)
    cv2.circle(blob, (40, 25), 9, 1, -1)
    rows, cols = np.nonzero(blob)
    # Uncompressed RLE: column-major run lengths starting with zeros.
    flat = np.concatenate([[0], blob.ravel(order="F"), [0]])
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[1], changes, [flat.size - 1]])).tolist()
    compressed = mask_utils.encode(np.asfortranarray(_square(48, 32)))
    compressed["counts"] = compressed["counts"].decode()
    anns = [
        {"id": 1, "image_id": 10, "category_id": 18, "bbox": [2, 3, 20, 10], "iscrowd": 0,
         "segmentation": [[2, 3, 22, 3, 12, 13]], "area": 100},
        {"id": 2, "image_id": 10, "category_id": 5, "iscrowd": 1, "area": float(blob.sum()),
         "bbox": [int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1],
         "segmentation": {"counts": counts, "size": [40, 60]}},
        {"id": 3, "image_id": 11, "category_id": 5, "bbox": [4, 6, 10, 12], "iscrowd": 0,
         "segmentation": compressed, "area": 120},
        {"id": 4, "image_id": 11, "category_id": 18, "bbox": [1, 30, 30, 15], "iscrowd": 0,
         "segmentation": [[1, 30, 10, 30, 10, 40], [20, 35, 31, 35, 31, 45, 20, 45]], "area": 90},
    ]  # fmt: skip
    if drop_segmentation_of is not None:
        del anns[drop_segmentation_of]["segmentation"]
    cats = [{"id": 5, "name": "airplane"}, {"id": 18, "name": "dog"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), str(tmp_path / "img")


def _square(h, w):
    out = np.zeros((h, w), np.uint8)
    out[6:18, 4:14] = 1
    return out


def test_coco_instance_masks_match_pycocotools(tmp_path):
    pytest.importorskip("pycocotools", reason="the COCO converter needs the 'coco' extra")
    from pycocotools.coco import COCO

    from keras_dense.data import convert_coco

    annotations, images = _coco_file(tmp_path)
    manifest = convert_coco(annotations, images, str(tmp_path / "c"), progress=False)
    assert manifest["instance_masks"] is True
    coco = COCO(annotations)
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "c-*"))}
    for image_id, stem in ((10, "0"), (11, "1")):
        ex = examples[stem]
        expected = np.stack([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(image_id))])
        assert expected.reshape(len(expected), -1).sum(1).min() > 0
        np.testing.assert_array_equal(ex["instance_masks"], expected)
        assert len(ex["boxes"]) == len(expected)
    np.testing.assert_array_equal(examples["0"]["is_crowd"], [False, True])
    # Boxes stay COCO's bbox; here they are the tight boxes of the masks.
    np.testing.assert_allclose(
        examples["0"]["boxes"][1], tight_boxes(examples["0"]["instance_masks"][1:])[0], atol=1e-6
    )
    bare = convert_coco(
        annotations, images, str(tmp_path / "d"), instance_masks=False, progress=False
    )
    assert bare["instance_masks"] is False
    assert all(e["instance_masks"].shape[0] == 0 for e in read_examples(str(tmp_path / "d-*")))


def test_coco_missing_segmentation_is_named_or_box_only(tmp_path):
    pytest.importorskip("pycocotools", reason="the COCO converter needs the 'coco' extra")
    from keras_dense.data import convert_coco

    annotations, images = _coco_file(tmp_path, drop_segmentation_of=2)
    with pytest.raises(BadInputError, match=r"annotation 3 \(image 11\): field 'segmentation'"):
        convert_coco(annotations, images, str(tmp_path / "c"), progress=False)
    data = json.loads(open(annotations).read())
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
    with open(annotations, "w") as f:
        json.dump(data, f)
    manifest = convert_coco(annotations, images, str(tmp_path / "c"), progress=False)
    assert manifest["instance_masks"] is False and manifest["num_boxes"] == 4


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def test_detection_dataset_masks_follow_resize_flip_and_padding(tmp_path):
    from keras_dense.data import detection_dataset

    truth = _instances_folder(tmp_path, n_images=6, seed=8)
    convert_instances(
        str(tmp_path / "images"), str(tmp_path / "masks"), str(tmp_path / "p"), progress=False
    )
    pattern = str(tmp_path / "p-*.tfrecord")
    common = dict(min_size=80, max_size=160, normalization=None, max_boxes=8, seed=3)
    plain = {}
    for batch in detection_dataset(pattern, 2, instance_masks=True, max_instances=6, **common):
        assert batch["instance_masks"].shape[1] == 6 and batch["instance_masks"].dtype == tf.uint8
        for b, sid in enumerate(batch["source_id"].numpy()):
            plain[sid.decode()] = {k: v[b].numpy() for k, v in batch.items()}
    flipped = 0
    train = detection_dataset(
        pattern, 2, training=True, instance_masks=True, max_instances=6, **common
    )
    for batch in train.take(3):
        for b, sid in enumerate(batch["source_id"].numpy()):
            ex, ref = {k: v[b].numpy() for k, v in batch.items()}, plain[sid.decode()]
            n, (h, w) = ex["num_boxes"], ex["image_shape"]
            assert n == truth[sid.decode()].max() and ex["num_proposals"] == 0
            masks = ex["instance_masks"]
            assert not masks[n:].any() and not masks[:, h:].any() and not masks[:, :, w:].any()
            for i in range(n):  # each row's mask has its box, within a pixel
                np.testing.assert_allclose(_mask_box(masks[i]), ex["boxes"][i], atol=1.0)
            # Compared within the image: the batch's padding depends on its other image.
            if not np.array_equal(masks[:, :h, :w], ref["instance_masks"][:, :h, :w]):
                mirrored = ref["instance_masks"][:, :h, :w][:, :, ::-1]
                np.testing.assert_array_equal(masks[:, :h, :w], mirrored)
                flipped += 1
    assert flipped > 0
    # Resized masks are the source masks at the resized size (NumPy bilinear, cut at 0.5).
    for sid, ex in plain.items():
        ids = truth[sid]
        h, w = ex["image_shape"]
        ys = np.clip((np.arange(h) + 0.5) * ids.shape[0] / h - 0.5, 0, ids.shape[0] - 1)
        xs = np.clip((np.arange(w) + 0.5) * ids.shape[1] / w - 0.5, 0, ids.shape[1] - 1)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, ids.shape[0] - 1), np.minimum(x0 + 1, ids.shape[1] - 1)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None]
        for i, m in enumerate(_masks_of(ids).astype(np.float64)):
            value = (
                m[y0][:, x0] * (1 - fy) * (1 - fx)
                + m[y0][:, x1] * (1 - fy) * fx
                + m[y1][:, x0] * fy * (1 - fx)
                + m[y1][:, x1] * fy * fx
            )
            sure = np.abs(value - 0.5) > 1e-4
            got = ex["instance_masks"][i, :h, :w]
            np.testing.assert_array_equal(got[sure], (value >= 0.5)[sure])


def test_detection_dataset_drops_crowd_masks_with_their_boxes(tmp_path):
    pytest.importorskip("pycocotools", reason="the COCO converter needs the 'coco' extra")
    from keras_dense.data import convert_coco, detection_dataset

    annotations, images = _coco_file(tmp_path)
    convert_coco(annotations, images, str(tmp_path / "c"), progress=False)
    options = dict(min_size=40, max_size=60, normalization=None, instance_masks=True)
    for keep_crowd, rows in ((False, [0]), (True, [0, 1])):
        batch = next(
            iter(detection_dataset(str(tmp_path / "c-*"), 1, keep_crowd=keep_crowd, **options))
        )
        record = next(read_examples(str(tmp_path / "c-*")))
        assert record["source_id"] == "0" and batch["num_boxes"][0] == len(rows)
        # Image 0 is 40x60, min_size 40: scale 1, so masks are the stored ones.
        np.testing.assert_array_equal(
            batch["instance_masks"][0, : len(rows), :40, :60], record["instance_masks"][rows]
        )
    ds = detection_dataset(str(tmp_path / "c-*"), 1, keep_crowd=True, max_instances=1, **options)
    too_many = r"max_instances =\] \[1\] \[in record\] \[0\] \[:\] \[2\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=too_many):
        next(iter(ds))


def test_detection_dataset_names_records_without_masks(tmp_path):
    from keras_dense.data import detection_dataset

    def make(i):
        return Record(
            f"no_masks_{i}",
            encode_png(np.zeros((16, 16, 3), np.uint8)),
            "png",
            16,
            16,
            boxes=np.array([[0.1, 0.1, 0.5, 0.5]], np.float32),
            labels=np.array([1]),
        )

    write_dataset(str(tmp_path / "n"), [0], make, progress=False)
    ds = detection_dataset(str(tmp_path / "n-*"), 1, min_size=16, max_size=16, instance_masks=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no_masks_0.*one mask per box"):
        next(iter(ds))
    # The same record with a 16x8 mask for its 16x16 image.
    smaller = tf.train.Example.FromString(serialize_record(make(1)))
    smaller.features.feature[INSTANCE_MASK].bytes_list.value.append(
        encode_png(np.ones((8, 16), np.uint8))
    )
    _write_examples(tmp_path / "s.tfrecord", [smaller])
    ds = detection_dataset(
        str(tmp_path / "s.tfrecord"), 1, min_size=16, max_size=16, instance_masks=True
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[no_masks_1\] \[is\] \[8 16\]"):
        next(iter(ds))
    batch = next(iter(detection_dataset(str(tmp_path / "n-*"), 1, min_size=16, max_size=16)))
    assert "instance_masks" not in batch and batch["num_proposals"].numpy().tolist() == [0]
