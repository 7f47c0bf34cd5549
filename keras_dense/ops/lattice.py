"""The permutohedral lattice as plain tensors, shared by the custom op and the pure-TF twin."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

# Lattice coordinates stay below this magnitude (int32 keys that are exact floats).
MAX_COORDINATE = float(1 << 24)


class Lattice(NamedTuple):
    """A permutohedral lattice over a batch of B point sets of N points in d dimensions.

    M is the largest number of lattice points over the batch; images with fewer are padded.

    Attributes:
        splat_indices: (B, N, d+1) int32: the lattice point of each vertex of each point's
            enclosing simplex.
        barycentric_weights: (B, N, d+1) float32: the barycentric weight of each vertex.
        blur_neighbors: (B, M, d+1, 2) int32: the two neighbours of each lattice point along
            each lattice direction, -1 where the neighbour is not in the lattice (and for
            padding points).
        num_points: (B,) int32: M_b, the lattice points of each image.

    Lattice points are numbered by first occurrence (point-major, then vertex) in both
    implementations, so they build identical tensors.
    """

    splat_indices: tf.Tensor
    barycentric_weights: tf.Tensor
    blur_neighbors: tf.Tensor
    num_points: tf.Tensor


def lattice_scale_factors(d: int) -> np.ndarray:
    """Per-dimension scaling applied before elevation (Adams et al. 2010, p. 5-6).

    With it, the lattice's [1/2, 1, 1/2] blur along the d+1 directions approximates a Gaussian
    of unit standard deviation in feature space, `exp(-|f_i - f_j|^2 / 2)`.

    Args:
        d: Feature dimension.

    Returns:
        (d,) float32 factors, computed in float64 and rounded as the op does.
    """
    inv_std_dev = np.sqrt(2.0 / 3.0) * (d + 1)
    i = np.arange(d, dtype=np.float64)
    return (inv_std_dev / np.sqrt((i + 1) * (i + 2))).astype(np.float32)


def max_feature_magnitude(d: int) -> float:
    """Largest accepted |feature| (keeps lattice coordinates within `MAX_COORDINATE`)."""
    return float(np.float32(MAX_COORDINATE / (2.0 * d * (d + 1))))
