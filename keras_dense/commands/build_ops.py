"""`keras-dense build-ops`: (re)compile the custom op library (CRF lattice, RoI pooling)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """Adds the `build-ops` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "build-ops",
        help="compile the TensorFlow custom ops (CRF lattice, RoI pooling) into the cache",
        description="Compiles keras_dense/ops/permutohedral_ops.cc and roi_pooling_ops.cc with "
        "the installed TensorFlow's flags into ~/.cache/keras_dense/ops/<key>/ "
        "($KERAS_DENSE_OPS_CACHE overrides the folder) and loads it once to check it.",
    )
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="only build when the cache has no library for this TensorFlow and these sources "
        "(default: always recompile)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Builds the library; returns the exit status (1 when compilation fails)."""
    from keras_dense.ops import loader

    return loader.main([] if args.if_missing else ["--force"])
