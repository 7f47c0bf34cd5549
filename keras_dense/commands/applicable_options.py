"""Refusing command-line options that do not apply to the model's task or the output format.

An option that does not apply would otherwise be ignored without a word (`export --quantize
int8` writing a float SavedModel). Such options default to None in their parser, so that
"given" can be told from "left at its default"; the command fills the default in after the
check. Which task-specific options a task uses, per command, is the task's own
`command_options` (`keras_dense.tasks.Task`), so a new task needs no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class OptionScope:
    """Where one option applies.

    Attributes:
        dest: The option's attribute in the parsed arguments.
        flag: The option as typed, e.g. `--quantize`.
        task_specific: It applies only to the tasks whose `command_options` of the command
            name it.
        formats: `--format` values it applies to; None: every format.
    """

    dest: str
    flag: str
    task_specific: bool = False
    formats: tuple[str, ...] | None = None


def _given(value) -> bool:
    return value is not None and value is not False


def _tasks_using(command: str, dest: str) -> str:
    from keras_dense.tasks import get_task, task_names

    names = [n for n in task_names() if dest in get_task(n).command_options.get(command, ())]
    return " and ".join(f"{name} models" for name in names) or "no model"


def refuse_inapplicable(
    args: argparse.Namespace,
    command: str,
    scopes: tuple[OptionScope, ...],
    task: str | None = None,
    output_format: str | None = None,
) -> None:
    """Raises ValueError naming the first given option that does not apply.

    Args:
        args: The parsed arguments (options left out are None, or False for switches).
        command: The command (`export`, `predict`, ...), the key of `Task.command_options`.
        scopes: Where each checked option applies.
        task: The model's task name (None: not known yet, tasks are not checked).
        output_format: The `--format` chosen (None: the command has none).

    Raises:
        ValueError: An option given for a format or task it does not apply to.
    """
    for scope in scopes:
        if not _given(getattr(args, scope.dest, None)):
            continue
        if output_format is not None and scope.formats and output_format not in scope.formats:
            wanted = " or ".join(f"--format {f}" for f in scope.formats)
            raise ValueError(
                f"{scope.flag} does not apply to --format {output_format} (only to {wanted}); "
                "leave it out"
            )
        if task is None or not scope.task_specific:
            continue
        from keras_dense.tasks import get_task

        if scope.dest not in get_task(task).command_options.get(command, ()):
            raise ValueError(
                f"{scope.flag} does not apply to {task} models (only to "
                f"{_tasks_using(command, scope.dest)}); leave it out"
            )


def fill_defaults(args: argparse.Namespace, defaults: dict) -> None:
    """Sets every option of `defaults` that was left out (None) to its default value."""
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


def stored_card(model_path: str) -> tuple[str | None, dict]:
    """The task and the stored fields of the model card beside `model_path`.

    Only the JSON is read, so options are checked before the model is loaded.

    Returns:
        `(task, card)`; `(None, {})` when the card is missing or unreadable (loading the model
        then names the problem).
    """
    from keras_dense.utils.model_card import model_card_path

    try:
        with open(model_card_path(model_path)) as f:
            card = json.load(f)
    except (OSError, ValueError):
        return None, {}
    if not isinstance(card, dict):
        return None, {}
    return str(card.get("task", "segmentation")), card
