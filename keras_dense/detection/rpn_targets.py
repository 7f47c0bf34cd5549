"""Training targets and loss of the Region Proposal Network (Faster R-CNN, Sec. 3.1.2-3.1.3).

In graph and vectorised over the batch and the anchors (no loop over images, anchors or
boxes). Per image, following the paper and py-faster-rcnn's `anchor_target_layer`:

1. Anchors crossing the image border (any corner outside `[-allowed_border, height - 1 +
   allowed_border]` rows or the like for columns, against the image's valid `image_shape`)
   are ignored: label -1, no loss. They also take no part in step 3.
2. An anchor whose highest IoU with a ground-truth box is below `negative_iou` (0.3) is
   negative (0).
3. For every ground-truth box, the anchors with the highest IoU with it are positive (1),
   even below `positive_iou`. Ties count: every anchor achieving that maximum is positive, as
   py-faster-rcnn's `np.where(overlaps == gt_max_overlaps)` does. Unlike py-faster-rcnn, a
   box that overlaps no anchor at all (maximum IoU 0) makes no anchor positive.
   This rule overrides step 2 (py-faster-rcnn's `RPN_CLOBBER_POSITIVES = False`).
4. An anchor with IoU >= `positive_iou` (0.7) with some box is positive.
5. `batch_size_per_image` (256) anchors are sampled: at most `round(positive_fraction *
   256)` (128) random positives, then random negatives fill the remaining slots (more than
   128 when positives are few). Anchors not drawn get label -1.

Each anchor is matched to the box it overlaps most (also for positives from step 3, as in
py-faster-rcnn); box targets `(dx, dy, dw, dh)` are `encode_boxes(matched box, anchor,
box_stds)`, zero for anything but sampled positives. py-faster-rcnn does not normalise RPN
targets, hence `box_stds = (1, 1, 1, 1)` by default.

Ground truth comes as the detection pipeline gives it (`keras_dense.data.detection_dataset`):
`boxes` (B, G, 4) yxyx in pixels of the resized image (the same pixels as the anchors; the
records store normalised boxes, the pipeline scales them), padded, with `num_boxes` (B,).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.detection.boxes import encode_boxes, iou_matrix
from keras_dense.detection.losses import smooth_l1
from keras_dense.detection.sampling import IGNORE_LABEL, random_true_indices

RPN_BOX_STDS: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
# py-faster-rcnn's rpn_loss_bbox: SmoothL1Loss with sigma 3 (transition at |x| = 1/9).
RPN_SMOOTH_L1_SIGMA = 3.0


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r}: expected a number in [0, 1]")
    return float(value)


def inside_image(anchors, image_shape, allowed_border: float = 0.0) -> tf.Tensor:
    """Which anchors lie inside each image (py-faster-rcnn's `inds_inside`).

    Args:
        anchors: (N, 4) yxyx inclusive pixels.
        image_shape: (B, 2) valid (height, width) of each image.
        allowed_border: Pixels an anchor may extend past the border (0).

    Returns:
        (B, N) bool: `ymin >= -border`, `xmin >= -border`, `ymax < height + border` and
        `xmax < width + border`.
    """
    anchors = tf.cast(anchors, tf.float32)
    shape = tf.cast(image_shape, tf.float32)[:, None, :]  # (B, 1, 2)
    border = float(allowed_border)
    ymin, xmin, ymax, xmax = tf.unstack(anchors[None], 4, axis=-1)
    return (
        (ymin >= -border)
        & (xmin >= -border)
        & (ymax < shape[..., 0] + border)
        & (xmax < shape[..., 1] + border)
    )


def match_anchors(
    anchors,
    gt_boxes,
    num_boxes,
    image_shape,
    gt_valid=None,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    allowed_border: float = 0.0,
) -> dict[str, tf.Tensor]:
    """Labels every anchor positive, negative or ignored (steps 1-4 of the module docstring).

    Args:
        anchors: (N, 4) anchors, yxyx inclusive pixels (`generate_anchors`).
        gt_boxes: (B, G, 4) ground-truth boxes in the same pixels; rows >= `num_boxes` are
            padding.
        num_boxes: (B,) int number of valid boxes per image.
        image_shape: (B, 2) valid (height, width) of each image, for the border test.
        gt_valid: Optional (B, G) bool: boxes to use (e.g. `labels > 0 & ~difficult`); the
            rows below `num_boxes` by default.
        positive_iou: IoU at or above which an anchor is positive (0.7).
        negative_iou: Highest IoU below which an anchor is negative (0.3).
        allowed_border: Pixels an anchor may extend past the image border (0).

    Returns:
        A dict with `"labels"` (B, N) int32 (1 positive, 0 negative, -1 ignored),
        `"matched_boxes"` (B, N) int32 index of the box each anchor overlaps most (0 when the
        image has no box), `"max_iou"` (B, N) float32 that IoU (-1 when the image has no box).

    Raises:
        ValueError: Thresholds out of range.
    """
    positive_iou = _check_fraction(positive_iou, "positive_iou")
    negative_iou = _check_fraction(negative_iou, "negative_iou")
    if negative_iou > positive_iou:
        raise ValueError(
            f"negative_iou={negative_iou!r}: expected at most positive_iou={positive_iou!r}"
        )
    anchors = tf.cast(anchors, tf.float32)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    batch = tf.shape(gt_boxes)[0]
    slots = tf.range(tf.shape(gt_boxes)[1])[None, :]
    valid = slots < tf.cast(num_boxes, tf.int32)[:, None]
    if gt_valid is not None:
        valid &= tf.cast(gt_valid, tf.bool)
    # One always-invalid box so that the maxima over boxes exist when G == 0.
    gt_boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4])], axis=1)
    valid = tf.concat([valid, tf.zeros([batch, 1], tf.bool)], axis=1)

    inside = inside_image(anchors, image_shape, allowed_border)  # (B, N)
    iou = iou_matrix(anchors[None], gt_boxes)  # (B, N, G + 1)
    iou = tf.where(valid[:, None, :], iou, -1.0)
    max_iou = tf.reduce_max(iou, axis=-1)
    matched = tf.argmax(iou, axis=-1, output_type=tf.int32)

    # Best inside anchor(s) of each box; iou values are compared with themselves, exactly.
    inside_iou = tf.where(inside[..., None], iou, -1.0)
    best_of_box = tf.reduce_max(inside_iou, axis=1, keepdims=True)  # (B, 1, G + 1)
    is_best = (inside_iou == best_of_box) & (best_of_box > 0.0) & valid[:, None, :]
    positive = tf.reduce_any(is_best, axis=-1) | (max_iou >= positive_iou)

    labels = tf.where(max_iou < negative_iou, 0, IGNORE_LABEL)
    labels = tf.where(positive, 1, labels)
    labels = tf.where(inside, labels, IGNORE_LABEL)
    return {"labels": labels, "matched_boxes": matched, "max_iou": max_iou}


def _selected(index: tf.Tensor, ok: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """(B, count) bool: True at the `index` slots marked `ok` (indices unique per row)."""
    batch = tf.shape(index)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(index))
    scatter = tf.stack([rows, index], axis=-1)
    hits = tf.scatter_nd(scatter, tf.cast(ok, tf.int32), tf.stack([batch, count]))
    return hits > 0


def sample_anchors(
    labels,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    seed=None,
) -> tf.Tensor:
    """Keeps a random minibatch of labelled anchors per image (step 5 of the module docstring).

    Args:
        labels: (B, N) int labels of `match_anchors` (1, 0, -1).
        batch_size_per_image: Anchors kept per image (256).
        positive_fraction: Largest share of positives (0.5).
        seed: Optional int pair for reproducible, stateless sampling; random otherwise.

    Returns:
        (B, N) int32 labels where only the sampled anchors keep 1 or 0, all others are -1.

    Raises:
        ValueError: Bad `batch_size_per_image` or `positive_fraction`.
    """
    if (
        isinstance(batch_size_per_image, bool)
        or not isinstance(batch_size_per_image, int)
        or batch_size_per_image < 1
    ):
        raise ValueError(f"batch_size_per_image={batch_size_per_image!r}: expected a positive int")
    positive_fraction = _check_fraction(positive_fraction, "positive_fraction")
    max_positives = int(round(positive_fraction * batch_size_per_image))
    labels = tf.cast(labels, tf.int32)
    count = tf.shape(labels)[1]
    # top_k needs at least k columns; padding columns are never True.
    missing = tf.maximum(batch_size_per_image - count, 0)
    positive = tf.pad(labels == 1, [[0, 0], [0, missing]])
    negative = tf.pad(labels == 0, [[0, 0], [0, missing]])
    padded = count + missing

    keep_pos = tf.zeros_like(positive)
    num_pos = tf.zeros([tf.shape(labels)[0], 1], tf.int32)
    if max_positives > 0:
        pos_index, pos_ok = random_true_indices(positive, max_positives, seed, 11)
        keep_pos = _selected(pos_index, pos_ok, padded)
        num_pos = tf.reduce_sum(tf.cast(pos_ok, tf.int32), axis=1, keepdims=True)
    neg_index, neg_ok = random_true_indices(negative, batch_size_per_image, seed, 12)
    neg_ok &= tf.range(batch_size_per_image)[None, :] < batch_size_per_image - num_pos
    keep_neg = _selected(neg_index, neg_ok, padded)

    sampled = tf.where(keep_pos, 1, tf.where(keep_neg, 0, IGNORE_LABEL))
    return sampled[:, :count]


def rpn_targets(
    anchors,
    gt_boxes,
    num_boxes,
    image_shape,
    gt_valid=None,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    allowed_border: float = 0.0,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    box_stds: Sequence[float] = RPN_BOX_STDS,
    seed=None,
) -> dict[str, tf.Tensor]:
    """RPN training labels and box targets of a batch (the whole module docstring).

    Args:
        anchors: (N, 4) anchors, yxyx inclusive pixels, shared by the batch.
        gt_boxes: (B, G, 4) padded ground-truth boxes in the same pixels.
        num_boxes: (B,) int number of valid boxes.
        image_shape: (B, 2) valid (height, width) of each (padded) image.
        gt_valid: Optional (B, G) bool mask of the boxes to use.
        positive_iou: Positive at IoU >= this (0.7).
        negative_iou: Negative below this (0.3).
        allowed_border: Pixels an anchor may cross the border by (0: crossing anchors are
            ignored, as in the paper's training).
        batch_size_per_image: Sampled anchors per image (256).
        positive_fraction: Largest share of positives among them (0.5).
        box_stds: Standard deviations dividing the targets ((1, 1, 1, 1): none).
        seed: Optional int pair for reproducible sampling.

    Returns:
        A dict with `"labels"` (B, N) int32 (1 / 0 for sampled positives / negatives, -1
        otherwise), `"box_targets"` (B, N, 4) float32 `(dx, dy, dw, dh)` (zero except at
        sampled positives) and `"matched_boxes"` (B, N) int32.

    Raises:
        ValueError: An argument is out of range.
    """
    if len(box_stds) != 4:
        raise ValueError(f"box_stds={box_stds!r}: expected 4 numbers")
    matched = match_anchors(
        anchors,
        gt_boxes,
        num_boxes,
        image_shape,
        gt_valid=gt_valid,
        positive_iou=positive_iou,
        negative_iou=negative_iou,
        allowed_border=allowed_border,
    )
    labels = sample_anchors(matched["labels"], batch_size_per_image, positive_fraction, seed)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    gt_boxes = tf.concat([gt_boxes, tf.zeros_like(gt_boxes[:, :1])], axis=1)  # as in matching
    boxes = tf.gather(gt_boxes, matched["matched_boxes"], batch_dims=1)  # (B, N, 4)
    targets = encode_boxes(boxes, tf.cast(anchors, tf.float32)[None], box_stds)
    targets = tf.where((labels == 1)[..., None], targets, 0.0)
    return {
        "labels": labels,
        "box_targets": targets,
        "matched_boxes": matched["matched_boxes"],
    }


def rpn_loss(
    labels,
    box_targets,
    objectness,
    box_deltas,
    box_loss_weight: float = 1.0,
    sigma: float = RPN_SMOOTH_L1_SIGMA,
) -> dict[str, tf.Tensor]:
    """RPN loss `L = L_cls + lambda L_reg` over the sampled anchors of a batch.

    Objectness is one logit per anchor with a sigmoid (py-faster-rcnn's two-way softmax over
    (background, object) logits is the same model: only their difference matters). The
    normalisation is py-faster-rcnn's: the log loss is averaged over the sampled anchors (256
    per image, `N_cls`), and the smooth L1 (`sigma` 3) of the positives' 4 deltas is summed
    and divided by the same sampled count (its `bbox_outside_weights = 1 / num_examples`).
    The paper's `N_reg` ~ 2400 with lambda 10 weighs the two terms about equally, as this
    does with lambda 1. With B images the counts are summed over the batch.

    Args:
        labels: (B, N) int from `rpn_targets` (1, 0, or -1 = not sampled).
        box_targets: (B, N, 4) `(dx, dy, dw, dh)` targets.
        objectness: (B, N) logits, or (B, H, W, A) (flattened in anchor order).
        box_deltas: (B, N, 4) predicted deltas, or (B, H, W, 4A).
        box_loss_weight: lambda (1).
        sigma: Smooth-L1 sharpness (3, py-faster-rcnn's RPN).

    Returns:
        A dict with scalar `"loss"`, `"cls_loss"` and `"box_loss"` (unweighted).
    """
    labels = tf.cast(labels, tf.int32)
    batch = tf.shape(labels)[0]
    logits = tf.reshape(tf.cast(objectness, tf.float32), [batch, -1])
    deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [batch, -1, 4])
    sampled = labels >= 0
    count = tf.maximum(tf.reduce_sum(tf.cast(sampled, tf.float32)), 1.0)
    log_loss = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels == 1, tf.float32), logits=logits
    )
    cls_loss = tf.reduce_sum(tf.where(sampled, log_loss, 0.0)) / count
    error = tf.reduce_sum(smooth_l1(deltas - tf.cast(box_targets, tf.float32), sigma), axis=-1)
    box_loss = tf.reduce_sum(tf.where(labels == 1, error, 0.0)) / count
    return {
        "loss": cls_loss + box_loss_weight * box_loss,
        "cls_loss": cls_loss,
        "box_loss": box_loss,
    }
