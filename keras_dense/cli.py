"""The `keras-dense` command line.

Each command lives in its own module, which defines `register(subparsers)`; the parser it adds
sets `run=<function(args) -> int>` as a default. Add a command by listing its module here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "keras_dense.data.convert_command",
    "keras_dense.ops.build_ops_command",
    "keras_dense.training.train_command",
    "keras_dense.evaluation.evaluate_command",
    "keras_dense.prediction.predict_command",
    "keras_dense.export.export_command",
    "keras_dense.serving.config_command",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-dense`."""
    parser = argparse.ArgumentParser(
        prog="keras-dense",
        description="Dense prediction with TensorFlow / Keras 3: convert data, train, "
        "evaluate, predict, export and serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `keras-dense` console script.

    Args:
        argv: Arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 2 on bad input or arguments.
    """
    args = build_parser().parse_args(argv)
    from keras_dense.data import BadInputError

    try:
        return int(args.run(args) or 0)
    except (BadInputError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"keras-dense {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
