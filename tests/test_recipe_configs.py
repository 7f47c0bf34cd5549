"""Typed recipe configs: every recipe parses into its task's dataclasses, bad keys are named.

The reference for the defaults is the single cross-task `[data]` table and the `[training]`
table of `keras_dense.training.recipe.DEFAULTS` before the configs were typed (written out
below by hand): a recipe that leaves a key out must keep meaning what it meant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib

import numpy as np
import pytest

from keras_dense.tasks import get_task, task_names
from keras_dense.training.recipe import load_config, parse_recipe, read_recipe_file
from keras_dense.training.trainer import check_resume
from keras_dense.utils.errors import RecipeError

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "apps").glob("*.toml"))

# The old `DEFAULTS["data"]` (one table for every task) and `DEFAULTS["training"]`.
OLD_DATA_DEFAULTS = {
    "train": "",
    "validation": "",
    "classes": [],
    "normalization": "caffe",
    "channels": 3,
    "ignore_label": 255,
    "crop_size": [512, 512],
    "scale_range": [0.5, 2.0],
    "flip": True,
    "photometric": True,
    "augment_on": "host",
    "cache": False,
    "shuffle_buffer": 256,
    "min_size": 600,
    "max_size": 1000,
    "max_boxes": 100,
    "max_proposals": 2000,
    "on_error": "fail",
    "allow_missing_proposals": False,
}
OLD_TRAINING_DEFAULTS = {
    "batch_size": 8,
    "validation_batch_size": 0,
    "epochs": 1,
    "steps": 0,
    "steps_per_epoch": 0,
    "validation_steps": 0,
    "metrics": ["mean_iou", "pixel_accuracy"],
    "mixed_precision": False,
    "jit_compile": False,
    "image_summaries": 3,
    "precise_bn_steps": 0,  # added later; off unless a recipe asks for it
    # Added later: on, but it changes only models with a pretrained trunk (the old
    # behaviour is `scale_fresh_layers = false`).
    "scale_fresh_layers": True,
}
# Keys whose default changed on purpose: classification never read `photometric` (its
# pipeline has no photometric distortion), and only segmentation computes mIoU and pixel
# accuracy while training.
CHANGED_DEFAULTS = {("classification", "photometric"): False}
TASK_METRICS = {
    "segmentation": ["mean_iou", "pixel_accuracy"],
    "classification": ["auc", "accuracy_at_0_5"],
    "detection": [],
    "instance_segmentation": [],
}
BUILDERS = {
    "segmentation": "unet",
    "classification": "wsl_classifier",
    "detection": "faster_rcnn",
    "instance_segmentation": "mask_rcnn",
}
TASKS = ("segmentation", "classification", "detection", "instance_segmentation")


def _minimal(task: str, **tables) -> dict:
    table = {"task": task, "model": {"builder": BUILDERS[task]}, "data": {"train": "x-*"}}
    for name, values in tables.items():
        table[name] = {**table.get(name, {}), **values}
    return table


def _data_fields(task: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_task(task).data_config)]


def test_the_task_list_is_complete():
    assert set(task_names()) == set(TASKS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_app_recipe_parses_into_its_tasks_typed_config(path):
    given = read_recipe_file(str(path))
    config = load_config(str(path))
    task = get_task(given["task"])
    assert type(config.data) is task.data_config
    for key, value in given["data"].items():
        got = getattr(config.data, key)
        if key == "crop_size" and isinstance(value, int):
            value = [value, value]
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    for key, value in given["training"].items():
        got = getattr(config.training, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert config.model.builder == given["model"]["builder"]
    assert config.model.kwargs == given["model"].get("kwargs", {})


@pytest.mark.parametrize("task", TASKS)
def test_defaults_are_the_old_defaults(task):
    config = parse_recipe(_minimal(task))
    data = config.to_dict()["data"]
    for key in _data_fields(task):
        want = CHANGED_DEFAULTS.get((task, key), OLD_DATA_DEFAULTS[key])
        if key == "train":
            want = "x-*"
        assert data[key] == want, key
    training = config.to_dict()["training"]
    assert training == {**OLD_TRAINING_DEFAULTS, "metrics": TASK_METRICS[task]}


def _section_fields(task: str):
    """`(section, field, annotation)` of every typed key of a task's recipe."""
    config = parse_recipe(_minimal(task))
    for section in ("model", "data", "training", "schedule", "loss"):
        for field in dataclasses.fields(getattr(config, section)):
            yield section, field.name


CASES = [(task, section, name) for task in TASKS for section, name in _section_fields(task)]


@pytest.mark.parametrize(("task", "section", "name"), CASES)
def test_a_misspelt_key_is_named_with_its_correction(task, section, name):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_minimal(task, **{section: {f"{name}x": 1}}))
    message = str(caught.value)
    assert f"'{section}.{name}x' is unknown" in message
    assert f"did you mean '{section}.{name}'" in message


def _wrong_value(value):
    """A value of another TOML type than `value`."""
    return 7 if isinstance(value, str) else "seven"


@pytest.mark.parametrize(("task", "section", "name"), CASES)
def test_a_wrong_type_is_named_with_the_key_path(task, section, name):
    default = getattr(getattr(parse_recipe(_minimal(task)), section), name)
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_minimal(task, **{section: {name: _wrong_value(default)}}))
    message = str(caught.value)
    assert f"recipe key '{section}.{name}'" in message and "expected" in message, message


def test_the_wrong_type_message_says_what_was_expected():
    with pytest.raises(RecipeError, match=r"'data.crop_size': expected .*integer.*got 'big'"):
        parse_recipe(_minimal("segmentation", data={"crop_size": "big"}))
    with pytest.raises(RecipeError, match=r"'data.crop_size': expected .*\[height, width\]"):
        parse_recipe(_minimal("segmentation", data={"crop_size": [1, 2, 3]}))
    with pytest.raises(RecipeError, match=r"'data.classes': expected a list of strings"):
        parse_recipe(_minimal("segmentation", data={"classes": ["a", 2]}))


FOREIGN = [
    (task, key, other)
    for task in TASKS
    for other in TASKS
    for key in _data_fields(other)
    if key not in _data_fields(task)
]


@pytest.mark.parametrize(("task", "key", "owner"), FOREIGN)
def test_a_key_of_another_tasks_data_table_names_its_task(task, key, owner):
    value = OLD_DATA_DEFAULTS[key]
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_minimal(task, data={key: value}))
    message = str(caught.value)
    assert f"'data.{key}' applies to" in message and owner in message, message
    assert f"not {task}" in message, message


def test_foreign_keys_exist_between_the_tasks():
    assert ("segmentation", "max_boxes", "detection") in FOREIGN
    assert ("detection", "crop_size", "segmentation") in FOREIGN
    assert ("classification", "augment_on", "segmentation") in FOREIGN


def test_the_typed_recipe_round_trips_through_its_stored_form():
    config = parse_recipe(_minimal("detection", data={"max_boxes": 7}, training={"steps": 3}))
    stored = json.loads(json.dumps(config.to_dict()))
    assert parse_recipe(stored) == config
    assert stored["data"]["max_boxes"] == 7 and "crop_size" not in stored["data"]


@pytest.mark.parametrize("task", TASKS)
def test_a_run_saved_with_the_old_cross_task_table_resumes(tmp_path, task):
    """recipe.json of a run of the untyped version: every data key, the old metrics."""
    old = parse_recipe(_minimal(task)).to_dict()
    old["data"] = {**OLD_DATA_DEFAULTS, "train": "x-*"}
    old["training"] = dict(OLD_TRAINING_DEFAULTS)
    old["model"].pop("num_classes")  # the key is new
    os.makedirs(tmp_path / "backup")
    (tmp_path / "backup" / "w.weights.h5").write_bytes(b"")
    (tmp_path / "backup" / "state.json").write_text(
        json.dumps({"epoch": 1, "weights": "w.weights.h5"})
    )
    (tmp_path / "recipe.json").write_text(json.dumps(old))
    check_resume(str(tmp_path), parse_recipe(_minimal(task)))
    with pytest.raises(RecipeError, match="training.batch_size"):
        check_resume(str(tmp_path), parse_recipe(_minimal(task, training={"batch_size": 2})))


def test_num_classes_in_the_recipe_reaches_the_builder(tmp_path, monkeypatch):
    from keras_dense import apps
    from keras_dense.data import convert_shapes
    from keras_dense.training import train

    convert_shapes(str(tmp_path / "train"), 4, size=32, seed=0, progress=False)
    calls = []
    original = apps.unet

    @functools.wraps(original)
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(apps, "unet", spy)
    table = {
        "model": {
            "builder": "unet",
            "num_classes": 4,  # the shapes data: background + 3 shapes
            "kwargs": {"padding": "same", "filters": 2, "depth": 1},
        },
        "data": {"train": str(tmp_path / "train-*.tfrecord"), "crop_size": 32},
        "training": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 1, "image_summaries": 0},
    }
    summary = train(parse_recipe(table), str(tmp_path / "run"), verbose=0)
    assert np.isfinite(summary["history"]["loss"])
    assert [c["num_classes"] for c in calls] == [4]
    table["model"]["num_classes"] = 3
    with pytest.raises(RecipeError, match=r"'model.num_classes' = 3 .* 4 classes"):
        train(parse_recipe(table), str(tmp_path / "run2"), verbose=0)
    assert len(calls) == 1


def test_the_pipeline_checks_labels_against_the_recipes_class_count(tmp_path):
    """The class count reaches the tasks from the recipe, not from the model's outputs."""
    import tensorflow as tf

    from keras_dense import apps
    from keras_dense.data import convert_shapes

    convert_shapes(str(tmp_path / "train"), 4, size=32, seed=0, progress=False)
    table = {
        "model": {"builder": "unet", "kwargs": {"padding": "same", "filters": 2, "depth": 1}},
        "data": {"train": str(tmp_path / "train-*.tfrecord"), "crop_size": 32},
        "training": {"batch_size": 4, "steps_per_epoch": 1},
    }
    model = apps.unet(4, input_shape=(None, None, 3), padding="same", filters=2, depth=1)
    task = get_task("segmentation")
    train, *_ = task.datasets(parse_recipe(table).with_num_classes(4), model, 1, 0)
    next(iter(train))  # the shapes data: labels 0-3
    train, *_ = task.datasets(parse_recipe(table).with_num_classes(2), model, 1, 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        next(iter(train))
