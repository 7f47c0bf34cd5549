"""Fast R-CNN's training RoI sampling and targets, in graph and vectorised over the batch.

Per image (Fast R-CNN, Sec. 2.3, and its `roi_data_layer`): the ground-truth boxes are added
to the proposals; a candidate is foreground when its best IoU with a ground-truth box is
>= 0.5 and background when it lies in [0.1, 0.5). At most `round(0.25 * rois_per_image)`
foreground RoIs are drawn at random, the rest of the `rois_per_image` slots are filled with
random background RoIs. When there are not enough candidates, the remaining slots are padding
(label -1), so the shapes stay fixed. 64 RoIs per image with 2 images per batch gives the
paper's R = 128.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.detection.boxes import BOX_STDS, encode_boxes, iou_matrix

IGNORE_LABEL = -1


def random_true_indices(mask: tf.Tensor, k: int, seed: tf.Tensor | None, salt: int):
    """Indices of up to `k` random True entries of each row of `mask`, without repetition.

    Args:
        mask: (B, N) bool, with N >= k.
        k: Slots per row.
        seed: None (stateful random) or an int pair for `tf.random.stateless_uniform`.
        salt: Added to the second seed word, so that draws of one step differ.

    Returns:
        `(indices, ok)`: (B, k) int32 indices into N, and (B, k) bool telling which slots
        hold a True entry (a row with fewer than k True entries has trailing False slots).
    """
    shape = tf.shape(mask)
    if seed is None:
        noise = tf.random.uniform(shape)
    else:
        noise = tf.random.stateless_uniform(shape, seed=tf.cast(seed, tf.int32) + [0, salt])
    priority = tf.where(mask, noise, -1.0)
    values, indices = tf.math.top_k(priority, k=k)
    return indices, values >= 0.0


def sample_rois(
    proposals,
    num_proposals,
    gt_boxes,
    gt_labels,
    num_boxes,
    gt_difficult=None,
    rois_per_image: int = 64,
    fg_fraction: float = 0.25,
    fg_iou_threshold: float = 0.5,
    bg_iou_range: Sequence[float] = (0.1, 0.5),
    box_stds: Sequence[float] = BOX_STDS,
    use_difficult: bool = False,
    seed=None,
) -> dict[str, tf.Tensor]:
    """Samples the training RoIs of a batch and computes their labels and box targets.

    Args:
        proposals: (B, P, 4) float proposals, yxyx pixels; rows >= `num_proposals` are padding.
        num_proposals: (B,) int number of valid proposals per image.
        gt_boxes: (B, G, 4) ground-truth boxes, yxyx pixels; rows >= `num_boxes` are padding.
        gt_labels: (B, G) int 1-based class ids (0 = padding).
        num_boxes: (B,) int number of valid ground-truth boxes.
        gt_difficult: Optional (B, G) bool VOC "difficult" flags.
        rois_per_image: RoIs kept per image (64, i.e. 128 per 2-image batch).
        fg_fraction: Largest fraction of foreground RoIs (0.25).
        fg_iou_threshold: Foreground when the best IoU is >= this (0.5).
        bg_iou_range: Background when the best IoU is in `[low, high)` (0.1, 0.5).
        box_stds: Standard deviations normalising the box targets.
        use_difficult: Keep difficult boxes as ground truth (Fast R-CNN drops them).
        seed: Optional int pair for reproducible (stateless) sampling; random otherwise.

    Returns:
        A dict with
        - `"rois"`: (B, rois_per_image, 4) sampled boxes (zeros in padding slots);
        - `"labels"`: (B, rois_per_image) int32, class id for foreground, 0 for background,
          -1 for padding slots;
        - `"box_targets"`: (B, rois_per_image, 4) normalised `(dx, dy, dw, dh)` targets
          towards the matched ground truth for foreground RoIs, zeros elsewhere;
        - `"matched_gt"`: (B, rois_per_image) int32 row of `gt_boxes` each foreground RoI
          is matched to (what Mask R-CNN crops its mask target from); -1 elsewhere.

    Raises:
        ValueError: An argument is out of range.
    """
    if not isinstance(rois_per_image, int) or rois_per_image < 1:
        raise ValueError(f"rois_per_image={rois_per_image!r}: expected a positive int")
    if not 0.0 <= fg_fraction <= 1.0:
        raise ValueError(f"fg_fraction={fg_fraction!r}: expected a number in [0, 1]")
    low, high = bg_iou_range
    if not 0.0 <= low <= high:
        raise ValueError(f"bg_iou_range={bg_iou_range!r}: expected (low, high), 0 <= low <= high")
    fg_per_image = int(round(fg_fraction * rois_per_image))

    proposals = tf.cast(proposals, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    batch = tf.shape(proposals)[0]

    # One always-invalid ground-truth row so that argmax is defined when G == 0.
    gt_boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4])], axis=1)
    gt_labels = tf.concat([gt_labels, tf.zeros([batch, 1], tf.int32)], axis=1)
    slots = tf.range(tf.shape(gt_boxes)[1])[None, :]
    gt_valid = (slots < tf.cast(num_boxes, tf.int32)[:, None]) & (gt_labels > 0)
    if gt_difficult is not None and not use_difficult:
        difficult = tf.cast(gt_difficult, tf.bool)
        difficult = tf.concat([difficult, tf.zeros([batch, 1], tf.bool)], axis=1)
        gt_valid &= ~difficult

    proposal_valid = (
        tf.range(tf.shape(proposals)[1])[None, :] < tf.cast(num_proposals, tf.int32)[:, None]
    )
    candidates = tf.concat([gt_boxes, proposals], axis=1)
    valid = tf.concat([gt_valid, proposal_valid], axis=1)
    # top_k needs at least rois_per_image candidates.
    missing = tf.maximum(rois_per_image - tf.shape(candidates)[1], 0)
    candidates = tf.pad(candidates, [[0, 0], [0, missing], [0, 0]])
    valid = tf.pad(valid, [[0, 0], [0, missing]])

    iou = iou_matrix(candidates, gt_boxes)  # (B, N, G+1)
    iou = tf.where(gt_valid[:, None, :], iou, -1.0)
    best_iou = tf.reduce_max(iou, axis=-1)
    best_gt = tf.argmax(iou, axis=-1, output_type=tf.int32)
    foreground = valid & (best_iou >= fg_iou_threshold)
    background = valid & (best_iou >= low) & (best_iou < high)

    fg_index, fg_ok = random_true_indices(foreground, fg_per_image, seed, 1)
    bg_index, bg_ok = random_true_indices(background, rois_per_image, seed, 2)
    num_fg = tf.reduce_sum(tf.cast(fg_ok, tf.int32), axis=1, keepdims=True)
    bg_ok &= tf.range(rois_per_image)[None, :] < rois_per_image - num_fg

    # Foreground first, then background; move the used slots to the front.
    index = tf.concat([fg_index, bg_index], axis=1)
    used = tf.concat([fg_ok, bg_ok], axis=1)
    order = tf.argsort(tf.cast(~used, tf.int32), axis=1, stable=True)[:, :rois_per_image]
    index = tf.gather(index, order, batch_dims=1)
    used = tf.gather(used, order, batch_dims=1)

    rois = tf.gather(candidates, index, batch_dims=1)
    is_fg = tf.gather(foreground, index, batch_dims=1) & used
    matched = tf.gather(best_gt, index, batch_dims=1)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    matched_labels = tf.gather(gt_labels, matched, batch_dims=1)

    labels = tf.where(is_fg, matched_labels, 0)
    labels = tf.where(used, labels, IGNORE_LABEL)
    targets = encode_boxes(matched_boxes, rois, box_stds)
    targets = tf.where(is_fg[..., None], targets, 0.0)
    rois = tf.where(used[..., None], rois, 0.0)
    matched_gt = tf.where(is_fg, matched, IGNORE_LABEL)
    return {"rois": rois, "labels": labels, "box_targets": targets, "matched_gt": matched_gt}
