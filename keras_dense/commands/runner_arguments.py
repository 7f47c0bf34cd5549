"""`--runner local|beam` and `--beam-option KEY=VALUE`, shared by the commands that scale out."""

from __future__ import annotations

import argparse


def add_runner_arguments(
    parser: argparse.ArgumentParser, work: str, default: str | None = "local"
) -> None:
    """Adds `--runner` and `--beam-option` to a command's parser.

    Args:
        parser: The command's parser.
        work: What the Beam pipeline does, for the help text (e.g. "writing the same shards").
        default: `--runner`'s default (None where the command fills it in after checking
            which tasks support it).
    """
    parser.add_argument(
        "--runner",
        choices=("local", "beam"),
        default=default,
        help=f"local: this process (default); beam: an Apache Beam pipeline (the 'beam' extra) "
        f"{work}, locally on worker processes or on a cluster",
    )
    parser.add_argument(
        "--beam-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Beam pipeline option, repeatable: direct_num_workers=4, runner=DataflowRunner, "
        "project=..., temp_location=gs://... (with --runner beam)",
    )


def check_runner_arguments(args: argparse.Namespace) -> None:
    """Refuses `--beam-option` without `--runner beam`."""
    if args.beam_option and args.runner != "beam":
        raise ValueError("--beam-option applies to --runner beam only; add --runner beam")
