"""What detection records must satisfy beyond their own consistency, and the resize limit.

`DetectionRules` is what `detection_records.check_records` checks the records against (the
model's classes, the pipeline's limits); `resize_problem` says when an image is too elongated
for the detector's resize, for the record check and for prediction alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Coordinates at most this far outside [0, 1] are accepted as they are (float32 rounding of
# `(x1 + 1) / width` gives 1.0000001).
COORD_TOLERANCE = 1e-5
# The detectors' largest feature stride (VGG16 / ResNet conv4 / compact at 16): a shorter
# side below it leaves the backbone no feature row and the detector returns nothing.
MIN_RESIZED_SIDE = 16


@dataclasses.dataclass(frozen=True)
class DetectionRules:
    """What the records must satisfy beyond their own consistency.

    Attributes:
        num_classes: Object classes K; labels must be in [1, K]. None: only >= 1.
        class_names: The object class names (label i is `class_names[i - 1]`); a record's
            `image/object/class/text` must name the same class (compared without case and
            surrounding spaces; empty texts are not compared). None: texts not compared.
        instance_masks: Every record with boxes needs one instance mask per box, and the
            masks are read: each must be an 8-bit (or 1, 2, 4-bit) PNG with an object pixel.
        proposals: Check the proposals' coordinates (they are read: Fast R-CNN, R-CNN).
        max_boxes: Most boxes per record (the pipeline's padded rows); None: no limit.
        max_proposals: Most proposals per record; None: no limit.
        keep_crowd: Crowd boxes count toward `max_boxes` (they are kept in the targets).
        min_size: With `max_size`, the Fast R-CNN resize whose result must keep
            `MIN_RESIZED_SIDE` pixels on the shorter side; None: not checked.
        max_size: Cap on the longer side of that resize.
    """

    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    instance_masks: bool = False
    proposals: bool = False
    max_boxes: int | None = None
    max_proposals: int | None = None
    keep_crowd: bool = False
    min_size: int | None = None
    max_size: int | None = None


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """`(height, width)` after the Fast R-CNN resize (as `fast_rcnn_scale` and the graph)."""
    h, w = np.float32(height), np.float32(width)
    scale = min(np.float32(min_size) / min(h, w), np.float32(max_size) / max(h, w))
    return int(np.round(h * scale)), int(np.round(w * scale))


def resize_problem(height: int, width: int, min_size: int, max_size: int) -> str | None:
    """Why an image is too elongated for the detector's resize, or None when it fits."""
    new_h, new_w = resized_size(height, width, min_size, max_size)
    if min(new_h, new_w) >= MIN_RESIZED_SIDE:
        return None
    return (
        f"the image is {width}x{height} (width x height): resized for the detector (shorter "
        f"side to min_size={min_size}, longer side at most max_size={max_size}) it would be "
        f"{new_w}x{new_h}, below the detector's minimum side of {MIN_RESIZED_SIDE} px (its "
        "feature stride), so nothing could be detected; crop or tile the image to an aspect "
        f"ratio of at most {max_size / MIN_RESIZED_SIDE:g}:1, or raise max_size"
    )
