"""Building a recipe's model: a `keras_dense.apps` builder called with the recipe's kwargs."""

from __future__ import annotations

import inspect
from typing import Callable

import keras


def resolve_builder(name: str) -> Callable[..., keras.Model]:
    """The builder function `keras_dense.apps.<name>`.

    Args:
        name: A builder listed in `keras_dense.apps.__all__`, e.g. "unet" or "deeplab".

    Returns:
        The function.

    Raises:
        ValueError: No such builder.
    """
    from keras_dense import apps

    known = sorted(
        n
        for n in apps.__all__
        if inspect.isfunction(getattr(apps, n, None))
        and "num_classes" in inspect.signature(getattr(apps, n)).parameters
    )
    if name not in known:
        raise ValueError(f"recipe key 'model.builder': unknown builder {name!r}; known: {known}")
    return getattr(apps, name)


def builder_kwargs(
    name: str, kwargs: dict, num_classes: int, channels: int
) -> tuple[Callable[..., keras.Model], dict]:
    """Checks a recipe's `[model.kwargs]` against the builder and fills data-derived values.

    `num_classes` defaults to the data's class count (and must match it when given);
    `input_shape` defaults to `(None, None, channels)`, and `0` in a given shape means
    "any size"; the string `"none"` stands for None (TOML has no null), e.g.
    `--set model.kwargs.backbone_weights=\"none\"` for a run without downloads.

    Args:
        name: The builder name.
        kwargs: The recipe's keyword arguments.
        num_classes: Classes of the data (detection: object classes, without background).
        channels: Image channels of the data.

    Returns:
        `(builder, kwargs)` ready to call.

    Raises:
        ValueError: Unknown builder, unknown keyword, or a class count that contradicts the
            data (the recipe key is named).
    """
    builder = resolve_builder(name)
    signature = inspect.signature(builder)
    params = signature.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = dict(kwargs)
    for key in out:
        if key not in params and not accepts_any:
            raise ValueError(
                f"recipe key 'model.kwargs.{key}': {name}() has no argument {key!r}; "
                f"its arguments: {[p for p in params if p not in ('kwargs',)]}"
            )
    if "num_classes" in params:
        given = out.setdefault("num_classes", num_classes)
        if given != num_classes:
            raise ValueError(
                f"recipe key 'model.kwargs.num_classes' = {given} but the data has "
                f"{num_classes} classes"
            )
    if "input_shape" in params:
        shape = out.get("input_shape")
        if shape is None:
            shape = (None, None, channels)
        else:
            shape = tuple(None if s == 0 else s for s in shape)
            if len(shape) != 3 or shape[-1] != channels:
                raise ValueError(
                    f"recipe key 'model.kwargs.input_shape' = {list(out['input_shape'])}: "
                    f"expected [height, width, {channels}] (data.channels = {channels})"
                )
        out["input_shape"] = shape
    for key, value in list(out.items()):
        if isinstance(value, list):
            out[key] = tuple(value)
        elif value == "none":
            out[key] = None
    return builder, out


def build_model(
    name: str, kwargs: dict, num_classes: int, channels: int
) -> tuple[keras.Model, dict]:
    """Builds the recipe's model.

    Args:
        name: Builder name (`model.builder`).
        kwargs: Builder keyword arguments (`model.kwargs`).
        num_classes: Classes of the data.
        channels: Image channels.

    Returns:
        `(model, kwargs)`: the model and the keyword arguments actually used.
    """
    builder, resolved = builder_kwargs(name, kwargs, num_classes, channels)
    return builder(**resolved), resolved
