"""The weakly supervised classification task: labels, pipeline, training, export, evaluate."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import apps
from keras_dense.data import convert_shapes, read_examples
from keras_dense.data.classification_pipeline import (
    classification_dataset,
    mask_offset,
    record_labels,
)
from keras_dense.data.image_io import encode_png
from keras_dense.data.schema import Record, parse_serialized, serialize_record
from keras_dense.data.writer import write_dataset
from keras_dense.evaluation.classification_evaluation import evaluate_classification
from keras_dense.tasks import EvaluateOptions, get_task
from keras_dense.training.recipe import validate

NUM_CLASSES = 3  # circle, square, triangle (shapes without background)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    convert_shapes(str(root / "train"), num_images=12, size=48, seed=0, progress=False)
    return str(root / "train-*.tfrecord")


def _numpy_labels(record, offset=1, num_classes=NUM_CLASSES, ignore=255):
    want = np.zeros(num_classes, np.float32)
    if "mask" in record:
        ids = np.unique(record["mask"])
        ids = ids[(ids != ignore) & (ids >= offset)] - offset
        want[ids] = 1
    if "labels" in record:
        want[record["labels"] - 1] = 1
    if "image_labels" in record:
        want[record["image_labels"] - 1] = 1
    return want


def test_task_is_registered():
    task = get_task("classification")
    assert task.builders == ("wsl_classifier",)
    assert task.class_names(["background", "a", "b"]) == ["a", "b"]


def test_labels_from_masks_and_boxes_match_numpy(shapes):
    assert mask_offset(shapes) == 1
    ds = classification_dataset(shapes, 4, NUM_CLASSES, crop_size=(32, 32))
    got = np.concatenate([labels for _, labels in ds.as_numpy_iterator()])
    records = list(read_examples(shapes))
    want = np.stack([_numpy_labels(r) for r in records])
    np.testing.assert_array_equal(got, want)
    assert want.sum() > len(records)  # several images hold more than one class
    # From the masks alone and from the boxes alone (each shapes record has both).
    for r, row in zip(records, want):
        mask_only = {"mask": r["mask"]}
        box_only = {"labels": r["labels"]}
        np.testing.assert_array_equal(_numpy_labels(mask_only), row)
        np.testing.assert_array_equal(_numpy_labels(box_only), row)


def _labels_of(record: Record, window=None, offset=1):
    parsed = parse_serialized(tf.constant(serialize_record(record)))
    mask = (
        tf.io.decode_png(parsed["mask_bytes"], channels=1)[:, :, 0]
        if record.mask_png is not None
        else tf.zeros([0, 0], tf.uint8)
    )
    h, w = record.height, record.width
    win = None if window is None else tf.constant(window, tf.int32)
    return record_labels(parsed, mask, h, w, 4, offset, 255, win).numpy()


def test_labels_of_a_hand_made_record_and_crop_window():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 2:6] = 2  # class 1 (id 2) top left
    mask[15:19, 20:28] = 4  # class 3 bottom right
    mask[10, 10] = 255  # ignored
    record = Record("a", encode_png(np.zeros((20, 30, 3), np.uint8)), "png", 20, 30)
    record.mask_png = encode_png(mask)
    np.testing.assert_array_equal(_labels_of(record), [0, 1, 0, 1])
    # A window over the top left only keeps class 1.
    np.testing.assert_array_equal(_labels_of(record, (0, 0, 10, 10)), [0, 1, 0, 0])
    # Without the background offset, mask id 2 is class 2 and id 4 is out of range.
    record.mask_png = encode_png(np.where(mask == 4, 0, mask).astype(np.uint8))
    np.testing.assert_array_equal(_labels_of(record, offset=0), [1, 0, 1, 0])
    # Boxes (1-based labels) and image labels, with a window that misses the first box.
    boxes = Record("b", record.image_bytes, "png", 20, 30)
    boxes.boxes = np.array([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]], np.float32)
    boxes.labels = np.array([1, 3])
    np.testing.assert_array_equal(_labels_of(boxes), [1, 0, 1, 0])
    np.testing.assert_array_equal(_labels_of(boxes, (12, 16, 8, 14)), [0, 0, 1, 0])
    boxes.image_labels = np.array([4])
    np.testing.assert_array_equal(_labels_of(boxes, (12, 16, 8, 14)), [0, 0, 1, 1])


def test_labels_out_of_range_fail():
    record = Record("bad", encode_png(np.zeros((8, 8, 3), np.uint8)), "png", 8, 8)
    record.image_labels = np.array([9])
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the model's classes"):
        _labels_of(record)


def test_training_batches_are_crops(shapes):
    ds = classification_dataset(shapes, 4, NUM_CLASSES, crop_size=(32, 32), training=True, seed=1)
    images, labels = next(iter(ds))
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, NUM_CLASSES)
    assert np.all(np.isfinite(images.numpy()))


def _small_model(pooling="gap"):
    keras.utils.set_random_seed(0)
    return apps.wsl_classifier(num_classes=NUM_CLASSES, pooling=pooling)


def test_a_few_fit_steps_lower_the_loss(shapes):
    model = _small_model("lse")
    task = get_task("classification")
    recipe = validate(
        {"task": "classification", "model": {"builder": "wsl_classifier"}, "data": {"train": "x"}}
    )
    task.compile(model, recipe, keras.optimizers.Adam(1e-4), NUM_CLASSES)
    images, labels = next(iter(classification_dataset(shapes, 8, NUM_CLASSES, (32, 32))))
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    before = float(bce(labels, model(images)))
    for _ in range(6):
        model.train_on_batch(images, labels)
    after = float(bce(labels, model(images)))
    assert after < before - 0.05, (before, after)


def test_evaluate_report(shapes):
    model = _small_model()
    card = {"classes": ["circle", "square", "triangle"], "normalization": "caffe"}
    report = evaluate_classification(model, card, shapes, tolerance=3.0)
    assert report["images"] == 12
    assert 0 <= report["map"] <= 1
    for key in ("pointing_0px", "pointing", "centre_baseline", "centre_baseline_0px"):
        assert 0 <= report[key]["accuracy"] <= 1
        assert report[key]["trials"] == sum(
            int(_numpy_labels(r).sum()) for r in read_examples(shapes)
        )
    assert report["pointing"]["accuracy"] >= report["pointing_0px"]["accuracy"]
    assert 0 <= report["corloc"]["corloc"] <= 1
    lines = get_task("classification").report_lines(report)
    assert lines[0].startswith("mAP = ")
    assert EvaluateOptions().pointing_tolerance == 3.0


def test_export_signature_scores_and_op_audit(tmp_path):
    from keras_dense.export import export_saved_model

    model = _small_model("max")
    card = {"task": "classification", "normalization": "caffe", "classes": ["a", "b", "c"]}
    result = export_saved_model(model, tmp_path, name="wsl", card=card)  # audits and verifies
    loaded = tf.saved_model.load(result.path)
    rng = np.random.default_rng(3)
    rgbs = [
        rng.integers(0, 256, (40, 56, 3), np.uint8),
        rng.integers(0, 256, (48, 32, 3), np.uint8),
    ]
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([encode_png(x) for x in rgbs])
    )
    assert out["class_maps"].shape == (2, 48, 56, NUM_CLASSES)
    np.testing.assert_array_equal(out["image_sizes"].numpy(), [[40, 56], [48, 32]])
    for i, rgb in enumerate(rgbs):
        x = rgb[None, ..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68])
        want = 1 / (1 + np.exp(-np.asarray(model(x.astype(np.float32)), np.float64)))
        np.testing.assert_allclose(out["scores"].numpy()[i], want[0], rtol=1e-4, atol=1e-5)
    from keras_dense.localization import class_maps

    x = rgbs[0][None, ..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68])
    maps = class_maps(model, x.astype(np.float32))[0]
    np.testing.assert_allclose(out["class_maps"].numpy()[0, :40, :56], maps, rtol=1e-3, atol=1e-3)


def test_image_label_records_train_batches(tmp_path):
    rng = np.random.default_rng(0)

    def make(i):
        rgb = rng.integers(0, 256, (24, 24, 3), np.uint8)
        return Record(f"r{i}", encode_png(rgb), "png", 24, 24, image_labels=np.array([i % 3 + 1]))

    write_dataset(
        str(tmp_path / "labels"), list(range(6)), make, classes=["a", "b", "c"], progress=False
    )
    pattern = str(tmp_path / "labels-*.tfrecord")
    assert mask_offset(pattern) == 0
    labels = np.concatenate([y for _, y in classification_dataset(pattern, 3, 3, (16, 16))])
    np.testing.assert_array_equal(labels, np.eye(3)[[0, 1, 2, 0, 1, 2]])


def test_recipe_trains_and_evaluates(shapes, tmp_path):
    import json
    import pathlib

    from keras_dense import cli
    from keras_dense.training import load_recipe, train

    recipe_path = pathlib.Path(__file__).resolve().parents[1] / "apps" / "wsl_shapes.toml"
    recipe = load_recipe(
        str(recipe_path),
        [
            f'data.train="{shapes}"',
            f'data.validation="{shapes}"',
            "data.crop_size=32",
            "training.batch_size=4",
            "training.epochs=1",
            "training.steps_per_epoch=2",
        ],
    )
    summary = train(recipe, str(tmp_path / "run"), verbose=0)
    assert summary["monitor"] == "val_auc"
    card = json.loads((tmp_path / "run" / "best.json").read_text())
    assert card["task"] == "classification"
    assert card["classes"] == ["circle", "square", "triangle"]
    assert card["mask_offset"] == 1
    assert "background_threshold" not in card  # chosen later, by tune-threshold
    out = tmp_path / "eval"
    args = ["evaluate", "--model", summary["model"], "--data", shapes, "--output", str(out)]
    assert cli.main([*args, "--pointing-tolerance", "2"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["pointing_tolerance"] == 2.0 and report["images"] == 12
    assert report["localization_tta"] == {"flip": False, "scales": [1.0]}
    # --tta / --scales average the pointing maps only: the scores (mAP) are the plain image's.
    augmented_out = tmp_path / "eval_tta"
    args = [*args[:-1], str(augmented_out), "--tta", "flip", "--scales", "1.5"]
    assert cli.main(args) == 0
    augmented = json.loads((augmented_out / "metrics.json").read_text())
    assert augmented["localization_tta"] == {"flip": True, "scales": [1.5]}
    assert augmented["map"] == report["map"]


def test_predict_writes_scores_and_a_class_map(tmp_path):
    import json

    from keras_dense import cli
    from keras_dense.utils.model_card import write_model_card
    from tests.data_fixtures import write_rgb

    model = _small_model()
    path = str(tmp_path / "cls.keras")
    model.save(path)
    classes = ["circle", "square", "triangle"]
    write_model_card(path, {"task": "classification", "normalization": "caffe", "classes": classes})
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    write_rgb(tmp_path / "photo.png", rgb)
    out = tmp_path / "pred"
    assert (
        cli.main(["predict", "--model", path, str(tmp_path / "photo.png"), "--output", str(out)])
        == 0
    )
    scores = json.loads((out / "photo_scores.json").read_text())
    x = rgb[None, ..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    want = 1 / (1 + np.exp(-np.asarray(model(x), np.float64)[0]))
    assert [s["class"] for s in scores] == classes
    np.testing.assert_allclose([s["score"] for s in scores], want, rtol=1e-4)
    assert (out / "photo_class_map.png").is_file()


def test_ground_truth_boxes_and_mask_regions_score_perfect_maps(shapes):
    from keras_dense.data.classification_pipeline import evaluation_records
    from keras_dense.evaluation.classification_evaluation import mask_region_boxes
    from keras_dense.evaluation.localization_metrics import corloc, pointing_game
    from keras_dense.localization import boxes_from_maps, points_from_maps

    ids = np.arange(NUM_CLASSES) + 1
    hits = pairs = 0
    for _image, labels, mask, boxes, box_labels in evaluation_records(shapes, 3, 1, 255):
        maps = np.stack([(mask == i).astype(np.float32) for i in ids], -1)[None]
        predicted = boxes_from_maps(maps, 0.2)
        from_boxes = corloc(predicted, [{"boxes": boxes, "labels": box_labels}], class_ids=ids)
        region_boxes, region_labels = mask_region_boxes(mask, ids)
        from_regions = corloc(
            predicted, [{"boxes": region_boxes, "labels": region_labels}], class_ids=ids
        )
        pointing = pointing_game(points_from_maps(maps), mask[None], 0, ids)
        np.testing.assert_array_equal(pointing["hits"], pointing["counts"])
        np.testing.assert_array_equal(from_regions["hits"], from_regions["counts"])
        np.testing.assert_array_equal(from_boxes["counts"], labels)  # every present class
        hits += from_boxes["hits"].sum()
        pairs += from_boxes["counts"].sum()
    # Boxes of overlapping instances of one class can differ from the merged region.
    assert hits >= 0.8 * pairs
