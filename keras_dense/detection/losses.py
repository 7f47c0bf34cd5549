"""Fast R-CNN's multi-task loss: log loss plus smooth-L1 box regression."""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(x, sigma: float = 1.0):
    """Fast R-CNN's smooth L1: `0.5 (sigma x)^2` if `|x| < 1 / sigma^2`, else `|x| - 0.5 / sigma^2`.

    Args:
        x: Tensor of differences.
        sigma: Transition sharpness (1 in Fast R-CNN).

    Returns:
        Element-wise loss, same shape as `x`.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    s2 = sigma * sigma
    ax = tf.abs(x)
    return tf.where(ax < 1.0 / s2, 0.5 * s2 * x * x, ax - 0.5 / s2)


def fast_rcnn_loss(
    labels, box_targets, cls_score, bbox_pred, box_loss_weight: float = 1.0
) -> dict[str, tf.Tensor]:
    """Fast R-CNN loss `L = L_cls + lambda * L_loc` over the sampled RoIs of a batch.

    Normalisation follows the Caffe layers of Fast R-CNN: `SoftmaxWithLoss` averages the log
    loss over the non-ignored RoIs, and `SmoothL1Loss` sums the smooth-L1 of the foreground
    RoIs' true-class outputs (4 per RoI) and divides by the number of RoIs in the batch
    (foreground and background, i.e. 128 for a full 2-image batch), not by the number of
    foreground RoIs. Padding slots (label -1) count in neither.

    Args:
        labels: (B, R) int, class id (0 = background, -1 = padding slot).
        box_targets: (B, R, 4) normalised `(dx, dy, dw, dh)` targets (used where label > 0).
        cls_score: (B, R, K + 1) logits.
        bbox_pred: (B, R, 4 (K + 1)) predicted deltas, 4 per class, class-major.
        box_loss_weight: lambda (1 in the paper).

    Returns:
        A dict with scalar `"loss"`, `"cls_loss"` and `"box_loss"` (unweighted).
    """
    labels = tf.cast(labels, tf.int32)
    cls_score = tf.cast(cls_score, tf.float32)
    bbox_pred = tf.cast(bbox_pred, tf.float32)
    valid = labels >= 0
    count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
    safe_labels = tf.maximum(labels, 0)

    log_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=cls_score)
    cls_loss = tf.reduce_sum(tf.where(valid, log_loss, 0.0)) / count

    shape = tf.shape(bbox_pred)
    per_class = tf.reshape(bbox_pred, tf.concat([shape[:-1], [-1, 4]], axis=0))
    true_class = tf.gather(per_class, safe_labels, batch_dims=2)  # (B, R, 4)
    box_error = tf.reduce_sum(smooth_l1(true_class - tf.cast(box_targets, tf.float32)), -1)
    box_loss = tf.reduce_sum(tf.where(labels > 0, box_error, 0.0)) / count

    return {
        "loss": cls_loss + box_loss_weight * box_loss,
        "cls_loss": cls_loss,
        "box_loss": box_loss,
    }


def mask_loss(labels, mask_targets, mask_logits) -> tf.Tensor:
    """Mask R-CNN's `L_mask` (He et al. 2017, Sec. 3): per-pixel sigmoid cross-entropy.

    Only the mask of a RoI's ground-truth class contributes (no competition between classes),
    and only foreground RoIs count. The loss is the mean over every pixel of every foreground
    RoI's `m x m` target (Detectron's normalisation); 0 when the batch has no foreground RoI.

    Args:
        labels: (B, R) int class ids of the sampled RoIs (0 background, -1 padding).
        mask_targets: (B, R, m, m) targets in [0, 1] (`keras_dense.detection.mask_targets`).
        mask_logits: (B, R, m, m, K) mask head logits, channel `k - 1` for class `k`.

    Returns:
        The scalar loss, float32.
    """
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(mask_logits, tf.float32)
    targets = tf.cast(mask_targets, tf.float32)
    positive = labels > 0
    channel = tf.maximum(labels - 1, 0)
    # (B, R, m, m): the channel of each RoI's class, gathered without a one-hot product.
    chosen = tf.gather(tf.transpose(logits, [0, 1, 4, 2, 3]), channel, batch_dims=2)
    per_pixel = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=chosen)
    per_roi = tf.reduce_sum(per_pixel, axis=[2, 3])
    pixels = tf.cast(tf.shape(chosen)[2] * tf.shape(chosen)[3], tf.float32)
    count = tf.reduce_sum(tf.cast(positive, tf.float32)) * pixels
    return tf.reduce_sum(tf.where(positive, per_roi, 0.0)) / tf.maximum(count, 1.0)
