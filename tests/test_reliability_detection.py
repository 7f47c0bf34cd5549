"""Reliability of detection and instance records written by other tools (issue 18, items 4-8,
16-18 and 22): every bad record is named (file, record, source_id, field) before the first
training step and at the start of evaluate, or left out with a count when asked.

The records are written by hand with `tf.train.Example`, the way Roboflow, CVAT or the Model
Garden's scripts write them, with OpenCV-encoded images (not through our converters).
"""

from __future__ import annotations

import os
import types

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import cli
from keras_dense.data import BadInputError, read_examples
from keras_dense.data.detection_records import (
    COORD_TOLERANCE,
    DetectionRules,
    check_records,
    resize_problem,
)
from keras_dense.tasks import get_task
from keras_dense.tasks.task import EvaluateOptions
from keras_dense.training.recipe import validate
from keras_dense.utils.model_card import write_model_card

H, W = 48, 64
CLASSES = ["a", "b", "c"]
NAN, INF = float("nan"), float("inf")
BOX = (0.1, 0.1, 0.6, 0.5)
COORDS = ("ymin", "xmin", "ymax", "xmax")
TINY_FASTER = dict(
    backbone="compact",
    backbone_width=8,
    feature_stride=8,
    fc_units=16,
    rpn_filters=16,
    anchor_scales=(16, 32),
    rois_per_image=16,
    train_pre_nms_top_n=100,
    train_post_nms_top_n=30,
    test_pre_nms_top_n=50,
    test_post_nms_top_n=10,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path / "cache"))


# -- records as another tool writes them ---------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    assert ok
    return buffer.tobytes()


def _image(h: int = H, w: int = W, seed: int = 0) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _mask(h: int = H, w: int = W) -> bytes:
    mask = np.zeros((h, w), np.uint8)
    mask[5:28, 6:32] = 1
    return _png(mask)


def _jpeg(h: int = H, w: int = W, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", pixels)
    assert ok
    return buffer.tobytes()


def _zeroed_middle(png: bytes, count: int = 40) -> bytes:
    """A PNG whose middle bytes are zeroed: signature, header and IEND intact."""
    data = bytearray(png)
    middle = len(data) // 2
    data[middle : middle + count] = bytes(count)
    return bytes(data)


def _random_jpeg_body() -> bytes:
    """A JPEG whose entropy-coded data is noise: headers, start of scan and EOI intact."""
    jpeg = _jpeg()
    start = jpeg.rfind(b"\xff\xda") + 20
    noise = np.random.default_rng(5).integers(0, 256, len(jpeg) - start - 2, dtype=np.uint8)
    return jpeg[:start] + noise.tobytes() + jpeg[-2:]


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def example(
    boxes=(BOX,),
    labels=(1,),
    source_id="img",
    h=H,
    w=W,
    masks=None,
    proposals=None,
    drop=(),
    extra=None,
) -> bytes:
    """An OD-API record: PNG image, normalised yxyx boxes, 1-based labels and class texts."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    feature = {
        "image/encoded": _bytes([_image(h, w)]),
        "image/format": _bytes([b"png"]),
        "image/height": _ints([h]),
        "image/width": _ints([w]),
        "image/source_id": _bytes([source_id.encode()]),
        "image/object/class/label": _ints(labels),
        "image/object/class/text": _bytes(
            [CLASSES[k - 1].encode() if 0 < k <= len(CLASSES) else b"?" for k in labels]
        ),
    }
    for i, name in enumerate(COORDS):
        feature[f"image/object/bbox/{name}"] = _floats(boxes[:, i])
    if masks is not None:
        feature["image/object/mask"] = _bytes(masks)
    if proposals is not None:
        proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
        for i, name in enumerate(COORDS):
            feature[f"image/proposal/bbox/{name}"] = _floats(proposals[:, i])
    feature.update(extra or {})
    for key in drop:
        feature.pop(key)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shard(prefix, records) -> str:
    path = f"{prefix}-00000-of-00001.tfrecord"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def good_records(n=3, **kwargs) -> list[bytes]:
    return [example(source_id=f"good{k}", **kwargs) for k in range(n)]


# Each case: the bad record's arguments, the field named, and a phrase of the reason.
BAD = {
    "nan_box": (dict(boxes=[(NAN, 0.1, 0.5, 0.5)]), "image/object/bbox/ymin", "finite"),
    "inf_box": (dict(boxes=[(0.1, 0.1, 0.5, INF)]), "image/object/bbox/xmax", "finite"),
    "inverted_box": (dict(boxes=[(0.6, 0.1, 0.5, 0.5)]), "image/object/bbox/ymin", "inverted"),
    "zero_area_box": (dict(boxes=[(0.2, 0.3, 0.6, 0.3)]), "image/object/bbox/xmax", "zero area"),
    "box_outside": (dict(boxes=[(0.1, 0.1, 1.3, 0.5)]), "image/object/bbox/ymax", "outside [0, 1]"),
    "negative_box": (dict(boxes=[(-0.2, 0.1, 0.5, 0.5)]), "image/object/bbox/ymin", "outside"),
    "pixel_box": (
        dict(boxes=[(5, 6, 30, 40)]),
        "image/object/bbox/",
        "coordinates must be normalised to [0, 1] (xmin / width",
    ),
    "label_0": (dict(labels=[0]), "image/object/class/label", "0 is background"),
    "label_negative": (dict(labels=[-1]), "image/object/class/label", "1-based"),
    "label_above_classes": (dict(labels=[7]), "image/object/class/label", "3 object classes"),
    "missing_label": (
        dict(drop=["image/object/class/label"]),
        "image/object/class/label",
        "missing",
    ),
    "unequal_coordinates": (
        dict(extra={"image/object/bbox/ymax": _floats([0.5, 0.6])}),
        "image/object/bbox/ymax",
        "differ in length",
    ),
    "missing_ymax": (
        dict(drop=["image/object/bbox/ymax"]),
        "image/object/bbox/ymax",
        "missing",
    ),
    "float_labels": (
        dict(extra={"image/object/class/label": _floats([1.0])}),
        "image/object/class/label",
        "holds floats but int64",
    ),
    "missing_image": (dict(drop=["image/encoded"]), "image/encoded", "missing"),
    "not_an_image": (
        dict(extra={"image/encoded": _bytes([b"<html>not found</html>"])}),
        "image/encoded",
        "neither JPEG nor PNG",
    ),
    "truncated_image": (
        dict(extra={"image/encoded": _bytes([_image()[:-30]])}),
        "image/encoded",
        "truncated PNG",
    ),
    "truncated_jpeg": (
        dict(extra={"image/encoded": _bytes([_jpeg()[:-200]])}),
        "image/encoded",
        "truncated JPEG",
    ),
    "corrupt_png_body": (
        dict(extra={"image/encoded": _bytes([_zeroed_middle(_image())])}),
        "image/encoded",
        "the image is a corrupt PNG (chunk 'IDAT'",
    ),
    "corrupt_jpeg_body": (
        dict(extra={"image/encoded": _bytes([_random_jpeg_body()])}),
        "image/encoded",
        "the image is a corrupt JPEG",
    ),
    "height_disagrees": (
        dict(extra={"image/height": _ints([480])}),
        "image/height",
        "48 px high",
    ),
    "crowd_flags_of_other_length": (
        dict(extra={"image/object/is_crowd": _ints([0, 1])}),
        "image/object/is_crowd",
        "2 crowd flags for 1 boxes",
    ),
    "difficult_flags_of_other_length": (
        dict(extra={"image/object/difficult": _ints([0, 0, 0])}),
        "image/object/difficult",
        "3 difficult flags",
    ),
    "class_texts_of_other_length": (
        dict(extra={"image/object/class/text": _bytes([b"a", b"b"])}),
        "image/object/class/text",
        "2 class names for 1 boxes",
    ),
    "class_text_contradicts_the_class_list": (
        dict(labels=[2], extra={"image/object/class/text": _bytes([b"dog"])}),
        "image/object/class/text",
        "label map",
    ),
    "labels_without_boxes": (
        dict(boxes=np.zeros((0, 4)), labels=[1, 2]),
        "image/object/class/label",
        "2 labels for 0 boxes",
    ),
    "extreme_aspect_ratio": (
        dict(h=8, w=400),
        "image/encoded",
        "below the detector's minimum side of 16 px",
    ),
}
# Mask R-CNN records: boxes with instance masks.
BAD_INSTANCES = {
    "nan_box": (
        dict(boxes=[(NAN, 0.1, 0.5, 0.5)], masks=[_mask()]),
        "image/object/bbox/ymin",
        "finite",
    ),
    "float_masks": (
        dict(extra={"image/object/mask": _floats(np.zeros(H * W))}),
        "image/object/mask",
        "holds floats but bytes",
    ),
    "undecodable_mask": (
        dict(masks=[b"GIF89a...."]),
        "image/object/mask",
        "instance mask 0 is not a PNG",
    ),
    "truncated_mask": (
        dict(masks=[_mask()[:-20]]),
        "image/object/mask",
        "instance mask 0 is a truncated PNG",
    ),
    "mask_of_other_size": (
        dict(masks=[_mask(10, 12)]),
        "image/object/mask",
        "instance mask 0 is 12x10 but the image is 64x48",
    ),
    "more_masks_than_boxes": (
        dict(masks=[_mask(), _mask()]),
        "image/object/mask",
        "2 instance masks for 1 boxes",
    ),
    "boxes_without_masks": (dict(), "image/object/mask", "no instance masks"),
    "corrupt_mask_body": (
        dict(
            masks=[_zeroed_middle(_png(np.random.default_rng(1).integers(0, 2, (H, W), np.uint8)))]
        ),
        "image/object/mask",
        "instance mask 0 is a corrupt PNG (chunk 'IDAT'",
    ),
    "mask_16_bit": (
        dict(masks=[_png((cv2.imdecode(np.frombuffer(_mask(), np.uint8), 0)).astype(np.uint16))]),
        "image/object/mask",
        "instance mask 0 is a 16-bit PNG",
    ),
    "empty_mask": (
        dict(masks=[_png(np.zeros((H, W), np.uint8))]),
        "image/object/mask",
        "instance mask 0 is empty",
    ),
    "second_mask_empty": (
        dict(boxes=[BOX, BOX], labels=[1, 2], masks=[_mask(), _png(np.zeros((H, W), np.uint8))]),
        "image/object/mask",
        "instance mask 1 is empty",
    ),
}


def _recipe(task: str, train: str, validation: str = "", **data) -> dict:
    builder = {"detection": "faster_rcnn", "instance_segmentation": "mask_rcnn"}[task]
    return validate(
        {
            "task": task,
            "model": {"builder": builder},
            "data": {
                "train": train,
                "validation": validation,
                "classes": CLASSES,
                "min_size": H,
                "max_size": W,
                **data,
            },
            "training": {"batch_size": 1},
        }
    )


def _stub(proposes_regions: bool = True, num_classes: int = len(CLASSES), **attributes):
    """What the tasks' `datasets` read of a model: its class count and whether it proposes."""
    return types.SimpleNamespace(
        num_classes=num_classes, proposes_regions=proposes_regions, **attributes
    )


def _assert_names(message: str, path: str, index: int, field: str, phrase: str) -> None:
    assert path in message
    assert f"record {index} (source_id 'bad')" in message
    assert field in message
    assert phrase in message


# -- item 4, 5, 17: each bad field is named before the first step -------------------------


@pytest.mark.parametrize("case", sorted(BAD))
def test_detection_datasets_name_each_bad_record(tmp_path, case):
    kwargs, field, phrase = BAD[case]
    path = write_shard(tmp_path / "train", [*good_records(), example(source_id="bad", **kwargs)])
    recipe = _recipe("detection", str(tmp_path / "train-*.tfrecord"))
    with pytest.raises(BadInputError) as caught:
        get_task("detection").datasets(recipe, _stub(), 1, 0)
    _assert_names(str(caught.value), path, 3, field, phrase)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("case", sorted(BAD_INSTANCES))
def test_instance_datasets_name_each_bad_record(tmp_path, case):
    kwargs, field, phrase = BAD_INSTANCES[case]
    if case != "boxes_without_masks":
        kwargs = {"masks": [_mask()], **kwargs}
    good = good_records(masks=[_mask()])
    path = write_shard(tmp_path / "train", [*good, example(source_id="bad", **kwargs)])
    recipe = _recipe("instance_segmentation", str(tmp_path / "train-*.tfrecord"))
    with pytest.raises(BadInputError) as caught:
        get_task("instance_segmentation").datasets(recipe, _stub(), 1, 0)
    _assert_names(str(caught.value), path, 3, field, phrase)


def test_validation_shards_are_checked_too(tmp_path):
    write_shard(tmp_path / "train", good_records())
    path = write_shard(tmp_path / "val", [*good_records(1), example(source_id="bad", labels=[0])])
    recipe = _recipe(
        "detection", str(tmp_path / "train-*.tfrecord"), str(tmp_path / "val-*.tfrecord")
    )
    with pytest.raises(BadInputError) as caught:
        get_task("detection").datasets(recipe, _stub(), 1, 0)
    _assert_names(str(caught.value), path, 1, "image/object/class/label", "0 is background")


def test_the_message_counts_the_other_bad_records(tmp_path):
    records = [
        *good_records(),
        example(source_id="bad", labels=[0]),
        example(source_id="bad2", boxes=[(NAN, 0, 1, 1)]),
    ]
    write_shard(tmp_path / "train", records)
    recipe = _recipe("detection", str(tmp_path / "train-*.tfrecord"))
    with pytest.raises(BadInputError, match=r'1 more record\(s\) of data.train.*on_error = "skip"'):
        get_task("detection").datasets(recipe, _stub(), 1, 0)


def test_a_training_set_without_any_box_is_refused(tmp_path):
    write_shard(tmp_path / "train", [example(source_id=f"e{k}", boxes=[], labels=[]) for k in "12"])
    recipe = _recipe("detection", str(tmp_path / "train-*.tfrecord"))
    with pytest.raises(BadInputError, match="none of its 2 usable record.*has a box"):
        get_task("detection").datasets(recipe, _stub(), 1, 0)


def test_a_training_set_whose_boxes_are_all_left_out_is_refused(tmp_path):
    """Before: accepted, while the pipeline drops crowd boxes and the model difficult ones."""
    crowd = {"image/object/is_crowd": _ints([1])}
    write_shard(tmp_path / "crowd", [example(source_id=f"c{k}", extra=crowd) for k in "12"])
    recipe = _recipe("detection", str(tmp_path / "crowd-*.tfrecord"))
    with pytest.raises(BadInputError, match=r"2 box\(es\), all .*crowd.*nothing to learn"):
        get_task("detection").datasets(recipe, _stub(), 1, 0)
    difficult = {"image/object/difficult": _ints([1])}
    write_shard(tmp_path / "hard", [example(source_id=f"d{k}", extra=difficult) for k in "12"])
    recipe = _recipe("detection", str(tmp_path / "hard-*.tfrecord"))
    with pytest.raises(BadInputError, match=r"all .*difficult.*use_difficult"):
        get_task("detection").datasets(recipe, _stub(use_difficult=False), 1, 0)
    # A model that trains on difficult boxes has something to learn.
    get_task("detection").datasets(recipe, _stub(use_difficult=True), 1, 0)


def _train_args(tmp_path, task: str, train: str) -> list[str]:
    kwargs = dict(TINY_FASTER)
    if task == "instance_segmentation":
        kwargs.update(mask_filters=8, max_detections=5)
    lines = [f'task = "{task}"', "seed = 0", "[model]"]
    lines.append('builder = "%s"' % ("mask_rcnn" if task != "detection" else "faster_rcnn"))
    lines.append("[model.kwargs]")
    for key, value in kwargs.items():
        value = (
            f'"{value}"'
            if isinstance(value, str)
            else list(value)
            if isinstance(value, tuple)
            else value
        )
        lines.append(f"{key} = {value}")
    lines += [
        "[data]",
        f'train = "{train}"',
        f"classes = {CLASSES!r}".replace("'", '"'),
        f"min_size = {H}",
        f"max_size = {W}",
        "max_proposals = 0",
        "[training]",
        "batch_size = 2",
        "epochs = 1",
        "steps_per_epoch = 1",
    ]
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("\n".join(lines) + "\n")
    return ["train", str(recipe), "--output", str(tmp_path / "run")]


@pytest.mark.parametrize(
    "task,case",
    [
        ("detection", "label_above_classes"),
        ("detection", "unequal_coordinates"),
        ("detection", "missing_ymax"),
        ("detection", "float_labels"),
        ("detection", "missing_image"),
        ("instance_segmentation", "float_masks"),
        ("instance_segmentation", "nan_box"),
        ("instance_segmentation", "undecodable_mask"),
        ("detection", "corrupt_png_body"),
        ("detection", "corrupt_jpeg_body"),
        ("instance_segmentation", "corrupt_mask_body"),
    ],
)
def test_train_exits_2_with_one_line_before_the_first_step(tmp_path, capsys, task, case):
    """Items 17 and 18: one line naming file, record and field; no model is written."""
    if task == "detection":
        kwargs, field, phrase = BAD[case]
        good = good_records()
    else:
        kwargs, field, phrase = BAD_INSTANCES[case]
        kwargs = {"masks": [_mask()], **kwargs}
        good = good_records(masks=[_mask()])
    path = write_shard(tmp_path / "data" / "train", [*good, example(source_id="bad", **kwargs)])
    args = _train_args(tmp_path, task, str(tmp_path / "data" / "train-*.tfrecord"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("keras-dense train: error: ")
    _assert_names(err[0], path, 3, field, phrase)
    assert "Graph execution" not in err[0]
    assert not (tmp_path / "run" / "best.keras").exists()


# -- --on-error skip ----------------------------------------------------------------------


def test_skip_leaves_bad_records_out_with_a_count(tmp_path, capsys):
    records = [
        *good_records(),
        example(source_id="bad", boxes=[(NAN, 0.1, 0.5, 0.5)]),
        example(source_id="bad2", boxes=[(5, 6, 30, 40)]),
    ]
    write_shard(tmp_path / "train", records)
    recipe = _recipe("detection", str(tmp_path / "train-*.tfrecord"), on_error="skip")
    train, _, steps, _ = get_task("detection").datasets(recipe, _stub(), 1, 0)
    err = capsys.readouterr().err
    assert "data.train: leaving out 2 of 5 records" in err
    assert "record 3 (source_id 'bad')" in err and "record 4 (source_id 'bad2')" in err
    assert steps == 3  # the three good records at batch size 1
    seen = [b"".join(batch["source_id"].numpy()) for batch in train.take(12)]
    assert set(seen) == {b"good0", b"good1", b"good2"}


def test_skip_never_leaves_out_validation_records(tmp_path):
    write_shard(tmp_path / "train", good_records())
    write_shard(tmp_path / "val", [*good_records(1), example(source_id="bad", labels=[0])])
    recipe = _recipe(
        "detection",
        str(tmp_path / "train-*.tfrecord"),
        str(tmp_path / "val-*.tfrecord"),
        on_error="skip",
    )
    with pytest.raises(BadInputError, match="record 1 .*never left out"):
        get_task("detection").datasets(recipe, _stub(), 1, 0)


def test_on_error_takes_fail_or_skip():
    from keras_dense.utils.errors import RecipeError

    with pytest.raises(RecipeError, match="data.on_error"):
        _recipe("detection", "x", on_error="ignore")


# -- item 8: Fast R-CNN / R-CNN without proposals -----------------------------------------


def test_fast_rcnn_without_proposals_is_refused_naming_the_shard(tmp_path):
    proposals = [(0.0, 0.0, 0.5, 0.5), (0.2, 0.2, 0.9, 0.9)]
    with_proposals = [example(source_id=f"p{k}", proposals=proposals) for k in range(2)]
    path = write_shard(tmp_path / "train", [*with_proposals, example(source_id="bare")])
    pattern = str(tmp_path / "train-*.tfrecord")
    fast = _stub(proposes_regions=False)
    with pytest.raises(BadInputError) as caught:
        get_task("detection").datasets(_recipe("detection", pattern), fast, 1, 0)
    message = str(caught.value)
    assert path in message and "1 of 3 records" in message
    assert "--proposals selective_search" in message and "allow_missing_proposals" in message
    # Reading no proposals at all (max_proposals = 0) is the same thing.
    with pytest.raises(BadInputError, match="data.max_proposals = 0"):
        get_task("detection").datasets(_recipe("detection", pattern, max_proposals=0), fast, 1, 0)
    # Faster R-CNN proposes its own regions and needs none.
    get_task("detection").datasets(_recipe("detection", pattern), _stub(), 1, 0)


def test_fast_rcnn_validation_shards_without_proposals_are_refused_too(tmp_path, caplog):
    """Before: training shards with proposals and validation shards without were accepted."""
    proposals = [(0.0, 0.0, 0.5, 0.5), (0.2, 0.2, 0.9, 0.9)]
    write_shard(
        tmp_path / "train", [example(source_id=f"p{k}", proposals=proposals) for k in "123"]
    )
    path = write_shard(tmp_path / "val", [example(source_id=f"v{k}") for k in "12"])
    train, validation = str(tmp_path / "train-*.tfrecord"), str(tmp_path / "val-*.tfrecord")
    fast = _stub(proposes_regions=False)
    with pytest.raises(BadInputError) as caught:
        get_task("detection").datasets(_recipe("detection", train, validation), fast, 1, 0)
    message = str(caught.value)
    assert message.startswith("data.validation") and path in message
    assert "2 of 2 records" in message and "allow_missing_proposals" in message
    allowed = _recipe("detection", train, validation, allow_missing_proposals=True)
    get_task("detection").datasets(allowed, fast, 1, 0)
    err = caplog.text  # logged, not printed, by the task (issue 19)
    assert "warning: data.validation" in err and "2 of 2 records" in err


def test_allow_missing_proposals_warns_with_the_count(tmp_path, caplog):
    write_shard(tmp_path / "train", good_records())
    recipe = _recipe("detection", str(tmp_path / "train-*.tfrecord"), allow_missing_proposals=True)
    get_task("detection").datasets(recipe, _stub(proposes_regions=False), 1, 0)
    err = caplog.text
    assert "warning" in err and "3 of 3 records" in err and "ground-truth" in err


def test_bad_proposals_are_named(tmp_path):
    bad = example(source_id="bad", proposals=[(0.1, 0.1, 0.5, NAN)])
    path = write_shard(tmp_path / "train", [*good_records(proposals=[BOX]), bad])
    recipe = _recipe("detection", str(tmp_path / "train-*.tfrecord"))
    with pytest.raises(BadInputError) as caught:
        get_task("detection").datasets(recipe, _stub(proposes_regions=False), 1, 0)
    _assert_names(str(caught.value), path, 3, "image/proposal/bbox/xmax", "finite")


# -- damaged image and mask bodies; valid files with bytes after their end ------------------


def test_the_damaged_fixtures_are_ones_tensorflow_cannot_decode():
    """The reference: the pipeline's decoders fail on these (a raw graph error mid-epoch)."""
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_png(_zeroed_middle(_image()))
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(_random_jpeg_body(), channels=3)
    assert tf.io.decode_jpeg(_jpeg()).shape == (H, W, 3)


def _with_trailing_bytes(case: str) -> bytes:
    if case == "png_after_iend":
        return _image() + bytes(64)
    if case == "jpeg_zero_padding":
        return _jpeg() + bytes(200)
    # A phone's motion photo: an MP4 after the JPEG, here holding a start-of-scan pattern.
    video = np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return _jpeg() + b"\x00\x00\x00\x18ftypmp42" + video + b"\xff\xda\x00\x08" + bytes(40)


@pytest.mark.parametrize("case", ["jpeg_zero_padding", "jpeg_motion_photo", "png_after_iend"])
def test_images_with_bytes_after_their_end_are_accepted(tmp_path, case):
    """Before: refused as truncated (the end marker was looked for in the last 64 / 32 bytes)."""
    from keras_dense.data.image_io import read_image_file

    data = _with_trailing_bytes(case)
    is_png = case.startswith("png")
    original = _image() if is_png else _jpeg()
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(original, np.uint8), 1), cv2.COLOR_BGR2RGB)
    decode = tf.io.decode_png if is_png else tf.io.decode_jpeg
    assert decode(data).shape == (H, W, 3)  # TensorFlow reads them
    records = [example(source_id=f"g{k}", extra={"image/encoded": _bytes([data])}) for k in "12"]
    write_shard(tmp_path / "t", records)
    report = check_records(str(tmp_path / "t-*.tfrecord"), DetectionRules(num_classes=3))
    assert not report.problems and (report.records, report.boxes) == (2, 2)
    # The converters' reader shares the check.
    path = tmp_path / ("x.png" if is_png else "x.jpg")
    path.write_bytes(data)
    np.testing.assert_array_equal(read_image_file(str(path)).rgb, reference)


def test_a_jpeg_cut_short_is_still_refused_by_the_converters_reader(tmp_path):
    from keras_dense.data.image_io import read_image_file

    path = tmp_path / "x.jpg"
    path.write_bytes(_jpeg()[:-200] + bytes(300))  # cut, then padded: no end-of-image marker
    with pytest.raises(BadInputError, match="truncated JPEG"):
        read_image_file(str(path))


def test_a_one_bit_instance_mask_is_accepted(tmp_path):
    mask = cv2.imdecode(np.frombuffer(_mask(), np.uint8), cv2.IMREAD_UNCHANGED)
    ok, buffer = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_BILEVEL, 1])
    one_bit = buffer.tobytes()
    assert ok and one_bit[24] == 1  # IHDR bit depth
    decoded = tf.io.decode_png(one_bit, channels=1).numpy()[..., 0]
    np.testing.assert_array_equal(decoded > 0, mask > 0)  # the pipeline reads the object
    write_shard(tmp_path / "t", [example(masks=[one_bit])])
    rules = DetectionRules(num_classes=3, instance_masks=True)
    assert not check_records(str(tmp_path / "t-*.tfrecord"), rules).problems


def test_a_mask_is_empty_exactly_when_the_pipelines_decode_of_it_is(tmp_path):
    """One object pixel anywhere (first or last row, any column) is an object; a colour mask
    whose grey conversion (as `decode_png(channels=1)` reads it) is zero is empty."""
    masks = []
    for y, x in [(0, 0), (H - 1, W - 1), (H // 2, 0), (33, W - 1)]:
        mask = np.zeros((H, W), np.uint8)
        mask[y, x] = 1
        masks.append(_png(mask))
    faint = np.zeros((H, W, 3), np.uint8)
    faint[10:20, 10:20, 0] = 1  # blue 1 (OpenCV's BGR): grey 0.07, read as 0
    masks.append(_png(faint))
    visible = faint * 200
    masks.append(_png(visible))
    records = [example(source_id=f"m{k}", masks=[png]) for k, png in enumerate(masks)]
    write_shard(tmp_path / "t", records)
    rules = DetectionRules(num_classes=3, instance_masks=True)
    report = check_records(str(tmp_path / "t-*.tfrecord"), rules)
    refused = {p.index for p in report.problems}
    expected = {
        k for k, png in enumerate(masks) if not tf.io.decode_png(png, channels=1).numpy().any()
    }
    assert refused == expected == {4}
    assert "instance mask 0 is empty" in report.problems[0].reason


def test_skip_leaves_out_a_record_with_an_empty_instance_mask(tmp_path, capsys):
    empty = _png(np.zeros((H, W), np.uint8))
    records = [*good_records(masks=[_mask()]), example(source_id="bad", masks=[empty])]
    write_shard(tmp_path / "train", records)
    recipe = _recipe("instance_segmentation", str(tmp_path / "train-*.tfrecord"), on_error="skip")
    _, _, steps, _ = get_task("instance_segmentation").datasets(recipe, _stub(), 1, 0)
    err = capsys.readouterr().err
    assert "leaving out 1 of 4 records" in err and "instance mask 0 is empty" in err
    assert steps == 3


# -- the validator itself -----------------------------------------------------------------


def test_float32_rounding_at_the_border_is_accepted_beyond_it_is_not(tmp_path):
    edge = float(np.nextafter(np.float32(1), np.float32(2)))  # 1.0000001, as float32 gives
    assert edge - 1 < COORD_TOLERANCE
    write_shard(tmp_path / "a", [example(boxes=[(0.0, 0.0, edge, 1.0)])])
    report = check_records(str(tmp_path / "a-*.tfrecord"), DetectionRules(num_classes=3))
    assert not report.problems and report.boxes == 1
    write_shard(tmp_path / "b", [example(boxes=[(0.0, 0.0, 1.001, 1.0)])])
    report = check_records(str(tmp_path / "b-*.tfrecord"), DetectionRules(num_classes=3))
    assert "outside [0, 1]" in report.problems[0].reason


def test_good_records_pass_and_are_counted(tmp_path):
    boxes = [BOX, (0.2, 0.2, 0.9, 0.95)]
    records = [example(source_id=f"g{k}", boxes=boxes, labels=[1, 3]) for k in range(4)]
    records.append(example(source_id="empty", boxes=[], labels=[]))  # a negative image
    write_shard(tmp_path / "t", records)
    report = check_records(str(tmp_path / "t-*.tfrecord"), DetectionRules(num_classes=3))
    assert not report.problems
    assert (report.records, report.boxes) == (5, 8)


def test_class_texts_are_compared_with_the_class_list_ignoring_case(tmp_path):
    texts = {"image/object/class/text": _bytes([b" B ", b"c"])}
    write_shard(tmp_path / "t", [example(boxes=[BOX, BOX], labels=[2, 3], extra=texts)])
    rules = DetectionRules(num_classes=3, class_names=("a", "b", "c"))
    report = check_records(str(tmp_path / "t-*.tfrecord"), rules)
    assert not report.problems and not report.label_maps
    # The same labels under another label map (b and c swapped) are refused, per shard.
    rules = DetectionRules(num_classes=3, class_names=("a", "c", "b"))
    report = check_records(str(tmp_path / "t-*.tfrecord"), rules)
    assert not report.problems
    assert "box 0 has label 2 ('c' in the class list) but class text ' B '" in (
        report.label_maps[0].reason
    )


def test_another_label_map_is_refused_once_per_shard_with_its_fix(tmp_path):
    """Before: every record refused with the hint data.on_error=skip, which left out all."""
    dog = {"image/object/class/text": _bytes([b"dog"])}
    first = write_shard(
        tmp_path / "train_a", [example(source_id=f"a{k}", labels=[2], extra=dog) for k in "123"]
    )
    write_shard(
        tmp_path / "train_b", [example(source_id=f"b{k}", labels=[2], extra=dog) for k in "12"]
    )
    for on_error in ("fail", "skip"):
        recipe = _recipe("detection", str(tmp_path / "train_*.tfrecord"), on_error=on_error)
        with pytest.raises(BadInputError) as caught:
            get_task("detection").datasets(recipe, _stub(), 1, 0)
        message = str(caught.value)
        assert first in message and "record 0 (source_id 'a1')" in message
        assert "3 of 3 records of this shard" in message and "1 other shard" in message
        assert "rename data.classes" in message and "label map" in message
        assert "--set data.on_error=skip" not in message and "leaving out" not in message


def test_max_boxes_is_checked_without_counting_crowd_boxes(tmp_path):
    boxes = [BOX] * 3
    crowd = {"image/object/is_crowd": _ints([0, 1, 1])}
    write_shard(tmp_path / "t", [example(boxes=boxes, labels=[1] * 3, extra=crowd)])
    pattern = str(tmp_path / "t-*.tfrecord")
    assert not check_records(pattern, DetectionRules(max_boxes=1)).problems
    problem = check_records(pattern, DetectionRules(max_boxes=1, keep_crowd=True)).problems[0]
    assert "3 boxes, more than data.max_boxes = 1" in problem.reason


def test_a_finished_check_is_remembered_until_the_shard_changes(tmp_path, monkeypatch):
    """Before: with class names (always, in `train`) the cache never hit."""
    from keras_dense.data import detection_records

    path = write_shard(tmp_path / "t", good_records(2))
    rules = DetectionRules(num_classes=3, class_names=tuple(CLASSES))
    first = check_records(path, rules)
    calls = []
    original = detection_records._check_shard
    monkeypatch.setattr(
        detection_records, "_check_shard", lambda p, r: calls.append(p) or original(p, r)
    )
    assert check_records(path, rules) == first and not calls
    assert check_records(path, DetectionRules(num_classes=2)).records == 2 and len(calls) == 1
    # As `train` checks: the task's datasets, class names from data.classes; read once.
    recipe = _recipe("detection", path)
    for _ in range(3):
        get_task("detection").datasets(recipe, _stub(), 1, 0)
    assert len(calls) == 2
    write_shard(tmp_path / "t", [*good_records(2), example(source_id="bad", labels=[0])])
    assert check_records(path, rules).problems[0].source_id == "bad" and len(calls) == 3


def test_resize_problem_matches_the_graph_resize():
    from keras_dense.data.detection_pipeline import fast_rcnn_scale

    sizes = [(8, 4000, 600, 1000), (8, 400, 48, 64), (375, 500, 600, 1000), (60, 400, 48, 64)]
    for height, width, low, high in sizes:
        hw = np.array([height, width], np.float32)
        scale = min(np.float32(low) / hw.min(), np.float32(high) / hw.max())
        fits = np.round(hw.min() * scale) >= 16
        assert (resize_problem(height, width, low, high) is None) == fits
        if fits:
            fast_rcnn_scale(height, width, low, high)
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match="too elongated"):
                fast_rcnn_scale(height, width, low, high)


# -- item 22: the mask count message --------------------------------------------------------


def test_read_examples_names_the_missing_labels_not_zero_boxes(tmp_path):
    boxes = [BOX] * 4
    record = example(
        source_id="bad", boxes=boxes, masks=[_mask()] * 4, drop=["image/object/class/label"]
    )
    write_shard(tmp_path / "t", [record])
    with pytest.raises(BadInputError) as caught:
        list(read_examples(str(tmp_path / "t-*.tfrecord")))
    message = str(caught.value)
    assert "for 0 boxes" not in message
    assert "image/object/class/label" in message and "4 boxes" in message
    write_shard(tmp_path / "u", [example(boxes=boxes, labels=[1] * 4, masks=[_mask()] * 3)])
    with pytest.raises(BadInputError, match="3 instance masks .* for 4 boxes"):
        list(read_examples(str(tmp_path / "u-*.tfrecord")))


# -- items 6, 7: evaluate -------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_detector(tmp_path_factory):
    from keras_dense.apps import faster_rcnn

    keras.utils.set_random_seed(0)
    model = faster_rcnn(num_classes=len(CLASSES), **TINY_FASTER)
    path = str(tmp_path_factory.mktemp("model") / "frcnn.keras")
    model.save(path)
    card = {
        "task": "detection",
        "normalization": "caffe",
        "classes": CLASSES,
        "min_size": H,
        "max_size": W,
        "background_outputs": 1,
    }
    write_model_card(path, card)
    return model, card, path


@pytest.mark.parametrize("label", [7, 0])
def test_evaluate_refuses_labels_outside_the_models_classes(
    tmp_path, capsys, saved_detector, label
):
    """Before: a phantom class_7 (or background) with AP 0 was averaged into mAP, exit 0."""
    path = write_shard(
        tmp_path / "val", [*good_records(2), example(source_id="bad", labels=[label])]
    )
    args = ["evaluate", "--model", saved_detector[2], "--data", str(tmp_path / "val-*.tfrecord")]
    assert cli.main([*args, "--output", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    _assert_names(err[0], path, 2, "image/object/class/label", str(label))
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_where_every_box_is_difficult_exits_2(tmp_path, capsys, saved_detector):
    """Before: `mAP = nan over 2 images`, exit 0 (difficult boxes are not scored)."""
    difficult = {"image/object/difficult": _ints([1])}
    write_shard(tmp_path / "hard", [example(source_id=f"d{k}", extra=difficult) for k in "12"])
    args = ["evaluate", "--model", saved_detector[2], "--data", str(tmp_path / "hard-*")]
    assert cli.main([*args, "--output", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "2 box(es), all marked difficult" in err[0] and "mAP is undefined" in err[0]
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_instance_evaluate_where_every_box_is_crowd_is_refused(tmp_path):
    crowd = {"image/object/is_crowd": _ints([1])}
    write_shard(tmp_path / "val", [example(source_id="c", masks=[_mask()], extra=crowd)])
    card = {"classes": CLASSES, "min_size": H, "max_size": W, "normalization": "caffe"}
    with pytest.raises(BadInputError, match=r"1 box\(es\), all marked crowd.*undefined"):
        get_task("instance_segmentation").evaluate(
            _stub(), card, str(tmp_path / "val-*.tfrecord"), EvaluateOptions()
        )


def test_evaluate_without_records_or_boxes_exits_2(tmp_path, capsys, saved_detector):
    """Before: `mAP = nan`, exit 0."""
    write_shard(tmp_path / "none", [])
    write_shard(tmp_path / "empty", [example(source_id="e", boxes=[], labels=[])])
    for name, phrase in (("none", "hold no records"), ("empty", "has a box")):
        args = ["evaluate", "--model", saved_detector[2], "--data", str(tmp_path / f"{name}-*")]
        assert cli.main([*args, "--output", str(tmp_path / f"eval_{name}")]) == 2
        err = capsys.readouterr().err
        assert phrase in err and "mAP is undefined" in err and name in err


def test_instance_evaluate_refuses_bad_records_first(tmp_path):
    path = write_shard(tmp_path / "val", [example(source_id="bad", labels=[5], masks=[_mask()])])
    card = {"classes": CLASSES, "min_size": H, "max_size": W, "normalization": "caffe"}
    with pytest.raises(BadInputError) as caught:
        get_task("instance_segmentation").evaluate(
            _stub(), card, str(tmp_path / "val-*.tfrecord"), EvaluateOptions()
        )
    _assert_names(str(caught.value), path, 0, "image/object/class/label", "3 object classes")


# -- item 16: extreme aspect ratios ---------------------------------------------------------


def test_detect_objects_refuses_an_image_too_thin_for_the_detector(saved_detector):
    """Before: the 8 x 4000 image was resized to 1 x 64 px and nothing was returned."""
    from keras_dense.prediction.inference import detect_objects

    model, card, _ = saved_detector
    image = np.full((8, 4000, 3), 120, np.uint8)
    with pytest.raises(ValueError, match=r"4000x8 .*minimum side of 16 px"):
        detect_objects(model, image, card)
    found = detect_objects(model, np.full((H, W, 3), 120, np.uint8), card, score_threshold=0.0)
    assert found["boxes"].shape[1:] == (4,)


def test_serving_refuses_an_image_too_thin_for_the_detector(saved_detector):
    from keras_dense.signatures.detection_signatures import detection_signatures

    model, card, _ = saved_detector
    serve = detection_signatures(model, "caffe", min_size=H, max_size=W)["serving_default"]
    thin = _png(np.full((8, 4000, 3), 120, np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="minimum side"):
        serve(image_bytes=tf.constant([_image(), thin]))
    assert serve(image_bytes=tf.constant([_image()]))["num_detections"].shape == (1,)
