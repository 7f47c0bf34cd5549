"""Permutohedral-lattice Gaussian filtering: one API over the custom op and the pure-TF twin.

`build_lattice(features)` embeds each image's points once; `filter_lattice(values, lattice)`
then filters any number of value tensors with it (every mean-field iteration, and the
backward pass). `prepare_filter(lattice)` turns a lattice into what its implementation
filters with fastest (for the twin, its fixed sparse splat / blur / slice matrices), to build
once per lattice and pass to `filter_lattice` in place of the lattice.

The filter approximates, for unit-scaled features,

    out_i = sum_j exp(-|f_i - f_j|^2 / 2) * v_j     (up to a smooth, per-point factor)

so callers normalise by the filtering of an all-ones image, as dense CRFs do.

Implementations (`implementation=`):

- `"custom_op"`: the C++ CPU kernels of `permutohedral_ops.cc`, multi-threaded over
  TensorFlow's intra-op thread pool, compiled on first use (`keras_dense.ops.loader`).
- `"tf"`: `keras_dense.ops.permutohedral_tf`, stock TensorFlow ops only (GPU, SavedModel,
  TF Serving).
- `"auto"`: the custom op when it can be built or loaded; without a C++ compiler, the twin
  (one warning). A compiler that fails raises `OpBuildError`.

Gradients: with respect to `values` only. The filter is linear in `values` and each of its
blurs is symmetric, so its transpose is the same filter with the blur directions in reverse
order; that is the op's registered gradient (the twin gets the same from autodiff). There is
no gradient with respect to the features (the image): the lattice is piecewise constant in
them, and both implementations treat it as a constant (`tf.stop_gradient`, no gradient
registered for the build op).
"""

from __future__ import annotations

import tensorflow as tf

from keras_dense.ops import loader, permutohedral_tf
from keras_dense.ops.lattice import Lattice
from keras_dense.ops.permutohedral_tf import LatticeOperator

IMPLEMENTATIONS = ("auto", "custom_op", "tf")
BUILD_OP = "KerasDensePermutohedralBuild"
FILTER_OP = "KerasDensePermutohedralFilter"


def check_implementation(implementation: str) -> str:
    """Returns `implementation` or raises ValueError unless it is one of `IMPLEMENTATIONS`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return implementation


def resolve_implementation(implementation: str = "auto") -> str:
    """Turns `"auto"` into `"custom_op"` or `"tf"`, loading (building) the op as needed.

    Args:
        implementation: `"auto"`, `"custom_op"` or `"tf"`.

    Returns:
        `"custom_op"` or `"tf"`.

    Raises:
        ValueError: Unknown implementation.
        OpBuildError: The op is needed (`"custom_op"`, or `"auto"` with a compiler) and could
            not be built or loaded.
    """
    check_implementation(implementation)
    if implementation == "tf":
        return "tf"
    library = loader.load_library(required=implementation == "custom_op")
    return "custom_op" if library is not None else "tf"


def build_lattice(features: tf.Tensor, implementation: str = "auto") -> Lattice:
    """Builds the lattice of a batch of point sets.

    Args:
        features: (B, N, d) float32 features, already divided by the kernel's standard
            deviations (the kernel is `exp(-|f_i - f_j|^2 / 2)`); d static.
        implementation: `"auto"`, `"custom_op"` or `"tf"`.

    Returns:
        A `Lattice` (both implementations give the same tensors and accept each other's).
    """
    if resolve_implementation(implementation) == "tf":
        return permutohedral_tf.build_lattice(features)
    features = tf.stop_gradient(tf.convert_to_tensor(features, tf.float32))
    outputs = loader.load_library().keras_dense_permutohedral_build(features)
    return Lattice(*outputs)


def prepare_filter(
    lattice: Lattice | LatticeOperator, implementation: str = "auto"
) -> Lattice | LatticeOperator:
    """What `filter_lattice` filters with fastest, built once per lattice.

    Args:
        lattice: A `Lattice` (or a `LatticeOperator`).
        implementation: `"auto"`, `"custom_op"` or `"tf"`.

    Returns:
        For the twin, the lattice's `LatticeOperator` (its sparse matrices); for the custom
        op, the `Lattice` itself (the op precomputes nothing across calls).
    """
    if resolve_implementation(implementation) == "tf":
        return permutohedral_tf.lattice_operator(lattice)
    return lattice.lattice if isinstance(lattice, LatticeOperator) else lattice


def filter_lattice(
    values: tf.Tensor,
    lattice: Lattice | LatticeOperator,
    reverse: bool = False,
    implementation: str = "auto",
) -> tf.Tensor:
    """Filters values with a lattice: splat, blur along the d+1 directions, slice.

    Args:
        values: (B, N, C) float32 or float64.
        lattice: The `Lattice` of the same B point sets of N points, or what
            `prepare_filter` made of it (either implementation accepts either).
        reverse: Blur in reverse direction order (the transpose of the forward filter).
        implementation: `"auto"`, `"custom_op"` or `"tf"`.

    Returns:
        (B, N, C) filtered values, same dtype as `values`.
    """
    if resolve_implementation(implementation) == "tf":
        return permutohedral_tf.filter_lattice(values, lattice, reverse=reverse)
    scale = None
    if isinstance(lattice, LatticeOperator):
        lattice, scale = lattice.lattice, lattice.output_scale
    library = loader.load_library()
    filtered = library.keras_dense_permutohedral_filter(
        values,
        lattice.splat_indices,
        lattice.barycentric_weights,
        lattice.blur_neighbors,
        reverse=bool(reverse),
    )
    if scale is None:
        return filtered
    return filtered * tf.reshape(tf.cast(scale, filtered.dtype), tf.shape(filtered)[:2])[..., None]


@tf.RegisterGradient(FILTER_OP)
def _filter_gradient(op, grad):
    """The transpose of the filter: the same lattice, blur directions reversed."""
    library = loader.load_library()
    transposed = library.keras_dense_permutohedral_filter(
        grad, *op.inputs[1:], reverse=not op.get_attr("reverse")
    )
    return [transposed] + [None] * (len(op.inputs) - 1)


tf.no_gradient(BUILD_OP)
