"""The `--slice` / `--overlap` options of sliced detection, shared by `predict` and `evaluate`."""

from __future__ import annotations

import argparse
from typing import NamedTuple

from keras_dense.detection.sliced import MERGES
from keras_dense.signatures.memory_budget import parse_memory

DEFAULT_OVERLAP = 0.2
DEFAULT_MERGE_IOU = 0.5


class SliceOptions(NamedTuple):
    """The parsed sliced-detection options."""

    tile: int | None
    overlap: float
    merge: str
    merge_iou: float


def add_slice_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Adds `--slice N`, `--overlap F`, `--merge` and `--merge-iou`
    (`keras_dense.detection.detect_sliced`).

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
        choices=tuple(MERGES),
        default=None,
        help="detection with --slice: how the tiles' detections of one object become one: "
        "nms (class-wise NMS keeps the best box; default) or greedy (greedy matching by IoU "
        "into the box enclosing the group, SAHI's greedy NMM)",
    )
    parser.add_argument(
        "--merge-iou",
        type=float,
        default=None,
        help="detection with --slice: IoU above which two detections of a class are one object "
        f"(default {DEFAULT_MERGE_IOU}; pieces of an object cut by tiles overlap less: greedy "
        "joins them at about 0.15)",
    )


def slice_options(args: argparse.Namespace) -> SliceOptions:
    """`(tile or None, overlap, merge, merge_iou)` from the parsed options.

    Raises:
        ValueError: A tile below 16 pixels, an overlap outside [0, 1), a merge IoU outside
            [0, 1], or `--overlap`, `--merge` or `--merge-iou` without `--slice` (each named).
    """
    if args.slice is not None and args.slice < 16:
        raise ValueError(f"--slice {args.slice}: expected a tile size of at least 16 pixels")
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap {args.overlap}: expected a fraction of the tile in [0, 1)")
    if args.overlap is not None and args.slice is None:
        raise ValueError("--overlap applies to sliced detection: give --slice too")
    merge = getattr(args, "merge", None)
    merge_iou = getattr(args, "merge_iou", None)
    for option, value in (("--merge", merge), ("--merge-iou", merge_iou)):
        if value is not None and args.slice is None:
            raise ValueError(f"{option} applies to sliced detection: give --slice too")
    if merge_iou is not None and not 0.0 <= merge_iou <= 1.0:
        raise ValueError(f"--merge-iou {merge_iou}: expected a number in [0, 1]")
    return SliceOptions(
        args.slice,
        DEFAULT_OVERLAP if args.overlap is None else args.overlap,
        merge or "nms",
        DEFAULT_MERGE_IOU if merge_iou is None else merge_iou,
    )


def tile_memory(args: argparse.Namespace, task) -> int | None:
    """A detector's `--max-memory`: the memory of one model call over a batch of tiles, or None
    (one tile per call) when it was not typed. Call it before the command fills defaults.

    Args:
        args: The parsed options.
        task: The model's `keras_dense.tasks.Task`.

    Raises:
        ValueError: `--max-memory` for a detector without `--slice`, or a bad size (named).
    """
    typed = getattr(args, "max_memory", None)
    if typed is None or not task.capabilities.tile_batches:
        return None  # segmenters and classifiers plan each image; others are refused after
    if args.slice is None:
        raise ValueError(
            "--max-memory applies to detection with --slice (the memory of one model call "
            "over a batch of tiles); give --slice too, or leave --max-memory out"
        )
    return parse_memory(typed, "--max-memory")
