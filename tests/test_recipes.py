"""Every recipe in apps/ parses, names its data correctly and fits its builder."""

from __future__ import annotations

import fnmatch
import os
import pathlib
import shlex

import keras
import numpy as np
import pytest

from keras_dense.training import load_recipe
from keras_dense.training.builders import build_model, builder_kwargs

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "apps").glob("*.toml"))
REQUIRED = {
    "fcn8s_voc",
    "deeplabv3plus_voc",
    "deconvnet_voc",
    "unet_isbi",
    "fast_rcnn_voc07",
    "crfrnn_voc",
    "deeplab_pets",
    "fast_rcnn_bccd",
    "faster_rcnn_bccd",
    "shapes_demo",
    "mask_rcnn_shapes",
}
# Class counts of the data sets the recipes read (segmentation: with background).
NUM_CLASSES = {
    "voc2012": 21,
    "voc2007": 20,
    "isbi2012": 2,
    "pets": 2,
    "pets_wsl": 4,  # background + the 3 breeds (convert pairs --class-from-prefix)
    "bccd": 3,
    "bccd_boxes": 3,
    "shapes": 4,
    "shapes128": 4,
}


def _convert_commands(path: pathlib.Path) -> list[list[str]]:
    """The `keras-dense convert ...` commands of a recipe's header comment."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ").strip()
        if text.startswith("keras-dense convert"):
            commands.append(shlex.split(text))
    return commands


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_every_required_recipe_exists():
    assert REQUIRED <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_its_header_makes_its_shards(path):
    recipe = load_recipe(str(path))
    commands = _convert_commands(path)
    assert commands, f"{path.name}: the header gives no keras-dense convert command"
    outputs = [_option(c, "--output") for c in commands]
    for key in ("train", "validation"):
        pattern = recipe["data"][key]
        if not pattern:
            continue
        # Inside the repository, under tfrecords/.
        assert not os.path.isabs(pattern) and ".." not in pattern.split("/"), pattern
        assert pattern.startswith("tfrecords/"), pattern
        made = [o for o in outputs if fnmatch.fnmatch(f"{o}-00000-of-00001.tfrecord", pattern)]
        assert made, f"{path.name}: no convert command writes data.{key} = {pattern}"
    for command in commands:
        for option in ("--split-file",):
            value = _option(command, option)
            if value and value.startswith("apps/"):
                assert (REPO / value).is_file(), value


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_kwargs_fit_the_builder(path):
    recipe = load_recipe(str(path))
    data_set = recipe["data"]["train"].split("/")[1]
    num_classes = NUM_CLASSES[data_set]
    if recipe["task"] == "classification":  # weakly supervised: background is not a class
        num_classes -= 1
    if recipe["task"] == "instance_segmentation":  # object classes (the shapes list has background)
        num_classes -= 1
    builder, kwargs = builder_kwargs(
        recipe["model"]["builder"],
        recipe["model"]["kwargs"],
        num_classes,
        recipe["data"]["channels"],
    )
    assert kwargs["num_classes"] == num_classes
    if recipe["task"] == "detection":
        assert recipe["model"]["builder"] in ("fast_rcnn", "rcnn", "faster_rcnn")
        # Faster R-CNN proposes its own regions: its shards need none.
        needs_proposals = recipe["model"]["builder"] in ("fast_rcnn", "rcnn")
        assert (recipe["data"]["max_proposals"] == 0) == (not needs_proposals)


def test_shapes_demo_builds_and_runs():
    recipe = load_recipe(str(REPO / "apps" / "shapes_demo.toml"))
    model, _ = build_model(recipe["model"]["builder"], recipe["model"]["kwargs"], 4, 3)
    crop = recipe["data"]["crop_size"]
    out = model.predict(np.zeros((1, *crop, 3), np.float32), verbose=0)
    assert out.shape == (1, *crop, 4)


def test_unet_isbi_geometry_matches_the_paper():
    """The paper's tile: 572 x 572 input, 388 x 388 output (checked on a thin copy)."""
    recipe = load_recipe(str(REPO / "apps" / "unet_isbi.toml"), ["model.kwargs.filters=2"])
    assert recipe["data"]["crop_size"] == [572, 572] and recipe["data"]["channels"] == 1
    model, _ = build_model(recipe["model"]["builder"], recipe["model"]["kwargs"], 2, 1)
    shape = model.compute_output_spec(keras.KerasTensor((1, 572, 572, 1))).shape
    assert tuple(shape[1:]) == (388, 388, 2)
