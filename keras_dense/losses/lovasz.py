"""Lovász-softmax loss (Berman et al. 2018) over the whole batch."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.losses.pixels import (
    MaskedPixelLoss,
    class_weight_vector,
    flat_pixels,
    mean_over_present,
)


def lovasz_softmax_per_class(probs, labels, valid):
    """Lovász extension of the Jaccard loss of every class, all classes at once.

    For class c the errors `e_i = |g_ic - p_ic|` of the counted pixels are sorted in
    descending order; with the foreground indicator `g` in that order, the Jaccard loss of the
    top-i prefix is `J_i = 1 - (G - cumsum(g)_i) / (G + cumsum(1 - g)_i)` (G = sum(g)), and
    the loss is `sum_i e_(i) * (J_i - J_{i-1})` (J_0 = 0). Uncounted pixels get error -1, so
    they sort after every counted pixel and leave the prefixes unchanged, and their terms are
    dropped (zero gradient).

    Args:
        probs: (N, K) probabilities.
        labels: (N,) int32 labels (any value where `valid` is 0).
        valid: (N,) float32, 1 for counted pixels.

    Returns:
        `(losses (K,), present (K,) float32: class c has a counted pixel)`.
    """
    num_classes = probs.shape[-1]
    truth = tf.transpose(tf.one_hot(labels, num_classes) * valid[:, None])  # (K, N)
    errors = tf.abs(truth - tf.transpose(probs))
    errors = tf.where(valid[None, :] > 0, errors, -1.0)
    order = tf.argsort(errors, axis=-1, direction="DESCENDING", stable=True)
    sorted_errors = tf.gather(errors, order, batch_dims=1)
    sorted_truth = tf.gather(truth, order, batch_dims=1)
    sorted_valid = tf.gather(tf.broadcast_to(valid[None, :], tf.shape(errors)), order, batch_dims=1)
    foreground = tf.reduce_sum(sorted_truth, axis=-1, keepdims=True)
    intersection = foreground - tf.cumsum(sorted_truth, axis=-1)
    union = foreground + tf.cumsum((1.0 - sorted_truth) * sorted_valid, axis=-1)
    jaccard = 1.0 - tf.math.divide_no_nan(intersection, union)
    gradient = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    losses = tf.reduce_sum(sorted_errors * sorted_valid * gradient, axis=-1)
    present = tf.cast(foreground[:, 0] > 0, tf.float32)
    return losses, present


@keras.saving.register_keras_serializable(package="keras_dense")
class LovaszSoftmaxLoss(MaskedPixelLoss):
    """Lovász-softmax loss (Berman, Triki and Blaschko, CVPR 2018) of a whole batch.

    The pixels of the batch are pooled (the paper's non-per-image variant); for each class the
    Lovász extension of its Jaccard loss is evaluated on the softmax errors (see
    `lovasz_softmax_per_class`), and the loss is their mean over the classes present in
    `y_true` (weighted by `class_weights` when given). Pixels whose label is `ignore_label` or
    outside `[0, K)` do not count and get zero gradient; a batch without counted pixels has
    loss 0. Sorting is vectorised over classes and pixels (`tf.argsort`).

    Takes the arguments of `MaskedPixelLoss` (`ignore_label`, `class_weights` for the mean over
    the classes, `from_logits`, `name`, Keras `Loss` arguments).
    """

    default_name = "lovasz_softmax_loss"

    def call(self, y_true, y_pred):
        """The batch's Lovász-softmax loss (a scalar)."""
        num_classes = y_pred.shape[-1]
        _, probs, labels, valid = flat_pixels(y_true, y_pred, self.ignore_label, self.from_logits)
        losses, present = lovasz_softmax_per_class(probs, labels, valid)
        weights = class_weight_vector(self.class_weights, num_classes)
        return mean_over_present(losses, present, weights)
