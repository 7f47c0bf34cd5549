"""Refusing command-line options that do not apply to the model's task or the output format.

An option that does not apply would otherwise be ignored without a word (`export --quantize
int8` writing a float SavedModel). Such options default to None in their parser, so that
"given" can be told from "left out"; the command fills its default in after the check. Typing
the default value (`--tta none`, `--quantize none`) is the same as leaving the option out, so
it is never refused. Which task-specific options a task uses, per command, is the task's own
`command_options` (`keras_dense.tasks.Task`), so a new task needs no change here.
`CommandOptions` holds one command's scopes and defaults and runs both steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Mapping


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


def is_given(args: argparse.Namespace, dest: str, defaults: Mapping[str, object]) -> bool:
    """Whether an option says more than leaving it out.

    Args:
        args: The parsed arguments (options left out are None, or False for switches).
        dest: The option's attribute.
        defaults: The values the command uses for options left out (`dest` -> value).

    Returns:
        False for None, False and the option's default value (typed or not); True otherwise.
    """
    value = getattr(args, dest, None)
    if value is None or value is False:
        return False
    return not (dest in defaults and value == defaults[dest])


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
    defaults: Mapping[str, object] | None = None,
) -> None:
    """Raises ValueError naming the first given option that does not apply.

    Args:
        args: The parsed arguments (options left out are None, or False for switches).
        command: The command (`export`, `predict`, ...), the key of `Task.command_options`.
        scopes: Where each checked option applies.
        task: The model's task name (None: not known yet, tasks are not checked).
        output_format: The `--format` chosen (None: the command has none).
        defaults: The values used for options left out; an option typed at its default is
            not refused (see `is_given`). None: no option has a default.

    Raises:
        ValueError: An option given for a format or task it does not apply to.
    """
    if defaults is None:
        defaults = {}
    for scope in scopes:
        if not is_given(args, scope.dest, defaults):
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


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, object]) -> None:
    """Sets every option of `defaults` that was left out (None) to its default value."""
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


@dataclasses.dataclass(frozen=True)
class CommandOptions:
    """One command's options that apply to some tasks or formats only, and its defaults.

    Attributes:
        command: The command, the key of `Task.command_options`.
        scopes: Where each option applies.
        defaults: The value of each option left out (None in its parser); typing it is the
            same as leaving the option out.
    """

    command: str
    scopes: tuple[OptionScope, ...]
    defaults: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @classmethod
    def task_specific(
        cls, command: str, dests: Iterable[str], defaults: Mapping[str, object] | None = None
    ) -> CommandOptions:
        """Options that apply to some tasks only, typed `--NAME` (`dest` with '-' for '_')."""
        scopes = tuple(
            OptionScope(dest, "--" + dest.replace("_", "-"), task_specific=True) for dest in dests
        )
        return cls(command, scopes, dict(defaults or {}))

    def check(
        self, args: argparse.Namespace, task: str | None = None, output_format: str | None = None
    ) -> None:
        """Refuses the given options that do not apply, then fills in those left out.

        Args:
            args: The parsed arguments; changed in place.
            task: The model's task name (None: not known, tasks are not checked).
            output_format: The `--format` chosen (None: the command has none).

        Raises:
            ValueError: An option given for a format or task it does not apply to.
        """
        refuse_inapplicable(args, self.command, self.scopes, task, output_format, self.defaults)
        fill_defaults(args, self.defaults)


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
