"""A training recipe parsed once into typed configs (`Recipe`), and back into its table.

The recipe's task picks the class of its `[data]` table (`Task.data_config`) and the default
of `training.metrics` (`Task.metrics`). Keys are checked as the table is read: a misspelt key
is named with the closest known one, a value of the wrong type with its key path, and a key
of another task's `[data]` table with the tasks it applies to. `Recipe.to_dict` is the plain
table that `recipe.json` and model cards store; it parses back into the same `Recipe`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from keras_dense.tasks.configs import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainingConfig,
)
from keras_dense.tasks.task import get_task, task_names
from keras_dense.utils.typed_tables import parse_table, require, table_of


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A resolved training recipe: every key present, typed and checked.

    Attributes:
        task: The task's registered name.
        seed: The run's random seed.
        model: `[model]`.
        data: `[data]`, of the task's `data_config` class.
        training: `[training]`.
        optimizer: `[optimizer]` as a table: the shared keys (`OptimizerConfig`) plus the
            chosen class's own arguments (`keras_dense.training.optimizers`).
        schedule: `[schedule]`.
        loss: `[loss]`.
    """

    task: str = "segmentation"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    optimizer: dict = dataclasses.field(default_factory=lambda: table_of(OptimizerConfig()))
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()

    def to_dict(self) -> dict:
        """The plain table (what `recipe.json` holds); `parse_recipe_table` reads it back."""
        return table_of(self)

    def with_num_classes(self, num_classes: int) -> Recipe:
        """This recipe with `model.num_classes` resolved (the trainer sets the data's)."""
        model = dataclasses.replace(self.model, num_classes=num_classes)
        return dataclasses.replace(self, model=model)


@dataclasses.dataclass(frozen=True)
class _Tables:
    """The top-level keys of a recipe file."""

    task: str = "segmentation"
    seed: int = 0
    model: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    optimizer: dict = dataclasses.field(default_factory=dict)
    schedule: dict = dataclasses.field(default_factory=dict)
    loss: dict = dataclasses.field(default_factory=dict)


def _data_keys(task: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_task(task).data_config)}


def _elsewhere(task: str) -> dict[str, str]:
    """Each `[data]` key of other tasks that `task` lacks, with the tasks it applies to."""
    owners: dict[str, list[str]] = {}
    own = _data_keys(task)
    for other in task_names():
        for key in _data_keys(other) - own:
            owners.setdefault(key, []).append(other)
    return {
        key: f"{' and '.join(sorted(names))} recipes, not {task}" for key, names in owners.items()
    }


def parse_recipe_table(table: Mapping, optimizer: dict | None = None) -> Recipe:
    """Parses and checks a recipe table (a recipe file's, or a stored `to_dict`).

    Args:
        table: The recipe as plain TOML values.
        optimizer: The resolved `[optimizer]` table (`keras_dense.training.recipe` resolves
            the chosen class's arguments); None: `table`'s shared optimizer keys over their
            defaults, plus its other keys as they are.

    Returns:
        The `Recipe`.

    Raises:
        RecipeError: An unknown key, a wrong type or a value out of range (the key is named).
    """
    tables = parse_table(_Tables, table, "")
    tasks = task_names()
    require(tables.task in tasks, "task", f"expected one of {tasks}, got {tables.task!r}")
    task = get_task(tables.task)
    model = parse_table(ModelConfig, tables.model, "model.")
    model.check()
    data = parse_table(task.data_config, tables.data, "data.", _elsewhere(task.name))
    data.check()
    given_training = {"metrics": list(task.metrics), **tables.training}
    training = parse_table(TrainingConfig, given_training, "training.")
    training.check(task.metrics, task.name)
    if optimizer is None:  # a resolved table: its shared keys are typed, the rest as it is
        shared = {f.name for f in dataclasses.fields(OptimizerConfig)}
        parse_table(
            OptimizerConfig,
            {k: v for k, v in tables.optimizer.items() if k in shared},
            "optimizer.",
        )
        optimizer = dict(tables.optimizer) or table_of(OptimizerConfig())
    schedule = parse_table(ScheduleConfig, tables.schedule, "schedule.")
    schedule.check()
    loss = parse_table(LossConfig, tables.loss, "loss.")
    loss.check()
    return Recipe(tables.task, tables.seed, model, data, training, optimizer, schedule, loss)


def as_recipe(recipe: Recipe | Mapping) -> Recipe:
    """`recipe` itself, or a resolved recipe table (`Recipe.to_dict`, `validate`) parsed."""
    return recipe if isinstance(recipe, Recipe) else parse_recipe_table(recipe)


def default_table(task: str) -> dict:
    """The table of a recipe of `task` that sets nothing (required keys empty)."""
    task_class = get_task(task)
    recipe = Recipe(
        task=task,
        data=task_class.data_config(),
        training=TrainingConfig(metrics=tuple(task_class.metrics)),
    )
    return recipe.to_dict()
