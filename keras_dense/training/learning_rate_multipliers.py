"""Per-variable learning-rate multipliers (Caffe's `lr_mult`): a recipe's optimizer key.

DeepLab and FCN fine-tune a pretrained trunk with their freshly initialised head at 10x the
base rate. A recipe says so with

    [optimizer]
    name = "sgd"
    learning_rate = 0.001
    learning_rate_multipliers = { "fc6/*" = 10, "fc7/*" = 10, "fc8/*" = 10 }

or `--set 'optimizer.learning_rate_multipliers={"fc*" = 10}'`.

Semantics:

- Keys are `fnmatch` patterns (case-sensitive, `fnmatch.fnmatchcase`; `*` also matches `/`)
  matched against the `path` of each of the model's trainable variables. A variable's path is
  the name scope it was created in: `"<layer>/<weight>"` for a layer of a functional model
  (`"fc6/kernel"`, `"fc6/bias"`, DeepLab v2's `"fc8_1/kernel"`, a BatchNormalization's
  `"bn/gamma"`), also for the layers of a functional sub-model built on its own
  `keras.Input` (a trunk `keras.Model(..., name="trunk")`: `"conv1/kernel"`, without
  `trunk/`), but `"<outer>/<inner>/<weight>"` for a layer built inside another: the layers of
  a `keras.Sequential` (`"seq/dense/kernel"`) or a custom layer's sub-layers
  (`"block/inner/kernel"`). Print `[v.path for v in model.trainable_variables]` when unsure;
  the error of a pattern that matches nothing lists some.
- Values are numbers > 0. Every matched variable is updated with the optimizer's learning
  rate at that step (the `[schedule]`'s current value) times its multiplier; unmatched
  variables keep multiplier 1. Several patterns may match one variable when they give it the
  same multiplier.
- The rate is what is scaled, not the gradient: the multiplied rate is what the optimizer's
  `update_step(gradient, variable, learning_rate)` receives, for any optimizer class (SGD,
  Adam, AdamW, RMSprop, Lion, ...), so an Adam step is 10x longer, which a 10x gradient
  would not make it. The class's own rule then uses that rate as it would its own (Adafactor
  with `relative_step` caps it at `1 / sqrt(step)`, Muon's Adam variables take
  `adam_lr_ratio` of it, FTRL uses it in its accumulator formula).
- Weight decay is not scaled: Keras' decoupled weight decay (`w -= lr * weight_decay * w`,
  before each update) uses the optimizer's base rate for every variable. A multiplier changes
  how fast a variable follows its gradient, never how strongly it is pulled to 0. (Caffe's
  decay is an L2 term added to the gradient, so there a `lr_mult` layer also decays that
  much faster; with the papers' 5e-4 on a few head layers the difference is small.)
- Gradient clipping (`clipnorm`, `clipvalue`, `global_clipnorm`), gradient accumulation
  (`gradient_accumulation_steps`: the accumulated step uses the multiplied rate), EMA and
  mixed precision (`keras.optimizers.LossScaleOptimizer`: the multipliers go on its
  `inner_optimizer`) work as without multipliers; so do `tf.distribute` strategies (each
  replica's update of a variable resolves it to the same multiplier).

Checks: a value that is not a number > 0 (or an empty pattern) is refused when the recipe is
validated (`keras_dense.tasks.configs.check_learning_rate_multipliers`); a pattern that
matches no trainable variable, and a variable that two patterns give different multipliers,
once the model exists, before the first step (`install_learning_rate_multipliers`). Each
error is a `RecipeError` naming `optimizer.learning_rate_multipliers` and the pattern.

Implementation: an instance attribute `update_step` on the optimizer (as
`keras_dense.training.batch_stage` installs `train_step`) wraps the class's own, so the
optimizer's saved config stays the plain Keras one (`best.keras` loads with plain Keras,
without the multipliers). The wrapper finds the multiplier of a variable when the train step
is traced: Keras' private `_get_variable_index(variable)` gives its index in the optimizer's
`_trainable_variables` (the model's trainable variables it was built with), whose `path` the
patterns are matched against. Keras' TF optimizer passes `update_step` the `tf.Variable` (a
replica's component under a strategy), whose own name is no path; `_get_variable_index`
maps it back, as every Keras optimizer's `update_step` does for its slots. A Keras release
without those members is refused by name here (`KerasInternalsError`), and the tests compare
updates with a NumPy reference.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Mapping, Sequence

import keras

from keras_dense.tasks.configs import check_learning_rate_multipliers
from keras_dense.utils.errors import RecipeError

KEY = "optimizer.learning_rate_multipliers"
# The attribute of an installed wrapper holding the update step it wraps.
_WRAPPED = "_keras_dense_wrapped_update_step"
# How many variable paths an error lists as a hint.
_HINT_PATHS = 6


class KerasInternalsError(RuntimeError):
    """The installed Keras lacks the optimizer internals the multipliers rely on."""


def optimizer_to_scale(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer whose `update_step` applies the rates: a loss-scale wrapper's inner one."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def multiplier_of(path: str, multipliers: Mapping[str, float]) -> float:
    """The multiplier of the variable at `path`: its patterns' (all equal), else 1.

    Args:
        path: A variable's `path`, e.g. `"fc8/kernel"`.
        multipliers: Pattern -> multiplier (checked values).

    Raises:
        RecipeError: Two patterns match `path` with different multipliers (both are named).
    """
    matched = [(p, m) for p, m in multipliers.items() if fnmatch.fnmatchcase(path, p)]
    for pattern, value in matched[1:]:
        if float(value) != float(matched[0][1]):
            first, first_value = matched[0]
            raise RecipeError(
                f"recipe key {KEY!r}: the variable {path!r} matches the pattern {first!r} "
                f"(x{first_value:g}) and the pattern {pattern!r} (x{value:g}); give each variable "
                "one multiplier (narrow a pattern, or give both the same)"
            )
    return float(matched[0][1]) if matched else 1.0


def resolve_multipliers(
    paths: Sequence[str], multipliers: Mapping[str, float]
) -> dict[str, dict[str, float | int]]:
    """Checks the patterns against a model's trainable variable paths; counts their matches.

    Args:
        paths: The `path` of each trainable variable of the model.
        multipliers: Pattern -> multiplier (`optimizer.learning_rate_multipliers`).

    Returns:
        For each pattern, `{"multiplier": m, "variables": n}`: the n variables it matches.

    Raises:
        RecipeError: A value out of range, a pattern that matches no path (some paths are
            listed), or a path two patterns give different multipliers.
    """
    check_learning_rate_multipliers(multipliers)
    for path in paths:
        multiplier_of(path, multipliers)  # refuses conflicting patterns
    record = {}
    for pattern, value in multipliers.items():
        count = sum(fnmatch.fnmatchcase(path, pattern) for path in paths)
        if not count:
            close = difflib.get_close_matches(pattern, paths, n=_HINT_PATHS, cutoff=0.3)
            shown = list(dict.fromkeys([*close, *paths]))[:_HINT_PATHS]
            hint = ", ".join(repr(p) for p in shown)
            raise RecipeError(
                f"recipe key {KEY!r}: the pattern {pattern!r} matches no trainable variable "
                f"of the model; patterns are fnmatch globs on variable paths such as {hint}"
                f" ({len(paths)} trainable variables)"
            )
        record[pattern] = {"multiplier": float(value), "variables": count}
    return record


def _check_keras_internals(optimizer: keras.optimizers.Optimizer) -> None:
    """Refuses a Keras whose optimizers lack what the wrapper relies on (named)."""
    step = getattr(optimizer, "update_step", None)
    try:
        parameters = list(inspect.signature(step).parameters) if callable(step) else []
    except (TypeError, ValueError):
        parameters = []
    missing = [
        what
        for what, ok in (
            (
                "update_step(gradient, variable, learning_rate)",
                len(parameters) == 3 and parameters[-1] == "learning_rate",
            ),
            (
                "_get_variable_index(variable)",
                callable(getattr(optimizer, "_get_variable_index", None)),
            ),
        )
        if not ok
    ]
    if missing:
        raise KerasInternalsError(
            f"{KEY}: Keras {keras.__version__}'s {type(optimizer).__name__} has no "
            f"{' and no '.join(missing)}, which the learning-rate multipliers rely on "
            "(keras_dense.training.learning_rate_multipliers); leave the key out, or use the "
            "Keras version this package was tested with"
        )


def install_learning_rate_multipliers(
    optimizer: keras.optimizers.Optimizer,
    model: keras.Model,
    multipliers: Mapping[str, float],
) -> dict[str, dict[str, float | int]]:
    """Makes `optimizer` update `model`'s matched variables at their multiplied rates.

    Call it before the first step (the wrapper resolves each variable when the train step is
    traced); the optimizer may already be built (a restored run). An empty table leaves the
    optimizer as it is (an installed wrapper is removed). Installing again replaces the
    previous multipliers.

    Args:
        optimizer: The model's optimizer, or a `LossScaleOptimizer` wrapping it.
        model: The model the optimizer trains (its trainable variables are matched).
        multipliers: Pattern -> multiplier (`optimizer.learning_rate_multipliers`).

    Returns:
        What was applied, for the run's record: for each pattern `{"multiplier": m,
        "variables": n}` (see `resolve_multipliers`); empty when `multipliers` is.

    Raises:
        RecipeError: A bad value, a pattern that matches no trainable variable, or a variable
            that two patterns give different multipliers.
        KerasInternalsError: This Keras's optimizers lack `update_step(gradient, variable,
            learning_rate)` or `_get_variable_index`.
    """
    inner = optimizer_to_scale(optimizer)
    if not multipliers:
        if hasattr(vars(inner).get("update_step"), _WRAPPED):  # ours: back to the class's
            object.__delattr__(inner, "update_step")
            model.train_function = None
        return {}
    record = resolve_multipliers([v.path for v in model.trainable_variables], multipliers)
    _check_keras_internals(inner)
    step = getattr(inner.update_step, _WRAPPED, inner.update_step)  # the class's, bound
    table = {str(p): float(m) for p, m in multipliers.items()}
    by_path: dict[str, float] = {}

    def update_step(gradient, variable, learning_rate):
        path = _path_of(inner, variable)
        if path not in by_path:
            by_path[path] = multiplier_of(path, table)
        factor = by_path[path]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return step(gradient, variable, learning_rate)

    setattr(update_step, _WRAPPED, step)
    # An instance attribute (`object.__setattr__`: Keras' own `__setattr__` would track it):
    # `_backend_update_step` calls `self.update_step`; the class and its config stay Keras'.
    object.__setattr__(inner, "update_step", update_step)
    model.train_function = None  # traced anew with the wrapper on the next `fit`
    return record


def _path_of(optimizer: keras.optimizers.Optimizer, variable) -> str:
    """The `path` of the model variable `update_step` got (or its `tf.Variable`)."""
    try:
        index = optimizer._get_variable_index(variable)
        return optimizer._trainable_variables[index].path
    except (AttributeError, IndexError, KeyError) as err:
        raise KerasInternalsError(
            f"{KEY}: Keras {keras.__version__}'s {type(optimizer).__name__} did not map the "
            f"variable {getattr(variable, 'name', variable)!r} of its update_step to one of "
            f"the variables it was built with ({type(err).__name__}: {err}); the learning-rate "
            "multipliers rely on `_get_variable_index` and `_trainable_variables`"
        ) from err


def describe_multipliers(record: Mapping[str, Mapping]) -> str:
    """One line of what `install_learning_rate_multipliers` applied, e.g. for the log."""
    parts = ", ".join(
        f"{pattern} x{entry['multiplier']:g} ({entry['variables']} variable"
        f"{'s' if entry['variables'] != 1 else ''})"
        for pattern, entry in record.items()
    )
    return f"learning-rate multipliers: {parts}; every other variable x1"
