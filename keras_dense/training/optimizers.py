"""Optimizers of a recipe: SGD with momentum or AdamW, with an optional loss scale."""

from __future__ import annotations

import keras

from keras_dense.training.schedules import build_schedule


def build_optimizer(
    optimizer: dict, schedule: dict, total_steps: int, mixed_precision: bool = False
) -> keras.optimizers.Optimizer:
    """Builds the optimizer of a recipe's `[optimizer]` and `[schedule]` tables.

    Weight decay is Keras' decoupled decay (`w -= lr * weight_decay * w` each step), which for
    SGD equals the papers' L2 term `weight_decay / 2 * |w|^2` up to the momentum's averaging.

    Args:
        optimizer: `name` ("sgd" or "adamw"), `learning_rate`, `momentum`, `nesterov`,
            `weight_decay`, `beta_1`, `beta_2`, `epsilon`, `clipnorm` (0: none).
        schedule: The `[schedule]` table (see `build_schedule`).
        total_steps: Optimizer steps of the whole run.
        mixed_precision: Wrap in a `keras.optimizers.LossScaleOptimizer` (dynamic loss
            scaling for float16 gradients).

    Returns:
        The optimizer.

    Raises:
        ValueError: An unknown optimizer name.
    """
    rate = build_schedule(schedule, optimizer["learning_rate"], total_steps)
    common = {
        "learning_rate": rate,
        "weight_decay": optimizer["weight_decay"] or None,
        "clipnorm": optimizer["clipnorm"] or None,
    }
    name = optimizer["name"]
    if name == "sgd":
        opt = keras.optimizers.SGD(
            momentum=optimizer["momentum"], nesterov=optimizer["nesterov"], **common
        )
    elif name == "adamw":
        common["weight_decay"] = optimizer["weight_decay"]
        opt = keras.optimizers.AdamW(
            beta_1=optimizer["beta_1"],
            beta_2=optimizer["beta_2"],
            epsilon=optimizer["epsilon"],
            **common,
        )
    else:
        raise ValueError(f"optimizer.name={name!r}: expected 'sgd' or 'adamw'")
    if mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
