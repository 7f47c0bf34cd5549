"""Training recipes: TOML files, `--set key=value` overrides, parsing into typed configs.

A recipe has the tables `[model]` (`builder`, `num_classes` and `[model.kwargs]`), `[data]`,
`[training]`, `[optimizer]`, `[schedule]` and `[loss]`, plus top-level `task` and `seed`. It
is parsed once into a `keras_dense.tasks.recipe_config.Recipe`: each table is a dataclass
declaring its keys and defaults (`keras_dense.tasks.configs`), and `[data]` is the recipe's
task's own (`Task.data_config`). A misspelt key is an error naming it, a value of the wrong
type names its key path, and a key of another task's `[data]` names the tasks it applies to.
`[model.kwargs]` is free-form: it is checked against the builder's signature when the model
is built; `[optimizer]` also takes the chosen class's own arguments.

Overrides use dotted keys and TOML values: `--set training.epochs=3`,
`--set optimizer.name="adamw"` (a value that is not valid TOML is taken as a string, so
`--set data.train=tfrecords/x-*.tfrecord` works without quotes).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence

from keras_dense.losses import LOSS_NAMES
from keras_dense.tasks.configs import (
    CLASS_WEIGHT_RULES,
    NORMALIZATIONS,
    ON_ERROR,
    SCHEDULES,
    OptimizerConfig,
)
from keras_dense.tasks.recipe_config import Recipe, default_table, parse_recipe_table
from keras_dense.tasks.segmentation_config import SEGMENTATION_METRICS
from keras_dense.training.backbone_normalization import check_backbone_normalization
from keras_dense.training.optimizers import resolve_optimizer
from keras_dense.utils.errors import RecipeError
from keras_dense.utils.typed_tables import parse_table, table_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = [
    "CLASS_WEIGHT_RULES",
    "DEFAULTS",
    "LOSSES",
    "METRICS",
    "NORMALIZATIONS",
    "ON_ERROR",
    "SCHEDULES",
    "Recipe",
    "RecipeError",
    "UNTYPED_DEFAULTS",
    "apply_overrides",
    "load_config",
    "load_recipe",
    "parse_override",
    "parse_recipe",
    "read_recipe_file",
    "validate",
]

LOSSES = LOSS_NAMES  # see keras_dense.losses.build_loss
METRICS = SEGMENTATION_METRICS  # segmentation's; each task declares its own (`Task.metrics`)

# The resolved table of a segmentation recipe that sets nothing (the default task).
DEFAULTS: dict = default_table("segmentation")

# What recipes saved before the configs were typed held (`recipe.json` of older runs): one
# `[data]` table with every task's keys, and segmentation's metrics for every task. Resuming
# such a run takes a key at these values to mean what this version's defaults mean.
UNTYPED_DEFAULTS: dict = {
    "data.crop_size": [512, 512],
    "data.scale_range": [0.5, 2.0],
    "data.photometric": True,
    "data.augment_on": "host",
    "data.min_size": 600,
    "data.max_size": 1000,
    "data.max_boxes": 100,
    "data.max_proposals": 2000,
    "data.allow_missing_proposals": False,
    "training.metrics": ["mean_iou", "pixel_accuracy"],
}


def parse_override(assignment: str) -> tuple[list[str], object]:
    """Parses `key.sub=value` into the key path and its TOML-typed value.

    Args:
        assignment: `dotted.key=value`; the value is read as a TOML value (`3`, `0.1`,
            `true`, `"text"`, `[1, 2]`), or taken as a plain string when it is not TOML.

    Returns:
        `(path, value)`.

    Raises:
        RecipeError: No `=` or an empty key.
    """
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {assignment!r}: expected key=value with a dotted key")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(recipe: dict, overrides: Sequence[str]) -> dict:
    """Returns a copy of `recipe` with every `--set key=value` applied in order."""
    recipe = copy.deepcopy(recipe)
    for assignment in overrides:
        path, value = parse_override(assignment)
        table = recipe
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise RecipeError(f"--set {assignment!r}: {part!r} is not a table")
        table[path[-1]] = value
    return recipe


def _resolved_optimizer(recipe: Mapping) -> dict:
    """The recipe's `[optimizer]`: shared keys typed and checked, the class's own resolved."""
    given = recipe.get("optimizer", {})
    if not isinstance(given, Mapping):
        return given  # `parse_recipe_table` names the key
    shared = {f.name for f in dataclasses.fields(OptimizerConfig)}
    known = parse_table(
        OptimizerConfig, {k: v for k, v in given.items() if k in shared}, "optimizer."
    )
    known.check()
    return resolve_optimizer(dict(given), table_of(known), table_of(OptimizerConfig()))


def parse_recipe(recipe: Mapping) -> Recipe:
    """Parses and checks a recipe table (after overrides) into its typed configs.

    Args:
        recipe: The recipe as plain TOML values (a file's, or a stored `Recipe.to_dict`).

    Returns:
        The `Recipe`: every key present, `data.crop_size` as `(h, w)`.

    Raises:
        RecipeError: An unknown key, a wrong type, a key of another task's `[data]` or a
            value out of range (the key is named).
    """
    return parse_recipe_table(recipe, _resolved_optimizer(recipe))


def validate(recipe: Mapping) -> dict:
    """`parse_recipe` as a plain table: the resolved recipe `recipe.json` holds.

    Raises:
        RecipeError: See `parse_recipe`.
    """
    return parse_recipe(recipe).to_dict()


def read_recipe_file(path: str) -> dict:
    """Parses a TOML recipe file, naming it on error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe {path}: no such file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"recipe {path}: invalid TOML ({err})") from None


def load_config(path: str, overrides: Sequence[str] = ()) -> Recipe:
    """Reads, overrides and parses a recipe file into its typed configs.

    Args:
        path: The TOML file.
        overrides: `key=value` strings (see `parse_override`), applied in order.

    Returns:
        The `Recipe`.

    Raises:
        FileNotFoundError: The file does not exist.
        RecipeError: Invalid TOML, a bad override, an invalid key or value, or a
            `data.normalization` unlike the pretrained backbone's (the file and the key are
            named).
    """
    try:
        recipe = parse_recipe(apply_overrides(read_recipe_file(path), overrides))
        check_backbone_normalization(recipe)
        return recipe
    except RecipeError as err:
        if str(err).startswith(f"recipe {path}"):
            raise
        raise RecipeError(f"recipe {path}: {err}") from None


def load_recipe(path: str, overrides: Sequence[str] = ()) -> dict:
    """`load_config` as a plain table (see `validate`)."""
    return load_config(path, overrides).to_dict()
