"""Fused mean-field inference of a dense CRF with Potts compatibility (the custom op).

`potts_mean_field` runs every iteration of `keras_dense.crf.mean_field.mean_field` with
`potts_pairwise` inside one C++ kernel (`KerasDensePottsMeanField` in `permutohedral_ops.cc`):
softmax, splat / blur / slice for each lattice, normalisation and the unary term, all classes
of a pixel as whole vectors, with buffers taken once per call. It is the post-processing path
(`keras_dense.crf.dense_crf`); it has no gradient (CRF-as-RNN training keeps the per-filter
op and its registered gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.ops import loader
from keras_dense.ops.lattice import Lattice
from keras_dense.ops.permutohedral_tf import LatticeOperator

FUSED_OP = "KerasDensePottsMeanField"


def potts_mean_field(
    unary: tf.Tensor,
    lattices: Sequence[Lattice | LatticeOperator],
    kernel_weights: Sequence[float],
    num_iterations: int,
) -> tf.Tensor:
    """Mean-field marginals of a dense CRF with Potts compatibility, in one op.

    `Q = softmax(U)`, then `num_iterations` times
    `Q = softmax(U + sum_k w_k * filter_k(Q) / filter_k(1))`: the same as
    `softmax(mean_field(U, lattices, potts_pairwise, n, kernel_scales=[-w_k]))`, to float
    rounding.

    Args:
        unary: (B, N, C) float32 logits U (e.g. log-probabilities).
        lattices: One lattice per kernel over the same B x N points (custom-op or twin
            lattices: they are the same tensors).
        kernel_weights: One weight w_k >= 0 per kernel (DeepLab: spatial 3, bilateral 10).
        num_iterations: Iterations; 0 returns `softmax(U)`.

    Returns:
        (B, N, C) float32 marginals Q (each point sums to 1).

    Raises:
        ValueError: A weight per lattice is missing, or `num_iterations` is negative.
        keras_dense.ops.OpBuildError: The custom op library could not be built or loaded.
    """
    lattices = [lat.lattice if isinstance(lat, LatticeOperator) else lat for lat in lattices]
    if len(lattices) != len(kernel_weights) or not lattices:
        raise ValueError(
            f"potts_mean_field needs one kernel weight per lattice, got {len(kernel_weights)} "
            f"weights for {len(lattices)} lattices"
        )
    if int(num_iterations) < 0:
        raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")
    return loader.load_library().keras_dense_potts_mean_field(
        tf.convert_to_tensor(unary, tf.float32),
        [lat.splat_indices for lat in lattices],
        [lat.barycentric_weights for lat in lattices],
        [lat.blur_neighbors for lat in lattices],
        kernel_weights=[float(w) for w in kernel_weights],
        num_iterations=int(num_iterations),
    )


tf.no_gradient(FUSED_OP)
