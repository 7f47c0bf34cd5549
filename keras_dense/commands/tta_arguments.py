"""The `--tta` / `--scales` options that `evaluate`, `predict` and `export` share."""

from __future__ import annotations

import argparse


def add_tta_arguments(parser: argparse.ArgumentParser, purpose: str | None = None) -> None:
    """Adds `--tta {none,flip}` and `--scales S1,S2,...` (read by `keras_dense.utils.tta`).

    Args:
        parser: The command's parser.
        purpose: What the augmentation is for, opening the help of `--tta` (None: evaluate
            and predict's, the softmax or a classifier's class maps averaged).
    """
    what = (
        "averages the softmax (with --scales; classification: the class maps of the "
        "pointing game and CorLoc)"
        if purpose is None
        else "averages the softmax (with --scales)"
    )
    parser.add_argument(
        "--tta",
        choices=("none", "flip"),
        default=None,
        help=f"{purpose or 'test-time augmentation'} (default none): flip also runs each image "
        f"mirrored left-right and {what}",
    )
    parser.add_argument(
        "--scales",
        default=None,
        help="comma-separated image scales in [0.25, 4] whose softmax is averaged, e.g. "
        "0.75,1,1.25 (default 1; with --tta flip, DeepLab's multi-scale + flip evaluation)",
    )
