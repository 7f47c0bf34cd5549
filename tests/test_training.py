"""Training pieces (recipe, loss, schedules, optimizer, strategy) and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.data import normalize, read_examples
from keras_dense.losses import MaskedSparseCrossEntropy
from keras_dense.tasks import get_task
from keras_dense.training import (
    PolyDecay,
    RecipeError,
    load_recipe,
    parse_override,
    train,
    validate,
)
from keras_dense.training.builders import build_model
from keras_dense.training.distribution import select_strategy, worker_info
from keras_dense.training.optimizers import build_optimizer
from keras_dense.training.recipe import DEFAULTS
from keras_dense.training.schedules import build_schedule
from keras_dense.utils.model_card import read_model_card, write_model_card

from helpers import run_python

MINIMAL = {"model": {"builder": "unet"}, "data": {"train": "x-*.tfrecord"}}


# ----------------------------------------------------------------------------------- recipe


def test_override_values_are_typed_by_toml():
    assert parse_override("training.epochs=3") == (["training", "epochs"], 3)
    assert parse_override("optimizer.learning_rate=1e-3") == (
        ["optimizer", "learning_rate"],
        0.001,
    )
    assert parse_override("training.jit_compile=true") == (["training", "jit_compile"], True)
    assert parse_override("data.crop_size=[32, 48]")[1] == [32, 48]
    assert parse_override('optimizer.name="adamw"')[1] == "adamw"
    # Not TOML: a bare string (no quotes needed for paths and globs).
    assert parse_override("data.train=tfrecords/a-*.tfrecord")[1] == "tfrecords/a-*.tfrecord"
    with pytest.raises(RecipeError, match="key=value"):
        parse_override("training.epochs")


def test_recipe_file_with_overrides(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\nbuilder = "unet"\n[data]\ntrain = "t-*.tfrecord"\ncrop_size = 32\n'
        "[training]\nepochs = 2\n"
    )
    recipe = load_recipe(str(path), ["training.epochs=5", "model.kwargs.filters=8"])
    assert recipe["training"]["epochs"] == 5
    assert recipe["model"]["kwargs"] == {"filters": 8}
    assert recipe["data"]["crop_size"] == [32, 32]
    # Defaults are filled in.
    assert recipe["optimizer"]["momentum"] == DEFAULTS["optimizer"]["momentum"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"training": {"epoch": 3}}, "training.epoch"),
        ({"training": {"epochs": "3"}}, "training.epochs"),
        ({"optimizer": {"name": "rmsprob"}}, "optimizer.name"),
        ({"schedule": {"name": "step"}}, "schedule.boundaries"),
        ({"data": {"crop_size": [32]}}, "data.crop_size"),
        ({"training": {"metrics": ["dice"]}}, "training.metrics"),
        ({"loss": {"class_weights": [1, -1]}}, "loss.class_weights"),
        ({"task": "panoptic"}, "task"),
    ],
)
def test_invalid_recipes_name_the_key(change, key):
    recipe = json.loads(json.dumps(MINIMAL))
    for table, value in change.items():
        if isinstance(value, dict):
            recipe.setdefault(table, {}).update(value)
        else:
            recipe[table] = value
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        validate(recipe)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(RecipeError, match="did you mean 'training.epochs'"):
        validate({**MINIMAL, "training": {"epoch": 3}})


def test_builder_kwargs_are_checked_against_the_signature():
    with pytest.raises(ValueError, match="model.kwargs.filterz"):
        build_model("unet", {"filterz": 8}, 3, 3)
    with pytest.raises(ValueError, match="unknown builder"):
        build_model("unett", {}, 3, 3)
    with pytest.raises(ValueError, match="model.kwargs.num_classes"):
        build_model("unet", {"num_classes": 5}, 3, 3)


# ------------------------------------------------------------------------------------- loss


def _numpy_masked_ce(labels, logits, ignore, weights=None):
    """Weighted mean of -log softmax over labelled pixels, written out per pixel."""
    total, norm = 0.0, 0.0
    flat_labels = labels.reshape(-1)
    flat_logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    for label, row in zip(flat_labels, flat_logits):
        if label == ignore:
            continue
        log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
        w = 1.0 if weights is None else weights[label]
        total += w * (log_z - row[label])
        norm += w
    return total / norm


@pytest.mark.parametrize("weights", [None, [0.2, 1.0, 3.0]])
def test_masked_cross_entropy_matches_numpy(weights):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 5, 6))
    labels[rng.random(labels.shape) < 0.3] = 255
    logits = rng.normal(size=(2, 5, 6, 3)).astype(np.float32) * 3
    loss = MaskedSparseCrossEntropy(255, weights)(labels, logits)
    assert float(loss) == pytest.approx(_numpy_masked_ce(labels, logits, 255, weights), rel=1e-5)


def test_masked_cross_entropy_gradient_skips_ignored_pixels():
    labels = np.array([[[0, 255], [1, 255]]])
    logits = tf.Variable(np.zeros((1, 2, 2, 2), np.float32))
    with tf.GradientTape() as tape:
        loss = MaskedSparseCrossEntropy()(labels, logits)
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(grad[0, :, 1] == 0) and np.all(grad[0, :, 0] != 0)
    # All pixels ignored: loss 0, not NaN.
    assert float(MaskedSparseCrossEntropy()(np.full((1, 2, 2), 255), logits)) == 0.0


def test_loss_serializes():
    loss = MaskedSparseCrossEntropy(7, [1.0, 2.0])
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.ignore_label == 7 and clone.class_weights == [1.0, 2.0]


# ------------------------------------------------------------------------ schedules, optimizer


def test_poly_schedule_matches_formula():
    schedule = PolyDecay(0.01, 100, power=0.9, end_learning_rate=0.001)
    for step in (0, 1, 50, 99, 100, 150):
        expected = (0.01 - 0.001) * (1 - min(step, 100) / 100) ** 0.9 + 0.001
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    clone = PolyDecay.from_config(schedule.get_config())
    assert float(clone(37)) == pytest.approx(float(schedule(37)))


def test_step_and_cosine_schedules():
    step = build_schedule({**DEFAULTS["schedule"], "name": "step", "boundaries": [10, 20]}, 1.0, 30)
    assert [float(step(s)) for s in (0, 10, 11, 21)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    cosine = build_schedule({**DEFAULTS["schedule"], "name": "cosine"}, 2.0, 100)
    assert float(cosine(50)) == pytest.approx(2.0 * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-5)
    assert build_schedule({**DEFAULTS["schedule"], "name": "constant"}, 0.3, 10) == 0.3


def test_optimizers():
    sgd = build_optimizer(
        {**DEFAULTS["optimizer"], "momentum": 0.99, "weight_decay": 5e-4},
        DEFAULTS["schedule"],
        10,
    )
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.99
    adamw = build_optimizer({**DEFAULTS["optimizer"], "name": "adamw"}, DEFAULTS["schedule"], 10)
    assert isinstance(adamw, keras.optimizers.AdamW)
    scaled = build_optimizer(DEFAULTS["optimizer"], DEFAULTS["schedule"], 10, True)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)


def test_mixed_precision_logits_are_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, _ = build_model("unet", {"padding": "same", "filters": 4, "depth": 2}, 3, 3)
        model = get_task("segmentation").finalize_model(model, mixed_precision=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.layers[1].compute_dtype == "float16"
    assert model.outputs[0].dtype == "float32"


def test_strategy_selection(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert worker_info().num_workers == 1 and worker_info().is_chief
    assert select_strategy() is tf.distribute.get_strategy()
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    )
    info = worker_info()
    assert info.num_workers == 2 and not info.is_chief
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        worker_info()


def test_model_card_defaults_and_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(5, 1)])
    path = str(tmp_path / "m.keras")
    card = read_model_card(path, model)
    assert card["task"] == "segmentation" and card["normalization"] == "caffe"
    assert card["classes"] == [f"class_{i}" for i in range(5)]
    write_model_card(path, {"task": "detection", "classes": ["a", "b"], "normalization": None})
    card = read_model_card(path)
    assert card["classes"] == ["a", "b"] and card["normalization"] is None
    assert not list(tmp_path.glob("*.tmp-*"))


# ----------------------------------------------------------------------------- end to end


def _tiny_recipe(root: pathlib.Path, **training) -> dict:
    return validate(
        {
            "model": {
                "builder": "unet",
                "kwargs": {"padding": "same", "filters": 4, "depth": 2, "batch_norm": True},
            },
            "data": {
                "train": str(root / "train-*.tfrecord"),
                "validation": str(root / "val-*.tfrecord"),
                "crop_size": 32,
            },
            "training": {"batch_size": 4, "epochs": 2, "steps_per_epoch": 2, **training},
            "optimizer": {"name": "adamw", "learning_rate": 0.01},
            "schedule": {"name": "poly"},
        }
    )


def _event_tags(folder: pathlib.Path) -> set[str]:
    tags = set()
    for path in folder.rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_train_writes_the_output_folder(shapes32, tmp_path):
    out = tmp_path / "run"
    summary = train(_tiny_recipe(shapes32, image_summaries=2), str(out), verbose=0)
    assert summary["epochs"] == 2 and summary["monitor"] == "val_mean_iou"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    best = max(float(r["val_mean_iou"]) for r in rows)
    assert summary["best"] == pytest.approx(best, abs=1e-6)
    card = json.loads((out / "best.json").read_text())
    assert card["classes"] == ["background", "circle", "square", "triangle"]
    assert card["builder"] == "unet" and card["builder_kwargs"]["filters"] == 4
    assert card["builder_kwargs"]["input_shape"] == [None, None, 3]
    assert json.loads((out / "recipe.json").read_text())["training"]["epochs"] == 2
    state = json.loads((out / "backup" / "state.json").read_text())
    assert state["epoch"] == 2
    tags = _event_tags(out / "logs")
    assert {"input", "truth", "prediction", "epoch_loss", "epoch_mean_iou"} <= tags
    # The best model loads in safe mode in a fresh process and reproduces the outputs.
    model = keras.models.load_model(out / "best.keras")
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32) * 50
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    run_python(
        f"""
        import numpy as np, keras, keras_dense
        model = keras.models.load_model({str(out / "best.keras")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.testing.assert_allclose(model.predict(x, verbose=0),
                                   np.load({str(tmp_path / "y.npy")!r}), atol=1e-5)
        """
    )


def test_valid_unet_trains_on_centre_cropped_masks(shapes32, tmp_path):
    recipe = _tiny_recipe(shapes32, epochs=1, steps_per_epoch=1, image_summaries=1)
    recipe["model"]["kwargs"] = {"padding": "valid", "filters": 4, "depth": 2}
    recipe["data"]["crop_size"] = [36, 36]  # valid depth-2 U-Net: 36 -> 20
    out = tmp_path / "valid"
    summary = train(recipe, str(out), verbose=0)
    # The reported best is the value logged for the epoch the card names.
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    card = json.loads((out / "best.json").read_text())
    assert card["epoch"] == 1 and len(rows) == 1
    assert summary["best"] == pytest.approx(float(rows[0]["val_mean_iou"]), abs=1e-6)
    assert card["val_mean_iou"] == pytest.approx(summary["best"], abs=1e-6)
    # Recomputed here, independently of the trainer's mask cropping and metric: the 32 x 32
    # validation images zero-padded (in normalised space) to the 36 x 36 input, the best model's
    # 20 x 20 prediction scored against the masks' centre [6:26] (36 -> 20 drops 8 a side, of
    # which 2 are padding), mean IoU over the classes that occur.
    model = keras.models.load_model(out / "best.keras")
    examples = list(read_examples(str(shapes32 / "val-*.tfrecord")))
    images = np.stack([np.asarray(normalize(e["image"], card["normalization"])) for e in examples])
    scores = model.predict(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), verbose=0)
    assert scores.shape == (4, 20, 20, 4)
    predicted = np.argmax(scores, -1).ravel()
    truth = np.stack([e["mask"][6:26, 6:26] for e in examples]).astype(np.int64).ravel()
    keep = truth != 255
    confusion = np.zeros((4, 4), np.int64)
    np.add.at(confusion, (truth[keep], predicted[keep]), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    mean_iou = np.mean(np.diag(confusion)[present] / union[present])
    assert summary["best"] == pytest.approx(mean_iou, abs=1e-5)


def test_train_command_reports_a_bad_key(tmp_path, capsys):
    from keras_dense import cli

    path = tmp_path / "r.toml"
    path.write_text('[model]\nbuilder = "unet"\n[data]\ntrain = "t-*.tfrecord"\n')
    assert cli.main(["train", str(path), "--set", "training.epoch=2"]) == 2
    err = capsys.readouterr().err
    assert "keras-dense train: error:" in err and "'training.epoch'" in err
    assert cli.main(["train", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "data.train" in capsys.readouterr().err  # the pattern matches no shard
