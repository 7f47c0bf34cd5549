"""Pasting Mask R-CNN's box-relative masks back into image coordinates, in the graph.

The mask head predicts an `M x M` grid per detection, over its box (see
`keras_dense.detection.mask_targets` for the grid's geometry: cell `j` of a box of height
`h` is centred at `ymin + (j + 0.5) h / M` in continuous pixels). Each image pixel takes the
bilinear interpolation of the grid at its centre, the grid being extended by one cell of zeros
on every side (as Detectron pads the mask before resizing it to the box): inside the box the
values are the interpolated probabilities, at the box edge a full mask reaches 0.5, and
half a cell outside the box everything is 0. Thresholding at 0.5 therefore keeps a full mask
exactly within its box.

All boxes of a batch are pasted by one `tf.image.crop_and_resize` (no loop over boxes): for
each mask it samples the padded grid along the affine map from image pixels to grid cells,
which crop_and_resize expresses as a normalised box, usually one extending far beyond the
grid (samples outside it are 0).
"""

from __future__ import annotations

import tensorflow as tf


def paste_boxes(boxes: tf.Tensor, mask_size: int, height, width) -> tf.Tensor:
    """Normalised crop boxes mapping image pixels onto the zero-padded `mask_size` grids.

    Args:
        boxes: (..., 4) float32 boxes, continuous pixels.
        mask_size: M, cells per side of the (unpadded) masks.
        height: Output image height H.
        width: Output image width W.

    Returns:
        (..., 4) boxes in the normalised coordinates of the `(M + 2) x (M + 2)` padded grid,
        such that crop_and_resize to `(H, W)` samples each pixel centre's grid position.
    """
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(boxes, tf.float32), 4, axis=-1)
    cells = float(mask_size)
    last_cell = cells + 1.0  # index of the last padded cell, the normaliser of crop_and_resize

    def axis(low, high, size):
        # Grid position of pixel centre p (continuous p + 0.5): (p + 0.5 - low) M / extent
        # - 0.5, plus 1 for the padding: slope * p + offset.
        slope = cells / tf.maximum(high - low, 1e-3)
        offset = (0.5 - low) * slope + 0.5
        end = offset + slope * (tf.cast(size, tf.float32) - 1.0)
        return offset / last_cell, end / last_cell

    y0, y1 = axis(ymin, ymax, height)
    x0, x1 = axis(xmin, xmax, width)
    return tf.stack([y0, x0, y1, x1], axis=-1)


def paste_masks(masks, boxes, image_shape) -> tf.Tensor:
    """Pastes per-box mask probabilities into full images.

    Args:
        masks: (B, N, M, M) mask probabilities over each box (e.g. the sigmoid of the mask
            head's channel of each detection's class).
        boxes: (B, N, 4) boxes `[ymin, xmin, ymax, xmax]`, continuous pixels of the output.
        image_shape: Output size `(H, W)`: two ints or an int tensor of shape (2,); any size.

    Returns:
        (B, N, H, W) float32 probabilities in image coordinates (0 outside each box's
        half-cell margin). Threshold at 0.5 for binary instance masks.
    """
    masks = tf.cast(tf.convert_to_tensor(masks), tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    size = tf.cast(tf.convert_to_tensor(image_shape), tf.int32)
    height, width = size[0], size[1]
    shape = tf.shape(masks)
    batch, count, mask_size = shape[0], shape[1], masks.shape[-1]
    if mask_size is None or masks.shape[-2] != mask_size:
        raise ValueError(f"masks: expected (B, N, M, M) with a static M, got {masks.shape}")
    grids = tf.reshape(masks, [-1, mask_size, mask_size, 1])
    padded = tf.pad(grids, [[0, 0], [1, 1], [1, 1], [0, 0]])
    crop = paste_boxes(tf.reshape(boxes, [-1, 4]), mask_size, height, width)
    total = batch * count
    pasted = tf.image.crop_and_resize(
        padded, crop, tf.range(total), size, method="bilinear", extrapolation_value=0.0
    )
    return tf.reshape(pasted, [batch, count, height, width])
