"""How a serving signature runs the model on a batch of images of different sizes.

- `"per_image"` (default): a batch whose images all have the same size goes through the model
  in one call; a batch of mixed sizes is run one image at a time, so every image gets exactly
  the prediction it would get alone, whatever other requests the server batched it with.
- `"pad"`: images are always padded to the batch's largest and run in one call (faster for
  mixed batches; near the bottom/right border of a smaller image the prediction can differ
  slightly from a lone call, as the network sees mean-pixel context there).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

BATCH_MODES = ("per_image", "pad")


def check_batch_mode(batch_mode: str) -> None:
    """Raises ValueError for an unknown batch mode."""
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode={batch_mode!r}: expected one of {BATCH_MODES}")


def run_batch(
    sizes: tf.Tensor,
    batch_mode: str,
    batched: Callable[[], object],
    per_image: Callable[[], object],
):
    """Runs `batched()` when the batch is uniform (or in "pad" mode), else `per_image()`.

    Args:
        sizes: (N, 2) sizes of the images that decide whether the batch is uniform.
        batch_mode: One of `BATCH_MODES`.
        batched: Builds the outputs with one model call on the padded batch.
        per_image: Builds the same outputs one image at a time.

    Returns:
        The outputs of the branch taken.
    """
    check_batch_mode(batch_mode)
    if batch_mode == "pad":
        return batched()
    uniform = tf.reduce_all(tf.equal(sizes, sizes[:1]))
    return tf.cond(uniform, batched, per_image)
