"""What the serving signatures of the detectors (`detection_signatures`,
`instance_signatures`) share: the check of the training-scale resize sizes, the input
signature of a region-proposing model's raw `serving_tensor`, and the per-image output specs
of the detections.
"""

from __future__ import annotations

import tensorflow as tf

# `serving_tensor` inputs of a model that proposes its own regions (Faster / Mask R-CNN):
# normalised float images, their `(height, width)` before padding and the resize factors.
PROPOSER_TENSOR_SIGNATURE = (
    tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
    tf.TensorSpec([None, 2], tf.float32, name="image_shape"),
    tf.TensorSpec([None], tf.float32, name="scale"),
)


def check_resize_sizes(min_size, max_size) -> None:
    """Raises ValueError unless `1 <= min_size <= max_size` are ints.

    Args:
        min_size: Shorter side after resizing (the training scale).
        max_size: Cap on the longer side.
    """
    if not (isinstance(min_size, int) and isinstance(max_size, int) and 1 <= min_size <= max_size):
        raise ValueError(
            f"min_size={min_size!r}, max_size={max_size!r}: expected ints with "
            "1 <= min_size <= max_size"
        )


def detection_specs(max_detections: int) -> tuple[tf.TensorSpec, ...]:
    """The specs of one image's padded detections, for `tf.map_fn`'s `fn_output_signature`.

    Args:
        max_detections: Rows of the padded outputs.

    Returns:
        Specs of `(boxes (D, 4) float32, scores (D,) float32, classes (D,) int32,
        num_detections () int32)`.
    """
    return (
        tf.TensorSpec([max_detections, 4], tf.float32),
        tf.TensorSpec([max_detections], tf.float32),
        tf.TensorSpec([max_detections], tf.int32),
        tf.TensorSpec([], tf.int32),
    )
