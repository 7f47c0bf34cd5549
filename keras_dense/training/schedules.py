"""Learning-rate schedules: poly (DeepLab), cosine, step and constant."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dense")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """DeepLab's "poly" policy: `lr = (lr0 - end) * (1 - step / decay_steps) ** power + end`.

    After `decay_steps` the rate stays at `end_learning_rate`.

    Args:
        initial_learning_rate: `lr0`.
        decay_steps: Steps over which the rate decays (the whole training run).
        power: Exponent (0.9 in DeepLab).
        end_learning_rate: Final rate.
        name: Schedule name.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        power: float = 0.9,
        end_learning_rate: float = 0.0,
        name: str = "poly_decay",
    ):
        if decay_steps < 1:
            raise ValueError(f"decay_steps={decay_steps!r}: expected a positive integer")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)
        self.name = name

    def __call__(self, step):
        step = ops.minimum(ops.cast(step, "float32"), float(self.decay_steps))
        remaining = 1.0 - step / float(self.decay_steps)
        span = self.initial_learning_rate - self.end_learning_rate
        return span * ops.power(remaining, self.power) + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
            "name": self.name,
        }


def build_schedule(schedule: dict, learning_rate: float, total_steps: int):
    """The learning rate (a float or a schedule) of a recipe's `[schedule]` table.

    Args:
        schedule: `name` in "poly", "cosine", "step", "constant" and its parameters:
            poly `power`, `end_learning_rate`; cosine `alpha` (final rate as a fraction of the
            initial one); step `boundaries` (optimizer steps) and `factor` (the rate is
            multiplied by it at each boundary).
        learning_rate: The initial learning rate.
        total_steps: Optimizer steps of the whole run (decay length of poly and cosine).

    Returns:
        A float or a `keras.optimizers.schedules.LearningRateSchedule`.

    Raises:
        ValueError: An unknown schedule name.
    """
    name = schedule["name"]
    total_steps = max(int(total_steps), 1)
    if name == "constant":
        return float(learning_rate)
    if name == "poly":
        return PolyDecay(
            learning_rate, total_steps, schedule["power"], schedule["end_learning_rate"]
        )
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            learning_rate, total_steps, alpha=schedule["alpha"]
        )
    if name == "step":
        boundaries = [int(b) for b in schedule["boundaries"]]
        values = [
            float(learning_rate) * schedule["factor"] ** i for i in range(len(boundaries) + 1)
        ]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    raise ValueError(f"schedule.name={name!r}: expected poly, cosine, step or constant")
