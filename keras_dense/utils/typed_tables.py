"""Reading a TOML table into a dataclass: unknown keys and wrong types named by key path.

A config dataclass declares its keys, their types (annotations) and defaults; `parse_table`
fills one from a table, so that a misspelt key is an error naming it (with the closest known
key) and a value of the wrong type an error naming its key and the expected type. Lists
become tuples (dataclass fields are immutable); `table_of` turns a dataclass back into the
plain table a recipe file or `recipe.json` holds.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping

from keras_dense.utils.errors import RecipeError

_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def type_name(value) -> str:
    """`value`'s TOML type in words, e.g. "a string"."""
    if isinstance(value, (list, tuple)):
        return "a list"
    return _NAMES.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


def _is_a(kind, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is typing.Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(k, value) for k in typing.get_args(kind))
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return isinstance(value, (list, tuple)) and all(_is_a(item, v) for v in value)
    return isinstance(value, typing.get_origin(kind) or kind)


def describe(kind) -> str:
    """An annotation in words, e.g. `tuple[int, ...] | int` -> "a list of integers or ..."."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(k) for k in typing.get_args(kind))
    if origin is tuple:
        return f"a list of {describe(typing.get_args(kind)[0]).split(' ', 1)[1]}s"
    return _NAMES.get(origin or kind, getattr(kind, "__name__", str(kind)))


def _converted(kind, value):
    if isinstance(value, list) and typing.get_origin(kind) is not dict:
        return tuple(value)
    return value


def parse_table(cls, table: Mapping, prefix: str, elsewhere: Mapping[str, str] | None = None):
    """Fills the dataclass `cls` from `table`, checking every key and type.

    Args:
        cls: A dataclass whose fields all have defaults.
        table: The recipe's table (plain TOML values).
        prefix: The table's key path with a trailing dot, e.g. `"data."`, for the messages.
        elsewhere: Keys that `cls` lacks but that belong to another config, each with where
            it applies (e.g. `{"max_boxes": "detection recipes, not segmentation"}`).

    Returns:
        The dataclass instance (lists as tuples).

    Raises:
        RecipeError: An unknown key (with the closest known one) or a value of the wrong type.
    """
    if not isinstance(table, Mapping):
        raise RecipeError(
            f"recipe key {prefix[:-1]!r}: expected a table, got {table!r} ({type_name(table)})"
        )
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            if elsewhere and key in elsewhere:
                raise RecipeError(f"recipe key {dotted!r} applies to {elsewhere[key]}")
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise RecipeError(
                f"recipe key {dotted!r} is unknown{hint}; known keys here: {sorted(known)}"
            )
        if not _is_a(hints[key], value):
            raise RecipeError(
                f"recipe key {dotted!r}: expected {describe(hints[key])}, got {value!r} "
                f"({type_name(value)})"
            )
        values[key] = _converted(hints[key], value)
    return cls(**values)


def plain(value):
    """`value` with every tuple (at any depth, in lists and dicts) as a list: JSON's form."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def table_of(config) -> dict:
    """The plain table of a config dataclass (tuples as lists), as a recipe file holds it."""
    return plain(dataclasses.asdict(config))


def require(condition: bool, key: str, message: str) -> None:
    """Raises `RecipeError("recipe key 'key': message")` unless `condition`."""
    if not condition:
        raise RecipeError(f"recipe key {key!r}: {message}")
