"""Dense-CRF post-processing of a probability map (DeepLab's CRF step), NumPy in and out."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_dense.crf.mean_field import build_kernels, mean_field, potts_pairwise
from keras_dense.ops.permutohedral import check_implementation, resolve_implementation
from keras_dense.ops.potts_mean_field import potts_mean_field

# Probabilities are clipped here before the logarithm (unary = -log p).
MIN_PROBABILITY = 1e-8


def _check_positive(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or not np.isfinite(number):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def dense_crf(
    probabilities: np.ndarray,
    image: np.ndarray,
    theta_alpha: float = 80.0,
    theta_beta: float = 13.0,
    theta_gamma: float = 3.0,
    spatial_weight: float = 3.0,
    bilateral_weight: float = 10.0,
    num_iterations: int = 10,
    implementation: str = "auto",
) -> np.ndarray:
    """Refines class probabilities with a fully connected CRF (mean field, Potts model).

    The energy has the unary `-log p` and two Gaussian edge potentials with Potts
    compatibility: a spatial kernel (`theta_gamma`, weight `spatial_weight`) and a bilateral
    kernel (`theta_alpha` in pixels, `theta_beta` in colour levels, weight
    `bilateral_weight`). Each kernel's filtering is normalised by its filtering of an all-ones
    image (the reference implementation's `NORMALIZE_AFTER`). The defaults are DeepLab's.
    `keras_dense.layers.CrfRnn` runs the same mean field with trainable matrices.

    Args:
        probabilities: (H, W, C) class probabilities (e.g. a softmax output), clipped to
            `MIN_PROBABILITY` before the logarithm.
        image: (H, W, 3) uint8 RGB image (any number of channels is accepted; values are on the
            0-255 scale).
        theta_alpha: Bilateral kernel spatial standard deviation, pixels.
        theta_beta: Bilateral kernel colour standard deviation, intensity levels.
        theta_gamma: Spatial kernel standard deviation, pixels.
        spatial_weight: Weight of the spatial kernel.
        bilateral_weight: Weight of the bilateral kernel.
        num_iterations: Mean-field iterations (0 returns the input distribution).
        implementation: `"auto"` (custom op when available), `"custom_op"` or `"tf"`. The
            custom op runs every iteration in one kernel (`keras_dense.ops.potts_mean_field`);
            the twin runs `keras_dense.crf.mean_field.mean_field` (same result to 1e-4).

    Returns:
        (H, W, C) float32 refined probabilities (each pixel sums to 1).

    Raises:
        ValueError: Bad shapes or parameters.
    """
    probabilities = np.asarray(probabilities)
    image = np.asarray(image)
    if probabilities.ndim != 3 or min(probabilities.shape) < 1:
        raise ValueError(f"probabilities must have shape (H, W, C), got {probabilities.shape}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[:2] != probabilities.shape[:2]:
        raise ValueError(
            f"image must have shape (H, W, 3) matching probabilities {probabilities.shape[:2]}, "
            f"got {image.shape}"
        )
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"probabilities must be floating point, got {probabilities.dtype}")
    thetas = [
        _check_positive(name, value)
        for name, value in (
            ("theta_alpha", theta_alpha),
            ("theta_beta", theta_beta),
            ("theta_gamma", theta_gamma),
        )
    ]
    for name, value in (("spatial_weight", spatial_weight), ("bilateral_weight", bilateral_weight)):
        if not np.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if isinstance(num_iterations, bool) or int(num_iterations) != num_iterations:
        raise ValueError(f"num_iterations must be a non-negative integer, got {num_iterations!r}")
    if num_iterations < 0:
        raise ValueError(f"num_iterations must be a non-negative integer, got {num_iterations!r}")
    check_implementation(implementation)
    implementation = resolve_implementation(implementation)

    height, width, classes = probabilities.shape
    unary = np.log(np.maximum(probabilities.astype(np.float32), MIN_PROBABILITY))
    refined = _refine(
        tf.constant(unary.reshape(1, height * width, classes)),
        tf.constant(image[None].astype(np.float32)),
        *thetas,
        float(spatial_weight),
        float(bilateral_weight),
        int(num_iterations),
        implementation,
    )
    return refined.numpy().reshape(height, width, classes)


@tf.function(reduce_retracing=True)
def _refine(
    unary,
    image,
    theta_alpha,
    theta_beta,
    theta_gamma,
    spatial_weight,
    bilateral_weight,
    num_iterations,
    implementation,
):
    # One graph per parameter set (Python values).
    lattices = build_kernels(image, theta_alpha, theta_beta, theta_gamma, implementation)
    if implementation == "custom_op":
        # Every iteration in one kernel (no TF op per softmax, product or sum).
        return potts_mean_field(unary, lattices, [spatial_weight, bilateral_weight], num_iterations)
    # The twin: the two kernels' filters run concurrently.
    logits = mean_field(
        unary,
        lattices,
        potts_pairwise,
        num_iterations,
        implementation,
        kernel_scales=[-spatial_weight, -bilateral_weight],
    )
    return tf.nn.softmax(logits, axis=-1)
