"""Optimizers of a recipe: any Keras optimizer by name, its arguments checked, an optional
loss scale.

A recipe's `[optimizer]` table names the class (`name`: "sgd", "adamw", "adam", "rmsprop",
"lion", "adagrad", "nadam", ...: a `keras.optimizers` class, case-insensitive) and gives its
constructor arguments as keys. The keys every optimizer has are `learning_rate` (the initial
rate; `[schedule]` turns it into a schedule), `weight_decay` and `clipnorm` (0: off). Any other
key must be an argument of the class; a key the class does not take is an error naming it and
the class's arguments.

Checks, all when the recipe is validated (never at the first step): each value has the type of
its argument (a number, an integer for step counts, a boolean), the common hyper-parameters are
in range (`RANGES`, `INTEGER_RANGES`: `learning_rate > 0`, betas, `rho`, `momentum` in
[0, 1), `epsilon > 0`, `weight_decay >= 0`, `gradient_accumulation_steps` an integer >= 1,
...; the message names the key, the value and the range), and the optimizer is then built
once, so that what only the class knows (Lion's `beta_1 > 0`, one of `clipnorm` and
`global_clipnorm`) is named as a recipe key too.

Defaults. `sgd` and `adamw` keep the recipe's defaults (`DEFAULTS["optimizer"]`: learning rate
0.01; SGD with momentum 0.9; AdamW with beta_1 0.9, beta_2 0.999, epsilon 1e-7), exactly as
before; every other optimizer takes Keras' defaults for every argument the recipe does not
write, the learning rate included (Adam, RMSprop, Lion: 0.001): a class's default rate is
tuned to its update rule (Lion's sign updates have unit size per weight; its authors advise a
rate 3-10x below AdamW's), so the recipe's SGD rate would be 10x too large for most of them.
The resolved table always holds the rate used, which `[schedule]` starts from and resume
compares. Weight decay is explicit: it is the recipe's `weight_decay` (0 unless written), never
a class's own default (Keras' AdamW would decay by 0.004, Muon by 0.1); an optimizer whose
constructor takes no `weight_decay` refuses a non-zero one.

Weight decay is Keras' decoupled decay (`w -= lr * weight_decay * w` each step), which for SGD
equals the papers' L2 term `weight_decay / 2 * |w|^2` up to the momentum's averaging.

`learning_rate_multipliers` (`{"fc8/*" = 10}`: per-variable factors of the rate, Caffe's
`lr_mult`) applies to every optimizer but is no constructor argument: it is checked with the
recipe (`keras_dense.tasks.configs.check_learning_rate_multipliers`), kept in the resolved
table when written (SGD/AdamW tables hold it with their other defaults, `{}`), never passed
to the class, and installed on the built optimizer once the model exists
(`keras_dense.training.learning_rate_multipliers`).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable

import keras
import tensorflow as tf

from keras_dense.training.schedules import build_schedule
from keras_dense.utils.errors import RecipeError

# Keys of every `[optimizer]` table; the others are arguments of the chosen class.
COMMON_KEYS = ("name", "learning_rate", "weight_decay", "clipnorm")
# Keys of every `[optimizer]` table that no constructor takes (in the resolved table when
# written); `build_optimizer` never passes them to the class.
NON_CONSTRUCTOR_KEYS = ("learning_rate_multipliers",)
# Optimizers whose resolved table keeps every key of the recipe's defaults (as before).
RECIPE_DEFAULT_OPTIMIZERS = ("sgd", "adamw")
# Constructor parameters that are not recipe keys.
_NOT_KEYS = ("self", "name")

_UNIT = (lambda v: 0 <= v < 1, "in [0, 1)")
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
# The range of each common numeric argument of Keras optimizers (checked for every class that
# takes it): `(test, expected)`.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "learning_rate": _POSITIVE,
    "beta_1": _UNIT,
    "beta_2": _UNIT,
    "adam_beta_1": _UNIT,
    "adam_beta_2": _UNIT,
    "rho": _UNIT,
    "momentum": _UNIT,
    "ema_momentum": _UNIT,
    "epsilon": _POSITIVE,
    "epsilon_1": _POSITIVE,
    "epsilon_2": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "adam_weight_decay": _NON_NEGATIVE,
    "clipnorm": (lambda v: v >= 0, ">= 0 (0: off)"),
    "clipvalue": _POSITIVE,
    "global_clipnorm": _POSITIVE,
    "clip_threshold": _POSITIVE,
    "loss_scale_factor": _POSITIVE,
    "initial_accumulator_value": _NON_NEGATIVE,
    "l1_regularization_strength": _NON_NEGATIVE,
    "l2_regularization_strength": _NON_NEGATIVE,
    "l2_shrinkage_regularization_strength": _NON_NEGATIVE,
    "learning_rate_power": (lambda v: v <= 0, "<= 0"),
}
# Integer arguments: the smallest value (and what it means).
INTEGER_RANGES: dict[str, tuple[int, str]] = {
    "gradient_accumulation_steps": (1, " (1: every step)"),
    "ema_overwrite_frequency": (1, ""),
    "ns_steps": (1, ""),
    "warmup_steps": (0, ""),
}


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def optimizer_classes() -> dict[str, type]:
    """The `keras.optimizers` classes by lower-case class name (`"adam"`, `"rmsprop"`, ...).

    The base `Optimizer`, the `LossScaleOptimizer` wrapper (`training.mixed_precision`
    applies it) and wrappers of other optimizers (no `learning_rate` argument, e.g.
    `MultiOptimizer`) are left out.
    """
    table = {}
    for attribute in dir(keras.optimizers):
        value = getattr(keras.optimizers, attribute)
        if (
            isinstance(value, type)
            and issubclass(value, keras.optimizers.Optimizer)
            and value not in (keras.optimizers.Optimizer, keras.optimizers.LossScaleOptimizer)
            and "learning_rate" in optimizer_arguments(value)
        ):
            table[value.__name__.lower()] = value
    return table


def optimizer_class(name: str) -> type:
    """The Keras optimizer class a recipe's `optimizer.name` names (case and `_` ignored).

    Raises:
        RecipeError: No such optimizer (the message lists them and the closest name).
    """
    classes = optimizer_classes()
    by_key = {_key(n): cls for n, cls in classes.items()}
    found = by_key.get(_key(str(name)))
    if found is None:
        close = difflib.get_close_matches(str(name).lower(), list(classes), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(
            f"recipe key 'optimizer.name': {name!r} is not a Keras optimizer{hint}; expected "
            f"one of {sorted(classes)}"
        )
    return found


def optimizer_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The named constructor arguments of an optimizer class (without `self` and `name`)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {
        key: p
        for key, p in parameters.items()
        if key not in _NOT_KEYS
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_error(key: str, value, default) -> str | None:
    """Why `value` does not fit the argument `key` whose default is `default`, or None.

    The type follows `INTEGER_RANGES`, `RANGES`, else the default's type (arguments whose
    default is None and that no table lists are left to the class's constructor); then the
    range of `INTEGER_RANGES` / `RANGES`.
    """
    if key in INTEGER_RANGES:
        low, meaning = INTEGER_RANGES[key]
        expected = f"an integer >= {low}{meaning}"
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected {expected}, got {value!r}"
        return None if value >= low else f"{value!r} is out of range: expected {expected}"
    if key in RANGES:
        test, expected = RANGES[key]
        if not _is_number(value):
            return f"expected a number {expected}, got {value!r}"
        return None if test(value) else f"{value!r} is out of range: expected a number {expected}"
    if isinstance(default, bool) and not isinstance(value, bool):
        return f"expected a boolean (the default is {default!r}), got {value!r}"
    if _is_number(default) and not isinstance(default, bool) and not _is_number(value):
        return f"expected a number (the default is {default!r}), got {value!r}"
    return None


def _refuse(key: str, cls: type, arguments: dict, why: str) -> RecipeError:
    close = difflib.get_close_matches(key, list(arguments), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RecipeError(
        f"recipe key 'optimizer.{key}': {why}{hint}; {cls.__name__} takes {sorted(arguments)}"
    )


def resolve_optimizer(given: dict, merged: dict, defaults: dict) -> dict:
    """Checks a recipe's `[optimizer]` table against its class; returns the resolved table.

    Args:
        given: The table as written (after overrides), any keys.
        merged: The recipe defaults' keys, with the written values over them.
        defaults: The recipe's defaults (`keras_dense.training.recipe.DEFAULTS["optimizer"]`).

    Returns:
        The resolved table: `name` (the class's lower-case name), the common keys, and
        for `sgd` / `adamw` every default key (as before), for any other optimizer only the
        arguments and `NON_CONSTRUCTOR_KEYS` written.

    Raises:
        RecipeError: An unknown optimizer, an argument the class does not take (named, with
            the ones it takes), a value of the wrong type or out of range (the key, value and
            range are named), weight decay / clipping for a class without them, or arguments
            the class's constructor refuses (the keys it names).
    """
    cls = optimizer_class(merged["name"])
    name = cls.__name__.lower()
    arguments = optimizer_arguments(cls)
    resolved = {key: merged[key] for key in COMMON_KEYS}
    resolved["name"] = name
    keep_defaults = name in RECIPE_DEFAULT_OPTIMIZERS
    if keep_defaults:
        resolved = {**merged, "name": name}
    elif "learning_rate" not in given and _is_number(arguments["learning_rate"].default):
        resolved["learning_rate"] = arguments["learning_rate"].default  # Keras' own
    for key, value in given.items():
        if key in COMMON_KEYS:
            continue
        if key in NON_CONSTRUCTOR_KEYS:  # typed and checked with `OptimizerConfig`
            resolved[key] = value
            continue
        if key not in arguments:
            # The recipe's SGD/AdamW defaults ride along in their resolved tables unused.
            if keep_defaults and key in defaults and value == defaults[key]:
                continue
            raise _refuse(key, cls, arguments, f"{cls.__name__} takes no argument {key!r}")
        resolved[key] = value
    for key, value in resolved.items():
        if key in arguments or key in COMMON_KEYS[1:]:
            why = _value_error(key, value, arguments[key].default if key in arguments else None)
            if why is not None:
                raise RecipeError(f"recipe key 'optimizer.{key}': {why}")
    for key in ("weight_decay", "clipnorm"):
        if resolved[key] and key not in arguments:
            raise _refuse(key, cls, arguments, f"{cls.__name__} has no {key}; set it to 0")
    # Built once now (in a graph of its own: no eager state before a multi-worker strategy),
    # so that what only the class checks is named before training starts.
    with tf.Graph().as_default():
        _construct(cls, resolved["learning_rate"], _constructor_arguments(resolved, arguments))
    return resolved


def _constructor_arguments(optimizer: dict, arguments: dict) -> dict:
    """The keyword arguments of the class for a resolved table, its learning rate left out."""
    kwargs = {}
    if "weight_decay" in arguments:
        # 0 means none: None where that is the class's default, else an explicit 0.0 (AdamW).
        decay = optimizer.get("weight_decay") or 0.0
        none = arguments["weight_decay"].default is None
        kwargs["weight_decay"] = None if not decay and none else float(decay)
    if "clipnorm" in arguments:
        kwargs["clipnorm"] = optimizer.get("clipnorm") or None
    for key, value in optimizer.items():
        if key not in COMMON_KEYS and key not in NON_CONSTRUCTOR_KEYS and key in arguments:
            kwargs[key] = value
    if kwargs.get("gradient_accumulation_steps") == 1:
        kwargs["gradient_accumulation_steps"] = None  # every step: Keras' None (it refuses 1)
    return kwargs


def _construct(cls: type, learning_rate, kwargs: dict) -> keras.optimizers.Optimizer:
    """`cls(learning_rate=..., **kwargs)`; a refusal names the recipe keys its message names.

    Raises:
        RecipeError: The constructor raised TypeError or ValueError.
    """
    try:
        return cls(learning_rate=learning_rate, **kwargs)
    except (TypeError, ValueError) as err:
        shown = {k: v for k, v in kwargs.items() if v is not None}
        named = [
            key
            for key in ("learning_rate", *kwargs)
            if re.search(rf"\b{re.escape(key)}\b", str(err))
        ] or list(shown)
        keys = ", ".join(f"'optimizer.{key}'" for key in named) or "'optimizer'"
        raise RecipeError(
            f"recipe key{'s' if len(named) > 1 else ''} {keys}: {cls.__name__} refused the "
            f"arguments {shown} ({err})"
        ) from None


def build_optimizer(
    optimizer: dict, schedule: dict, total_steps: int, mixed_precision: bool = False
) -> keras.optimizers.Optimizer:
    """Builds the optimizer of a recipe's `[optimizer]` and `[schedule]` tables.

    Args:
        optimizer: The resolved `[optimizer]` table (see `resolve_optimizer`): `name`,
            `learning_rate`, `weight_decay`, `clipnorm` (0: none) and the class's other
            arguments; keys the class does not take (the SGD/AdamW defaults of the recipe)
            are not passed, nor `learning_rate_multipliers`, which needs the model:
            `keras_dense.training.learning_rate_multipliers.install_learning_rate_multipliers`
            applies it to the optimizer returned.
        schedule: The `[schedule]` table (see `build_schedule`).
        total_steps: Optimizer steps of the whole run.
        mixed_precision: Wrap in a `keras.optimizers.LossScaleOptimizer` (dynamic loss
            scaling for float16 gradients).

    Returns:
        The optimizer.

    Raises:
        RecipeError: An unknown optimizer name, or the class refuses its arguments.
    """
    cls = optimizer_class(optimizer["name"])
    arguments = optimizer_arguments(cls)
    if optimizer.get("weight_decay") and "weight_decay" not in arguments:
        raise RecipeError(f"recipe key 'optimizer.weight_decay': {cls.__name__} has none")
    learning_rate = build_schedule(schedule, optimizer["learning_rate"], total_steps)
    opt = _construct(cls, learning_rate, _constructor_arguments(optimizer, arguments))
    if mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
