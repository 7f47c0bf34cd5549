"""Label-mask checks and class-id remapping shared by the segmentation converters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_dense.data.errors import BadInputError


def parse_remap(pairs: Sequence[str] | None) -> dict[int, int]:
    """Parses `["11:255", "255:1"]` into `{11: 255, 255: 1}`.

    Args:
        pairs: `SRC:DST` strings with integer values in [0, 255].

    Returns:
        The mapping.

    Raises:
        ValueError: A pair is malformed or out of range.
    """
    mapping = {}
    for pair in pairs or ():
        try:
            src, dst = (int(v) for v in str(pair).split(":"))
        except ValueError:
            raise ValueError(f"--remap {pair!r}: expected SRC:DST with two integers") from None
        if not (0 <= src <= 255 and 0 <= dst <= 255):
            raise ValueError(f"--remap {pair!r}: values must be in [0, 255]")
        if src in mapping:
            raise ValueError(f"--remap: source value {src} is mapped twice")
        mapping[src] = dst
    return mapping


def remap_lookup(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry lookup table applying `mapping` simultaneously (no chaining)."""
    table = np.arange(256, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def check_mask(
    mask: np.ndarray,
    image_shape: tuple[int, int],
    num_classes: int | None,
    ignore_label: int | None,
    source: str,
) -> None:
    """Rejects masks whose size differs from the image or that hold unknown class ids.

    Args:
        mask: (H, W) uint8 class ids (after remapping).
        image_shape: The image's (H, W).
        num_classes: Valid ids are [0, num_classes); None skips the value check.
        ignore_label: The one other allowed value (None: no other value).
        source: The mask file, for the message.

    Raises:
        BadInputError: On a size or value mismatch.
    """
    if mask.shape[:2] != tuple(image_shape):
        raise BadInputError(
            source,
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
            f"{image_shape[1]}x{image_shape[0]} (width x height)",
        )
    if num_classes is None:
        return
    values = np.unique(mask)
    bad = values[
        (values >= num_classes) & (values != (-1 if ignore_label is None else ignore_label))
    ]
    if bad.size:
        raise BadInputError(
            source,
            f"mask values {bad.tolist()} are neither a class id in [0, {num_classes}) "
            f"nor the ignore label {ignore_label}; use --remap or --classes",
        )
