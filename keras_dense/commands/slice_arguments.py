"""The `--slice` / `--overlap` options of sliced detection, shared by `predict` and `evaluate`."""

from __future__ import annotations

import argparse
from typing import NamedTuple

DEFAULT_OVERLAP = 0.2
MERGES = ("nms", "greedy")


class SliceOptions(NamedTuple):
    """The parsed sliced-detection options."""

    tile: int | None
    overlap: float
    merge: str


def add_slice_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Adds `--slice N`, `--overlap F` and `--merge` (`keras_dense.detection.detect_sliced`).

    Args:
        parser: The command's parser.
        what: What the command does with the sliced detections (opens `--slice`'s help).
    """
    parser.add_argument(
        "--slice",
        type=int,
        default=None,
        help=f"detection: {what} on overlapping tiles of this many pixels plus the whole image "
        "shrunk to one tile, merged by class-wise NMS (small objects in large images; "
        "default: whole images only)",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="detection with --slice: fraction of a tile shared by adjacent tiles "
        f"(default {DEFAULT_OVERLAP})",
    )
    parser.add_argument(
        "--merge",
        choices=MERGES,
        default=None,
        help="detection with --slice: how the tiles' detections of one object become one: "
        "nms (class-wise NMS keeps the best box; default) or greedy (greedy matching by IoU "
        "into the box enclosing the group, SAHI's greedy NMM)",
    )


def slice_options(args: argparse.Namespace) -> SliceOptions:
    """`(tile or None, overlap, merge)` from the parsed options.

    Raises:
        ValueError: A tile below 16 pixels, an overlap outside [0, 1), or `--overlap` or
            `--merge` without `--slice` (each named).
    """
    if args.slice is not None and args.slice < 16:
        raise ValueError(f"--slice {args.slice}: expected a tile size of at least 16 pixels")
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap {args.overlap}: expected a fraction of the tile in [0, 1)")
    if args.overlap is not None and args.slice is None:
        raise ValueError("--overlap applies to sliced detection: give --slice too")
    merge = getattr(args, "merge", None)
    if merge is not None and args.slice is None:
        raise ValueError("--merge applies to sliced detection: give --slice too")
    return SliceOptions(
        args.slice,
        DEFAULT_OVERLAP if args.overlap is None else args.overlap,
        merge or MERGES[0],
    )
