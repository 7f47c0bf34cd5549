"""Mask R-CNN's mask targets: each positive RoI's ground-truth mask, cropped and resized.

He et al. (2017), Sec. 3: "the mask target is the intersection between an RoI and its
associated ground-truth mask", an `m x m` grid over the RoI. Here the RoI is divided into
`mask_size x mask_size` equal cells and each cell takes the bilinear sample of the instance
mask at its centre (`tf.image.crop_and_resize`), thresholded at 0.5 (the paper's binary
targets) or kept soft (`threshold=None`). As in RoIAlign, samples up to one pixel outside the
image take the value of the nearest edge pixel (the mask is padded by one replicated pixel),
so an object touching the border keeps its full extent; samples further out are 0.

Coordinates: RoIs are `[ymin, xmin, ymax, xmax]` extents in continuous pixel coordinates,
pixel `i` covering `[i, i + 1)` (the convention of `keras_dense.data`'s boxes, whose `xmax`
is one past the last pixel), so that a RoI equal to a ground-truth box maps its mask exactly
onto the grid. Cell `j` of a RoI of height `h = ymax - ymin` has its centre at
`ymin + (j + 0.5) h / mask_size`, i.e. at row `ymin + (j + 0.5) h / mask_size - 0.5` of the
mask. `keras_dense.detection.mask_paste.paste_masks` is the inverse mapping.
"""

from __future__ import annotations

import tensorflow as tf


def roi_sample_boxes(rois: tf.Tensor, mask_size: int, height, width) -> tf.Tensor:
    """`tf.image.crop_and_resize` boxes that sample each RoI at its cells' centres.

    Args:
        rois: (..., 4) float32 RoIs, continuous pixels (see the module docstring).
        mask_size: Cells per side.
        height: Height H of the image (pixels), before the one-pixel padding.
        width: Width W of the image.

    Returns:
        (..., 4) boxes normalised in the image padded by one pixel on every side
        (`(H + 2) x (W + 2)`): the first and last cell centres' rows (columns), plus 1 for
        the padding, over `H + 1` (`W + 1`).
    """
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(rois, tf.float32), 4, axis=-1)
    step_y = (ymax - ymin) / mask_size
    step_x = (xmax - xmin) / mask_size
    first_y = ymin + 0.5 * step_y + 0.5  # row - 0.5 of the centre, + 1 for the padding
    first_x = xmin + 0.5 * step_x + 0.5
    last_y = first_y + (mask_size - 1) * step_y
    last_x = first_x + (mask_size - 1) * step_x
    norm_y = tf.cast(height, tf.float32) + 1.0
    norm_x = tf.cast(width, tf.float32) + 1.0
    return tf.stack([first_y / norm_y, first_x / norm_x, last_y / norm_y, last_x / norm_x], -1)


def mask_targets(
    instance_masks,
    matched_gt_index,
    rois,
    mask_size: int = 28,
    threshold: float | None = 0.5,
) -> tf.Tensor:
    """Crops each RoI's matched ground-truth instance mask to a `mask_size` grid, batched.

    Args:
        instance_masks: (B, G, H, W) instance masks (any numeric dtype, 1 inside the
            instance, 0 outside), rows matching the ground-truth boxes of the batch.
        matched_gt_index: (B, R) int, the ground-truth row of each RoI (`sample_rois`'s
            `"matched_gt"`); negative for RoIs without a mask target.
        rois: (B, R, 4) RoIs `[ymin, xmin, ymax, xmax]`, continuous pixels of the masks.
        mask_size: Cells per side of the target (28 in Mask R-CNN).
        threshold: Targets are `sample >= threshold` (0 or 1) when set (0.5, He et al.'s
            binary targets); None keeps the bilinear samples in [0, 1].

    Returns:
        (B, R, mask_size, mask_size) float32 targets; zeros where `matched_gt_index < 0`.

    Raises:
        ValueError: `mask_size` is not a positive int.
    """
    if not isinstance(mask_size, int) or mask_size < 1:
        raise ValueError(f"mask_size={mask_size!r}: expected a positive int")
    masks = tf.cast(tf.convert_to_tensor(instance_masks), tf.float32)
    index = tf.cast(matched_gt_index, tf.int32)
    rois = tf.cast(rois, tf.float32)
    shape = tf.shape(masks)
    # Without any ground-truth row (G = 0) there is nothing to crop: one zero mask stands in.
    masks = tf.cond(
        shape[1] > 0, lambda: masks, lambda: tf.zeros([shape[0], 1, shape[2], shape[3]])
    )
    shape = tf.shape(masks)
    batch, count, height, width = shape[0], shape[1], shape[2], shape[3]
    num_rois = tf.shape(index)[1]
    has_target = index >= 0
    # One crop per RoI out of the (B * G) edge-padded masks.
    image_index = tf.range(batch)[:, None] * count + tf.clip_by_value(index, 0, count - 1)
    boxes = roi_sample_boxes(rois, mask_size, height, width)
    padded = tf.pad(
        tf.reshape(masks, [batch * count, height, width, 1]),
        [[0, 0], [1, 1], [1, 1], [0, 0]],
        mode="SYMMETRIC",
    )
    crops = tf.image.crop_and_resize(
        padded,
        tf.reshape(boxes, [-1, 4]),
        tf.reshape(image_index, [-1]),
        [mask_size, mask_size],
        method="bilinear",
        extrapolation_value=0.0,
    )
    crops = tf.reshape(crops, [batch, num_rois, mask_size, mask_size])
    if threshold is not None:
        crops = tf.cast(crops >= threshold, tf.float32)
    return tf.where(has_target[:, :, None, None], crops, 0.0)
