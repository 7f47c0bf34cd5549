"""The `keras-dense` command line.

Each command lives in its own module, which defines `register(subparsers)`; the parser it adds
sets `run=<function(args) -> int>` as a default. Add a command by listing its module here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

COMMAND_MODULES = (
    "keras_dense.commands.convert",
    "keras_dense.commands.build_ops",
    "keras_dense.commands.train",
    "keras_dense.commands.evaluate",
    "keras_dense.commands.predict",
    "keras_dense.commands.export",
    "keras_dense.commands.serving_config",
    "keras_dense.commands.tune_crf",
    "keras_dense.commands.tune_threshold",
    "keras_dense.commands.pseudo_label",
    "keras_dense.commands.receptive_field",
    "keras_dense.commands.pretrained",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-dense`."""
    parser = argparse.ArgumentParser(
        prog="keras-dense",
        description="Dense prediction with TensorFlow / Keras 3: convert data, train, "
        "evaluate, predict, export and serve.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's log output and full tracebacks of errors",
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
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before any command module imports TensorFlow: its log level is read once, at import.
    configure_logging(_wants_verbose(argv))
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError, ImportError, RuntimeError) as err:
        # User errors (bad input, arguments, files) get one line; --verbose adds the traceback.
        if args.verbose:
            traceback.print_exc()
        print(f"keras-dense {args.command}: error: {describe_error(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(err, tf.errors.OpError):
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"keras-dense {args.command}: error: {describe_error(err)}", file=sys.stderr)
        return 2


def _wants_verbose(argv: Sequence[str]) -> bool:
    """Whether the global `--verbose` flag is among the arguments (parsed before the parser)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--verbose", action="store_true")
    known, _ = pre.parse_known_args(argv)
    return bool(known.verbose)


def configure_logging(verbose: bool) -> None:
    """Quiets TensorFlow's C++ and Python-side log output, or (verbose) leaves it as it is.

    Our own errors are unaffected: they go to stderr as one line (with a traceback when
    verbose), results to stdout.

    Args:
        verbose: Leave TensorFlow's logging alone.
    """
    from keras_dense.utils import native_logs

    if verbose:
        native_logs.leave_tensorflow_logging()
    else:
        native_logs.quiet_tensorflow()


def describe_error(err: BaseException) -> str:
    """A one-line message for an error at the CLI boundary, naming the file when known."""
    if isinstance(err, OSError) and getattr(err, "filename", None) and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(getattr(err, "message", None) or err or type(err).__name__)


if __name__ == "__main__":
    sys.exit(main())
