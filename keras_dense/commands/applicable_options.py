"""Refusing command-line options that do not apply to the model's task or the output format.

An option that does not apply would otherwise be ignored without a word (`export --quantize
int8` writing a float SavedModel). Such options default to None in their parser, so that
"given" can be told from "left out"; the command fills its default in after the check. Typing
the default value (`--tta none`, `--quantize none`) is the same as leaving the option out, so
it is never refused. An option that only some tasks support names the capabilities it needs
(`OptionScope.needs`, see `keras_dense.tasks.capabilities.TaskCapabilities`), or the export
option field it sets (`OptionScope.export_field`, see `keras_dense.tasks.export_options`);
each task declares what it has, so a new task needs no change here. `refuse_inapplicable` is
the one place that refuses them (`keras_dense.tasks.capabilities.unsupported_error` words the
message); `CommandOptions` holds one command's scopes and defaults and runs both steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class OptionScope:
    """Where one option applies.

    Attributes:
        dest: The option's attribute in the parsed arguments.
        flag: The option as typed, e.g. `--quantize`.
        needs: Capabilities (`TaskCapabilities` field names) of which the model's task must
            have one; () with no `export_field`: every task.
        formats: `--format` values it applies to; None: every format.
        export_field: The field of the task's export options (`Task.export_options`) that the
            option sets; it applies to the tasks that declare it.
    """

    dest: str
    flag: str
    needs: tuple[str, ...] = ()
    formats: tuple[str, ...] | None = None
    export_field: str | None = None

    @property
    def task_specific(self) -> bool:
        """Whether only some tasks support it."""
        return bool(self.needs) or self.export_field is not None

    def supported_by(self, task) -> bool:
        """Whether a `keras_dense.tasks.Task` supports the option."""
        if self.export_field is not None:
            return any(f.name == self.export_field for f in dataclasses.fields(task.export_options))
        return not self.needs or task.capabilities.has_any(self.needs)

    def feature(self) -> str:
        """What the option needs, in words (for the refusal)."""
        from keras_dense.tasks.capabilities import describe

        if self.export_field is not None:
            return f"the export option {self.export_field}"
        return describe(self.needs)


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


def refuse_task(what: str, task: str, scope: OptionScope, hint: str = "; leave it out") -> None:
    """Raises the one refusal when the model's task does not support an option or command.

    Args:
        what: The option or command as typed (`--crf`, `tune-crf`).
        task: The model's task name.
        scope: What it needs (`needs` or `export_field`).
        hint: Appended to the message.

    Raises:
        ValueError: "WHAT does not apply to TASK models: FEATURE is supported by ... only".
    """
    from keras_dense.tasks.capabilities import unsupported_error

    error = unsupported_error(what, task, scope.supported_by, scope.feature(), hint)
    if error is not None:
        raise error


def refuse_inapplicable(
    args: argparse.Namespace,
    scopes: tuple[OptionScope, ...],
    task: str | None = None,
    output_format: str | None = None,
    defaults: Mapping[str, object] | None = None,
) -> None:
    """Raises ValueError naming the first given option that does not apply.

    Args:
        args: The parsed arguments (options left out are None, or False for switches).
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
        if task is not None and scope.task_specific:
            refuse_task(scope.flag, task, scope)


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, object]) -> None:
    """Sets every option of `defaults` that was left out (None) to its default value."""
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)


@dataclasses.dataclass(frozen=True)
class CommandOptions:
    """One command's options that apply to some tasks or formats only, and its defaults.

    Attributes:
        command: The command, e.g. `evaluate`.
        scopes: Where each option applies.
        defaults: The value of each option left out (None in its parser); typing it is the
            same as leaving the option out.
    """

    command: str
    scopes: tuple[OptionScope, ...]
    defaults: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @classmethod
    def task_specific(
        cls,
        command: str,
        needs: Mapping[str, tuple[str, ...]],
        defaults: Mapping[str, object] | None = None,
    ) -> CommandOptions:
        """Options that some tasks support, typed `--NAME` (`dest` with '-' for '_').

        Args:
            command: The command.
            needs: Per option (`dest`), the capabilities of which the task must have one.
            defaults: The value of each option left out.
        """
        scopes = tuple(
            OptionScope(dest, "--" + dest.replace("_", "-"), needs=tuple(capabilities))
            for dest, capabilities in needs.items()
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
        refuse_inapplicable(args, self.scopes, task, output_format, self.defaults)
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
