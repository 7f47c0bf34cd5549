"""Mean-field inference in a dense CRF with Gaussian edge potentials (Krähenbühl & Koltun 2011).

Shared by the trainable `keras_dense.layers.CrfRnn` (Zheng et al. 2015) and the
post-processing function `keras_dense.crf.dense_crf`. Two kernels over the pixels:

- spatial (smoothness): features `(x / theta_gamma, y / theta_gamma)`;
- bilateral (appearance): features `(x / theta_alpha, y / theta_alpha, r / theta_beta, ...)`
  from the raw 0-255 image,

each `k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2)`, filtered with the permutohedral lattice. One
lattice is built per image and kernel and reused by every iteration. Each iteration:

1. filter Q with each kernel;
2. divide by that kernel's filtering of an all-ones image (per-pixel normalisation, as
   Krähenbühl's `NORMALIZE_AFTER`);
3. - 4. turn the filtered marginals into the pairwise term (`pairwise_fn`: kernel weights,
   then label compatibility);
5. Q = softmax(U - pairwise).

The filter includes each pixel's own contribution (j = i), as the reference implementation
does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_dense.ops import permutohedral_tf
from keras_dense.ops.lattice import Lattice
from keras_dense.ops.permutohedral import (
    build_lattice,
    filter_lattice,
    prepare_filter,
    resolve_implementation,
)


def pixel_positions(height: tf.Tensor | int, width: tf.Tensor | int) -> tf.Tensor:
    """(height * width, 2) float32 `(x, y)` = (column, row) of each pixel, row-major."""
    rows, columns = tf.meshgrid(
        tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
    )
    return tf.reshape(tf.stack([columns, rows], axis=-1), [-1, 2])


def spatial_features(batch, height, width, theta_gamma: float) -> tf.Tensor:
    """(B, H*W, 2) features of the spatial kernel: pixel positions / theta_gamma."""
    positions = pixel_positions(height, width) / float(theta_gamma)
    return tf.tile(positions[None], tf.stack([batch, 1, 1]))


def bilateral_features(image: tf.Tensor, theta_alpha: float, theta_beta: float) -> tf.Tensor:
    """(B, H*W, 2 + K) features of the bilateral kernel.

    Args:
        image: (B, H, W, K) raw image, 0-255 scale (any K, 3 for RGB).
        theta_alpha: Spatial standard deviation in pixels.
        theta_beta: Colour standard deviation in intensity levels.

    Returns:
        `(x / theta_alpha, y / theta_alpha, c_1 / theta_beta, ..., c_K / theta_beta)`.
    """
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    positions = pixel_positions(shape[1], shape[2]) / float(theta_alpha)
    positions = tf.tile(positions[None], tf.stack([shape[0], 1, 1]))
    colours = tf.reshape(image, tf.stack([shape[0], -1, shape[3]])) / float(theta_beta)
    return tf.concat([positions, colours], axis=-1)


def kernel_features(
    image: tf.Tensor, theta_alpha: float, theta_beta: float, theta_gamma: float
) -> list[tf.Tensor]:
    """`[spatial, bilateral]` features of a batch of (B, H, W, K) raw 0-255 images."""
    shape = tf.shape(image)
    return [
        spatial_features(shape[0], shape[1], shape[2], theta_gamma),
        bilateral_features(image, theta_alpha, theta_beta),
    ]


def build_kernels(
    image: tf.Tensor,
    theta_alpha: float,
    theta_beta: float,
    theta_gamma: float,
    implementation: str = "auto",
) -> list[Lattice]:
    """Builds the spatial and the bilateral lattice of a batch of images.

    Args:
        image: (B, H, W, K) raw image, 0-255 scale.
        theta_alpha: Bilateral spatial standard deviation (pixels).
        theta_beta: Bilateral colour standard deviation (intensity levels).
        theta_gamma: Spatial kernel standard deviation (pixels).
        implementation: `"custom_op"` or `"tf"` (or `"auto"`).

    Returns:
        `[spatial_lattice, bilateral_lattice]`.
    """
    features = kernel_features(image, theta_alpha, theta_beta, theta_gamma)
    return [build_lattice(f, implementation) for f in features]


def iterate_mean_field(
    unary: tf.Tensor,
    filters: Sequence[Callable[[tf.Tensor, int], tf.Tensor]],
    pairwise_fn: Callable[[list[tf.Tensor], int], tf.Tensor],
    num_iterations: int,
) -> tf.Tensor:
    """Mean field with any per-step filters (`mean_field` runs it with Gaussian ones).

    Args:
        unary: (B, N, C) float32 logits U.
        filters: One `(q, step) -> normalised filtered q` per kernel (step: 0, 1, ...).
        pairwise_fn: `(filtered, step) -> (B, N, C)` pairwise term.
        num_iterations: Number of iterations; 0 returns `unary`.

    Returns:
        (B, N, C) logits whose softmax is the final Q.
    """
    logits = unary
    for step in range(int(num_iterations)):
        q = tf.nn.softmax(logits, axis=-1)
        logits = unary - pairwise_fn([filter_fn(q, step) for filter_fn in filters], step)
    return logits


def mean_field(
    unary: tf.Tensor,
    lattices: Sequence[Lattice],
    pairwise_fn: Callable[[list[tf.Tensor]], tf.Tensor],
    num_iterations: int,
    implementation: str = "auto",
    kernel_scales: Sequence[float] | None = None,
) -> tf.Tensor:
    """Runs mean-field iterations and returns the final logits U - pairwise.

    Args:
        unary: (B, N, C) float32 logits U (log-probabilities up to a per-pixel constant).
        lattices: One lattice per kernel, over the same B x N pixels.
        pairwise_fn: Maps the list of normalised filtered marginals (one (B, N, C) tensor per
            kernel, each times its `kernel_scales` entry) to the (B, N, C) pairwise term.
        num_iterations: Number of iterations; 0 returns `unary`.
        implementation: Filter implementation, `"custom_op"` or `"tf"` (or `"auto"`).
        kernel_scales: Optional constant per kernel, folded into the normalisation (saves a
            pass over the data per kernel and iteration); default 1.

    Returns:
        (B, N, C) logits whose softmax is the final Q.
    """
    scales = [1.0] * len(lattices) if kernel_scales is None else [float(s) for s in kernel_scales]
    implementation = resolve_implementation(implementation)
    # Built once, used by every iteration (and the backward pass).
    lattices = [prepare_filter(lattice, implementation) for lattice in lattices]
    shape = tf.shape(unary)
    ones = tf.ones(tf.stack([shape[0], shape[1], 1]), unary.dtype)
    inverse_norms = [
        scale / (filter_lattice(ones, lattice, implementation=implementation) + 1e-20)
        for lattice, scale in zip(lattices, scales)
    ]
    if implementation == "tf":
        # The twin folds each normalisation into its slice matrix: no pass to multiply.
        lattices = [
            permutohedral_tf.with_output_scale(lattice, inverse)
            for lattice, inverse in zip(lattices, inverse_norms)
        ]
        inverse_norms = [None] * len(lattices)

    def gaussian_filter(lattice, inverse):
        def filter_fn(q, step):
            values = filter_lattice(q, lattice, implementation=implementation)
            return values if inverse is None else values * inverse

        return filter_fn

    filters = [
        gaussian_filter(lattice, inverse) for lattice, inverse in zip(lattices, inverse_norms)
    ]
    return iterate_mean_field(
        unary, filters, lambda filtered, step: pairwise_fn(filtered), num_iterations
    )


def potts_pairwise(filtered: list[tf.Tensor]) -> tf.Tensor:
    """The pairwise term of Potts compatibility 1 - I with kernel weights w_m * I.

    Call `mean_field` with `kernel_scales = [-w_m]`: `filtered` then holds
    `-w_m * filtered_m`. The Potts term `sum_m w_m * sum_{l' != l} filtered_m[l']` equals
    `sum_m w_m - sum_m w_m * filtered_m[l]`, because Q sums to one at every pixel and the
    normalised filter maps ones to ones (`sum_{l'} filtered_m[l'] = 1`). The constant
    `sum_m w_m` does not change the softmax and is left out.

    Args:
        filtered: The kernels' normalised filtered marginals, each times `-w_m`.

    Returns:
        The pairwise term up to a constant: `-sum_m w_m * filtered_m`.
    """
    return tf.add_n(filtered)
