"""Optimizers of a recipe: any Keras optimizer by name, its arguments checked, an optional
loss scale.

A recipe's `[optimizer]` table names the class (`name`: "sgd", "adamw", "adam", "rmsprop",
"lion", "adagrad", "nadam", ...: a `keras.optimizers` class, case-insensitive) and gives its
constructor arguments as keys. The keys every optimizer has are `learning_rate` (the initial
rate; `[schedule]` turns it into a schedule), `weight_decay` and `clipnorm` (0: off). Any other
key must be an argument of the class, of the type of its default (a number, a boolean); a key
the class does not take is an error naming it and the class's arguments.

Defaults. `sgd` and `adamw` keep the recipe's defaults (`DEFAULTS["optimizer"]`: SGD with
momentum 0.9; AdamW with beta_1 0.9, beta_2 0.999, epsilon 1e-7), exactly as before; every
other optimizer takes Keras' defaults for the arguments the recipe does not write. Weight decay
is explicit: it is the recipe's `weight_decay` (0 unless written), never a class's own default
(Keras' AdamW would decay by 0.004, Muon by 0.1); an optimizer whose constructor takes no
`weight_decay` refuses a non-zero one.

Weight decay is Keras' decoupled decay (`w -= lr * weight_decay * w` each step), which for SGD
equals the papers' L2 term `weight_decay / 2 * |w|^2` up to the momentum's averaging.
"""

from __future__ import annotations

import difflib
import inspect

import keras

from keras_dense.training.schedules import build_schedule
from keras_dense.utils.errors import RecipeError

# Keys of every `[optimizer]` table; the others are arguments of the chosen class.
COMMON_KEYS = ("name", "learning_rate", "weight_decay", "clipnorm")
# Optimizers whose resolved table keeps every key of the recipe's defaults (as before).
RECIPE_DEFAULT_OPTIMIZERS = ("sgd", "adamw")
# Constructor parameters that are not recipe keys.
_NOT_KEYS = ("self", "name")


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


def _type_error(key: str, value, default) -> str | None:
    """Why `value` does not fit an argument whose default is `default`, or None."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "a boolean"
    if isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "a number"
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
        arguments written.

    Raises:
        RecipeError: An unknown optimizer, an argument the class does not take (named, with
            the ones it takes), a value of the wrong type, or weight decay / clipping for a
            class without them.
    """
    cls = optimizer_class(merged["name"])
    name = cls.__name__.lower()
    arguments = optimizer_arguments(cls)
    resolved = {key: merged[key] for key in COMMON_KEYS}
    resolved["name"] = name
    keep_defaults = name in RECIPE_DEFAULT_OPTIMIZERS
    if keep_defaults:
        resolved = {**merged, "name": name}
    for key, value in given.items():
        if key in COMMON_KEYS:
            continue
        if key not in arguments:
            # The recipe's SGD/AdamW defaults ride along in their resolved tables unused.
            if keep_defaults and key in defaults and value == defaults[key]:
                continue
            raise _refuse(key, cls, arguments, f"{cls.__name__} takes no argument {key!r}")
        expected = _type_error(key, value, arguments[key].default)
        if expected is not None:
            raise RecipeError(
                f"recipe key 'optimizer.{key}': expected {expected} ({cls.__name__}'s "
                f"default is {arguments[key].default!r}), got {value!r}"
            )
        resolved[key] = value
    for key in ("weight_decay", "clipnorm"):
        if resolved[key] and key not in arguments:
            raise _refuse(key, cls, arguments, f"{cls.__name__} has no {key}; set it to 0")
    return resolved


def build_optimizer(
    optimizer: dict, schedule: dict, total_steps: int, mixed_precision: bool = False
) -> keras.optimizers.Optimizer:
    """Builds the optimizer of a recipe's `[optimizer]` and `[schedule]` tables.

    Args:
        optimizer: The resolved `[optimizer]` table (see `resolve_optimizer`): `name`,
            `learning_rate`, `weight_decay`, `clipnorm` (0: none) and the class's other
            arguments; keys the class does not take (the SGD/AdamW defaults of the recipe)
            are not passed.
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
    kwargs = {"learning_rate": build_schedule(schedule, optimizer["learning_rate"], total_steps)}
    decay = optimizer.get("weight_decay") or 0.0
    if "weight_decay" in arguments:
        # 0 means none: None where that is the class's default, else an explicit 0.0 (AdamW).
        none = arguments["weight_decay"].default is None
        kwargs["weight_decay"] = None if not decay and none else float(decay)
    elif decay:
        raise RecipeError(f"recipe key 'optimizer.weight_decay': {cls.__name__} has none")
    if "clipnorm" in arguments:
        kwargs["clipnorm"] = optimizer.get("clipnorm") or None
    for key, value in optimizer.items():
        if key not in COMMON_KEYS and key in arguments:
            kwargs[key] = value
    try:
        opt = cls(**kwargs)
    except (TypeError, ValueError) as err:
        shown = {k: v for k, v in kwargs.items() if k != "learning_rate"}
        raise RecipeError(
            f"recipe key 'optimizer': {cls.__name__} refused the arguments {shown} ({err})"
        ) from None
    if mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
