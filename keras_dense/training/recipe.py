"""Training recipes: TOML files, `--set key=value` overrides, defaults and validation.

A recipe has the tables `[model]` (`builder` and `[model.kwargs]`), `[data]`, `[training]`,
`[optimizer]`, `[schedule]` and `[loss]`, plus top-level `task` and `seed`; `DEFAULTS` lists
every key with its default value. Keys are validated against it, so a misspelt key is an
error naming it, not a silently ignored setting. `[model.kwargs]` is free-form: it is checked
against the builder's signature when the model is built.

Overrides use dotted keys and TOML values: `--set training.epochs=3`,
`--set optimizer.name="adamw"` (a value that is not valid TOML is taken as a string, so
`--set data.train=tfrecords/x-*.tfrecord` works without quotes).
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from collections.abc import Sequence

from keras_dense.data.device_augment import AUGMENT_ON
from keras_dense.losses import LOSS_NAMES
from keras_dense.tasks import get_task, task_names
from keras_dense.training.optimizers import resolve_optimizer
from keras_dense.utils.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

# `optimizer.name`: any `keras.optimizers` class (see keras_dense.training.optimizers).
SCHEDULES = ("poly", "cosine", "step", "constant")
LOSSES = LOSS_NAMES  # see keras_dense.losses.build_loss
# `loss.class_weights` may name a rule instead of listing the weights.
CLASS_WEIGHT_RULES = ("median_frequency",)
METRICS = ("mean_iou", "pixel_accuracy")
NORMALIZATIONS = ("caffe", "torch", "tf", "none")
ON_ERROR = ("fail", "skip")

DEFAULTS: dict = {
    "task": "segmentation",
    "seed": 0,
    "model": {"builder": "", "kwargs": {}},
    "data": {
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
        # "host": augment in tf.data; "device": decode only, augment at the train step's start.
        "augment_on": "host",
        "cache": False,
        "shuffle_buffer": 256,
        "min_size": 600,
        "max_size": 1000,
        "max_boxes": 100,
        "max_proposals": 2000,
        # Detection records that fail the check (keras_dense.data.detection_records): "fail"
        # stops naming the first; "skip" leaves them out of training with a count.
        "on_error": "fail",
        # Fast R-CNN / R-CNN on records without proposals trains on ground-truth RoIs only.
        "allow_missing_proposals": False,
    },
    "training": {
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
    },
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.01,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "clipnorm": 0.0,
    },
    "schedule": {
        "name": "constant",
        "power": 0.9,
        "end_learning_rate": 0.0,
        "alpha": 0.0,
        "boundaries": [],
        "factor": 0.1,
    },
    "loss": {"name": "sparse_categorical_crossentropy", "class_weights": []},
}

# Free-form tables (any keys): their contents are checked elsewhere.
_FREE_FORM = ("model.kwargs",)


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "a table"
    )


def _check_type(key: str, value, default) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = (
            isinstance(value, list)
            or (key == "data.crop_size" and isinstance(value, int))
            or (key == "loss.class_weights" and isinstance(value, str))
        )
    else:
        ok = isinstance(value, dict)
    if not ok:
        raise RecipeError(
            f"recipe key {key!r}: expected {_type_name(default)}, got {value!r} "
            f"({_type_name(value)})"
        )


def _merge(defaults: dict, given: dict, prefix: str = "") -> dict:
    """Deep-merges `given` over `defaults`, rejecting unknown keys and wrong types."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise RecipeError(
                f"recipe key {dotted!r} is unknown{hint}; known keys here: {sorted(defaults)}"
            )
        default = defaults[key]
        _check_type(dotted, value, default)
        if isinstance(default, dict) and dotted not in _FREE_FORM:
            out[key] = _merge(default, value, f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


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


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise RecipeError(f"recipe key {key!r}: {message}")


def validate(recipe: dict) -> dict:
    """Merges `recipe` over `DEFAULTS` and checks every value.

    Args:
        recipe: The parsed recipe (after overrides).

    Returns:
        The resolved recipe: every key present, `data.crop_size` as `[h, w]`.

    Raises:
        RecipeError: An unknown key, a wrong type or a value out of range (the key is named).
    """
    # `[optimizer]` also takes the chosen class's own arguments: they are checked against its
    # constructor by `resolve_optimizer`, the keys of DEFAULTS by `_merge` as everywhere else.
    given_optimizer = recipe.get("optimizer", {})
    if isinstance(given_optimizer, dict):
        known = {k: v for k, v in given_optimizer.items() if k in DEFAULTS["optimizer"]}
        recipe = {**recipe, "optimizer": known}
    r = _merge(DEFAULTS, recipe)
    tasks = task_names()
    _require(r["task"] in tasks, "task", f"expected one of {tasks}, got {r['task']!r}")
    _require(bool(r["model"]["builder"]), "model.builder", "missing: name a builder, e.g. 'unet'")
    data, training = r["data"], r["training"]
    _require(bool(data["train"]), "data.train", "missing: a glob pattern of TFRecord shards")
    _require(
        data["normalization"] in NORMALIZATIONS,
        "data.normalization",
        f"expected one of {NORMALIZATIONS}, got {data['normalization']!r}",
    )
    _require(
        data["channels"] in (1, 3), "data.channels", f"expected 1 or 3, got {data['channels']}"
    )
    _require(
        0 <= data["ignore_label"] <= 255, "data.ignore_label", "expected an integer in [0, 255]"
    )
    crop = data["crop_size"]
    crop = [crop, crop] if isinstance(crop, int) else crop
    _require(
        len(crop) == 2 and all(isinstance(c, int) and c > 0 for c in crop),
        "data.crop_size",
        f"expected a positive integer or [height, width], got {data['crop_size']!r}",
    )
    data["crop_size"] = crop
    low_high = data["scale_range"]
    _require(
        len(low_high) == 2 and 0 < low_high[0] <= low_high[1],
        "data.scale_range",
        f"expected [min, max] with 0 < min <= max, got {low_high!r}",
    )
    _require(
        data["augment_on"] in AUGMENT_ON,
        "data.augment_on",
        f"expected one of {AUGMENT_ON}, got {data['augment_on']!r}",
    )
    device_tasks = [name for name in tasks if get_task(name).augments_on_device]
    _require(
        data["augment_on"] == "host" or r["task"] in device_tasks,
        "data.augment_on",
        f"'device' is implemented for the tasks {device_tasks}, not {r['task']!r}",
    )
    _require(all(isinstance(c, str) for c in data["classes"]), "data.classes", "expected strings")
    for key in ("min_size", "max_size", "max_boxes", "shuffle_buffer"):
        _require(data[key] >= 1, f"data.{key}", f"expected >= 1, got {data[key]}")
    _require(
        data["max_proposals"] >= 0,
        "data.max_proposals",
        f"expected >= 0 (0: no proposals read), got {data['max_proposals']}",
    )
    _require(
        data["on_error"] in ON_ERROR,
        "data.on_error",
        f"expected one of {ON_ERROR}, got {data['on_error']!r}",
    )
    _require(training["batch_size"] >= 1, "training.batch_size", "expected >= 1")
    _require(training["epochs"] >= 1, "training.epochs", "expected >= 1")
    for key in ("steps", "steps_per_epoch", "validation_steps", "validation_batch_size"):
        _require(training[key] >= 0, f"training.{key}", "expected >= 0 (0: automatic)")
    _require(training["image_summaries"] >= 0, "training.image_summaries", "expected >= 0")
    unknown = [m for m in training["metrics"] if m not in METRICS]
    _require(not unknown, "training.metrics", f"unknown {unknown}; known: {METRICS}")

    opt = r["optimizer"]
    _require(opt["learning_rate"] > 0, "optimizer.learning_rate", "expected > 0")
    _require(0 <= opt["momentum"] < 1, "optimizer.momentum", "expected in [0, 1)")
    _require(opt["weight_decay"] >= 0, "optimizer.weight_decay", "expected >= 0")
    _require(opt["clipnorm"] >= 0, "optimizer.clipnorm", "expected >= 0 (0: off)")
    r["optimizer"] = resolve_optimizer(given_optimizer, opt, DEFAULTS["optimizer"])

    sched = r["schedule"]
    _require(sched["name"] in SCHEDULES, "schedule.name", f"expected one of {SCHEDULES}")
    _require(sched["power"] > 0, "schedule.power", "expected > 0 (DeepLab: 0.9)")
    _require(0 <= sched["alpha"] <= 1, "schedule.alpha", "expected in [0, 1]")
    bounds = sched["boundaries"]
    _require(
        all(isinstance(b, int) and b > 0 for b in bounds) and bounds == sorted(set(bounds)),
        "schedule.boundaries",
        f"expected increasing positive step numbers, got {bounds!r}",
    )
    _require(
        sched["name"] != "step" or bool(bounds),
        "schedule.boundaries",
        "the step schedule needs at least one boundary (optimizer steps)",
    )
    _require(sched["factor"] > 0, "schedule.factor", "expected > 0")

    loss = r["loss"]
    _require(loss["name"] in LOSSES, "loss.name", f"expected one of {LOSSES}, got {loss['name']!r}")
    weights = loss["class_weights"]
    if isinstance(weights, str):
        _require(
            weights in CLASS_WEIGHT_RULES,
            "loss.class_weights",
            f"expected a list of non-negative numbers (one per class) or one of "
            f"{CLASS_WEIGHT_RULES}, got {weights!r}",
        )
    else:
        _require(
            all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights
            ),
            "loss.class_weights",
            'expected non-negative numbers, one per class, or "median_frequency"',
        )
    return r


def read_recipe_file(path: str) -> dict:
    """Parses a TOML recipe file, naming it on error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe {path}: no such file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"recipe {path}: invalid TOML ({err})") from None


def load_recipe(path: str, overrides: Sequence[str] = ()) -> dict:
    """Reads, overrides and validates a recipe.

    Args:
        path: The TOML file.
        overrides: `key=value` strings (see `parse_override`), applied in order.

    Returns:
        The resolved recipe (see `validate`).

    Raises:
        FileNotFoundError: The file does not exist.
        RecipeError: Invalid TOML, a bad override or an invalid key or value.
    """
    try:
        return validate(apply_overrides(read_recipe_file(path), overrides))
    except RecipeError as err:
        if str(err).startswith(f"recipe {path}"):
            raise
        raise RecipeError(f"recipe {path}: {err}") from None
