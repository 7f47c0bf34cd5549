"""Learned filters on the permutohedral lattice, from stock TensorFlow ops (the portable twin).

`filter_lattice` splats values onto the lattice, blurs them with a fixed Gaussian and slices
them back. A lattice convolution (Jampani, Kiefel & Gehler 2016) keeps the splat and the
slice and replaces the blur by learned taps over each lattice point's neighbours
(`lattice_stencil`):

- **general** (the paper's): one tap per point of the radius-r neighbourhood, each a
  `(C_in, C_out)` matrix, or one scalar per tap shared by every channel (taps of shape (T,));
  `out[m] = sum_t V[m + o_t] @ W_t`, a missing neighbour contributing zero;
- **separable**: d+1 one-dimensional passes, one per lattice direction, with 2r+1 scalar taps
  each (shared by the channels): the structure of the Gaussian blur, which
  `lattice_stencil.gaussian_separable_taps` reproduces.

`lattice_neighbors(features, lattice, radius, form)` finds the neighbours once per lattice
(one hash pass, as `permutohedral_tf.build_lattice` finds the blur's); `lattice_convolve` then
filters any number of value tensors with any taps. Works with a lattice from either
implementation (they number lattice points identically).

`lattice_convolve(..., implementation=)` runs the convolution in stock TensorFlow ops (`"tf"`,
this module: sparse products and gathers, for GPUs and exports) or in the compiled ops of
`lattice_convolution_ops.cc` (`"custom_op"`, `lattice_convolution_op`: splat, stencil and
slice kernels whose gradients are each other). Both take the same `LatticeNeighbors` and agree
to float rounding, gradients included.

Gradients:
- to the values and the taps, exact. Shared taps (and the separable form) are sparse
  products, differentiated by TensorFlow; the general form's channel matrices have a custom
  gradient (the transpose of a tap is the tap of the opposite offset, transposed, so the
  backward pass is gathers, no scatter);
- to the features, through the barycentric weights of the splat and the slice when
  `lattice_neighbors(..., differentiable_features=True)`: exact wherever the features stay
  inside their simplices (almost everywhere); the lattice points and neighbours are
  piecewise constant in the features and are treated as constants.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_dense.ops import lattice_convolution_op, lattice_stencil
from keras_dense.ops.lattice import Lattice
from keras_dense.ops.permutohedral import resolve_implementation
from keras_dense.ops.permutohedral_tf import (
    _MAX_UNROLLED_COORDINATES,
    LatticeOperator,
    SparseMatrix,
    _elevate,
    _elevate_coordinates,
    _lattice_codes,
    _matmul,
    _point_of_codes,
    _simplex,
    _simplex_unrolled,
    lattice_operator,
)


class LatticeNeighbors(NamedTuple):
    """A lattice with the neighbour table of one stencil, built once and reused.

    With B images of M lattice rows each (L = B*M rows, row b*M + m), T taps:

    Attributes:
        operator: The lattice's `LatticeOperator` (its splat and slice; with
            `differentiable_features`, its weights carry the features' gradient).
        rows: (T, L) int32: the row of each tap's neighbour of each row, L where it is missing
            (a zero row is appended there). General form: T = stencil taps. Separable form:
            T = (d+1) (2r+1), direction-major.
        form: "general" or "separable".
        radius: 1 or 2.
        opposite: (T,) int32: the tap of the opposite offset (general form).
        entries: General form: (E, 2) int32 (row, neighbour row) of every neighbour found,
            the indices of the stencil as one sparse matrix, for taps shared by the channels.
            Separable form: (d+1, L (2r+1), 2) int32, the indices of each direction's pass
            (a missing neighbour's entry sits on the diagonal, with a zero value).
        entry_taps: General form: (E,) int32, the tap of each entry. Separable form:
            (d+1, L, 2r+1) bool, whether each entry's neighbour exists.
        weights: (B, N, d+1) float32 barycentric weights of the splat and the slice (with
            `differentiable_features`, recomputed from the features, with their gradient).
    """

    operator: LatticeOperator
    rows: tf.Tensor
    form: str
    radius: int
    opposite: tf.Tensor
    entries: tf.Tensor | None = None
    entry_taps: tf.Tensor | None = None
    weights: tf.Tensor | None = None


def _simplices(features: tf.Tensor, d: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The twin's vertex keys (B, N, d+1, d) and barycentric weights (B, N, d+1)."""
    if d + 1 <= _MAX_UNROLLED_COORDINATES:
        return _simplex_unrolled(_elevate_coordinates(features, d), d)
    return _simplex(_elevate(features, d), d)


def lattice_point_keys(features: tf.Tensor, lattice: Lattice) -> tf.Tensor:
    """(B, M, d) int32 keys of the lattice points (rows past an image's points: undefined).

    Args:
        features: The (B, N, d) features the lattice was built from.
        lattice: Their `Lattice` (either implementation).
    """
    features = tf.stop_gradient(tf.convert_to_tensor(features, tf.float32))
    d = features.shape[-1]
    keys, _ = _simplices(features, d)
    shape = tf.shape(lattice.blur_neighbors)
    batch, max_points = shape[0], shape[1]
    base = tf.range(batch)[:, None, None] * max_points
    rows = tf.reshape(lattice.splat_indices + base, [-1])
    # Every entry of a lattice point holds the same key: any reduction picks it.
    point_keys = tf.math.unsorted_segment_max(tf.reshape(keys, [-1, d]), rows, batch * max_points)
    return tf.reshape(point_keys, tf.stack([batch, max_points, d]))


def _neighbor_rows(features: tf.Tensor, lattice: Lattice, offsets: np.ndarray) -> tf.Tensor:
    """(T, L) int32 row of the neighbour at each key offset of each lattice row (L: missing)."""
    d = offsets.shape[-1]
    keys = lattice_point_keys(features, lattice)
    shape = tf.shape(keys, out_type=tf.int64)
    batch, max_points = shape[0], shape[1]
    total = batch * max_points
    valid = tf.reshape(tf.sequence_mask(lattice.num_points, tf.cast(max_points, tf.int32)), [-1])
    rows = tf.where(valid)[:, 0]  # (P,) int64
    count = tf.size(rows, out_type=tf.int64)
    point_keys = tf.gather(tf.reshape(keys, [-1, d]), rows)
    image = rows // tf.maximum(max_points, 1)
    taps = offsets.shape[0]
    neighbour_keys = tf.reshape(point_keys[:, None, :] + tf.constant(offsets)[None], [-1, d])
    codes = _lattice_codes(
        tf.concat([image, tf.repeat(image, taps)], 0),
        tf.concat([point_keys, neighbour_keys], 0),
        d,
    )
    # The points' codes are distinct and come first: a neighbour key gets its point, or count.
    neighbour = tf.reshape(_point_of_codes(codes, count), [-1, taps])
    target = tf.where(neighbour < count, tf.gather(rows, tf.minimum(neighbour, count - 1)), total)
    table = tf.tensor_scatter_nd_update(
        tf.fill(tf.stack([total, taps]), total), rows[:, None], target
    )
    return tf.transpose(tf.cast(table, tf.int32))


def _differentiable_operator(
    features: tf.Tensor, operator: LatticeOperator
) -> tuple[LatticeOperator, tf.Tensor]:
    """The operator with splat / slice weights recomputed from `features` (with gradient),
    and those (B, N, d+1) weights."""
    d = features.shape[-1]
    _, weights = _simplices(tf.convert_to_tensor(features, tf.float32), d)
    matrix = operator.slice_matrix._replace(values=tf.reshape(weights, [-1]))
    return operator._replace(slice_matrix=matrix, output_scale=None, scaled_slice=None), weights


def lattice_neighbors(
    features: tf.Tensor,
    lattice: Lattice | LatticeOperator,
    radius: int = 1,
    form: str = "general",
    differentiable_features: bool = False,
) -> LatticeNeighbors:
    """Finds the stencil neighbours of every lattice point, once per lattice.

    Args:
        features: (B, N, d) float32 features the lattice was built from (already scaled).
        lattice: Their `Lattice` (either implementation) or `LatticeOperator`.
        radius: Neighbourhood radius, 1 or 2.
        form: "general" or "separable".
        differentiable_features: Let the features' gradient through the barycentric weights
            (see the module docstring). The twin's weights equal the op's, so the forward
            values are unchanged.

    Returns:
        The `LatticeNeighbors`.
    """
    radius = lattice_stencil.check_radius(radius)
    form = lattice_stencil.check_form(form)
    operator = lattice_operator(lattice)
    d = features.shape[-1]
    if d is None or d + 1 != operator.lattice.splat_indices.shape[-1]:
        raise ValueError(
            f"features of shape {features.shape} do not match a lattice of d+1 = "
            f"{operator.lattice.splat_indices.shape[-1]}"
        )
    if form == "general":
        offsets = lattice_stencil.stencil_offsets(d, radius)
        opposite = lattice_stencil.opposite_taps(d, radius)
    else:
        offsets = lattice_stencil.separable_offsets(d, radius).reshape(-1, d)
        opposite = np.arange(offsets.shape[0])
    rows = _neighbor_rows(features, operator.lattice, offsets)
    weights = operator.lattice.barycentric_weights
    if differentiable_features:
        operator, weights = _differentiable_operator(features, operator)
    if form == "general":
        found = tf.where(rows < tf.shape(rows)[1])  # (E, 2) [tap, row]
        entry_taps = tf.cast(found[:, 0], tf.int32)
        entries = tf.stack([tf.cast(found[:, 1], tf.int32), tf.gather_nd(rows, found)], 1)
    else:
        entries, entry_taps = _separable_entries(rows, d + 1, 2 * radius + 1)
    opposite = tf.constant(opposite, tf.int32)
    return LatticeNeighbors(operator, rows, form, radius, opposite, entries, entry_taps, weights)


def _separable_entries(rows: tf.Tensor, directions: int, width: int):
    """Each direction's pass as sparse-matrix indices (d+1, L*width, 2), and which exist."""
    length = tf.shape(rows)[1]
    table = tf.transpose(tf.reshape(rows, [directions, width, -1]), [0, 2, 1])  # (d+1, L, w)
    found = table < length
    own = tf.range(length, dtype=tf.int32)[None, :, None]
    columns = tf.where(found, table, own)  # a missing neighbour: 0 on the diagonal
    pairs = tf.stack([tf.broadcast_to(own, tf.shape(table)), columns], -1)
    return tf.reshape(pairs, [directions, -1, 2]), found


# General taps with channel matrices are gathered a chunk of taps at a time: 256 / C_in taps,
# i.e. at most 2^22 values (16 MiB) per chunk up to L = 2^14 lattice rows, more beyond.
_CHUNK_TAP_CHANNELS = 256


def _tap_chunks(taps: int, channels: int) -> list[tuple[int, int]]:
    """Static (start, stop) ranges of taps gathered together."""
    size = max(1, _CHUNK_TAP_CHANNELS // max(1, channels))
    return [(start, min(taps, start + size)) for start in range(0, taps, size)]


def _matrix_tap_sum(values: tf.Tensor, rows: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    """sum_t values[rows[t]] @ taps[t] (a missing neighbour, row L, reads a zero row)."""
    padded = tf.concat([values, tf.zeros_like(values[:1])], 0)
    out = None
    for start, stop in _tap_chunks(taps.shape[0], values.shape[-1] or 1):
        gathered = tf.gather(padded, rows[start:stop])  # (K, L, C_in)
        term = tf.einsum("klc,kcd->ld", gathered, taps[start:stop])
        out = term if out is None else out + term
    return out


def _matrix_tap_gradients(values, upstream, rows, channels) -> tf.Tensor:
    """d/d taps[t] of `_matrix_tap_sum`: values[rows[t]]^T @ upstream, (T, C_in, C_out)."""
    padded = tf.concat([values, tf.zeros_like(values[:1])], 0)
    parts = []
    for start, stop in _tap_chunks(rows.shape[0], channels):
        gathered = tf.gather(padded, rows[start:stop])
        parts.append(tf.einsum("klc,ld->kcd", gathered, upstream))
    return tf.concat(parts, 0)


def _general_matrices(values, neighbors: LatticeNeighbors, taps) -> tf.Tensor:
    """The general stencil with (T, C_in, C_out) taps, with its transposed-tap gradient."""

    @tf.custom_gradient
    def convolve(v, w):
        def grad(upstream):
            # The transpose of tap t is the tap of the opposite offset, transposed.
            flipped = tf.transpose(tf.gather(w, neighbors.opposite), [0, 2, 1])
            d_values = _matrix_tap_sum(upstream, neighbors.rows, flipped)
            d_taps = _matrix_tap_gradients(v, upstream, neighbors.rows, v.shape[-1] or 1)
            return d_values, d_taps

        return _matrix_tap_sum(v, neighbors.rows, w), grad

    return convolve(values, taps)


def _general_shared(values, neighbors: LatticeNeighbors, taps) -> tf.Tensor:
    """The general stencil with one scalar per tap: one sparse product (autodiff gradients)."""
    length = tf.shape(values, out_type=tf.int64)[0]
    matrix = SparseMatrix(
        neighbors.entries, tf.gather(taps, neighbors.entry_taps), tf.stack([length, length])
    )
    return _matmul(matrix, values)


def _general(values: tf.Tensor, neighbors: LatticeNeighbors, taps: tf.Tensor) -> tf.Tensor:
    if taps.shape.rank == 1:
        return _general_shared(values, neighbors, taps)
    return _general_matrices(values, neighbors, taps)


def _separable(values: tf.Tensor, neighbors: LatticeNeighbors, taps: tf.Tensor) -> tf.Tensor:
    """d+1 passes of 2r+1 taps, each a sparse product (autodiff gives both gradients)."""
    length = tf.shape(values, out_type=tf.int64)[0]
    for j in range(taps.shape[0]):
        found = neighbors.entry_taps[j]  # (L, width)
        entries = tf.where(found, taps[j][None, :], tf.zeros_like(taps[j][None, :]))
        matrix = SparseMatrix(
            neighbors.entries[j], tf.reshape(entries, [-1]), tf.stack([length, length])
        )
        values = _matmul(matrix, values)
    return values


def check_taps(taps: tf.Tensor, neighbors: LatticeNeighbors, channels: int | None) -> tf.Tensor:
    """Returns `taps` as a float tensor, or raises ValueError naming the expected shape."""
    taps = tf.convert_to_tensor(taps)
    count = neighbors.rows.shape[0]
    if neighbors.form == "separable":
        width = 2 * neighbors.radius + 1
        expected = f"({count // width}, {width})"
        ok = tuple(taps.shape) == (count // width, width)
    else:
        expected = f"({count},) or ({count}, C_in, C_out)"
        ok = taps.shape.rank in (1, 3) and taps.shape[0] == count
        if ok and taps.shape.rank == 3 and channels is not None:
            ok = taps.shape[1] == channels
            expected = f"({count}, {channels}, C_out)"
    if not ok:
        raise ValueError(
            f"{neighbors.form} taps of radius {neighbors.radius} must have shape {expected}, "
            f"got {tuple(taps.shape)}"
        )
    return taps


def _convolve_compiled(values: tf.Tensor, neighbors: LatticeNeighbors, taps) -> tf.Tensor:
    """Splat, stencil (d+1 one-direction stencils when separable), slice: the compiled ops."""
    lattice = neighbors.operator.lattice
    weights = lattice.barycentric_weights if neighbors.weights is None else neighbors.weights
    indices = lattice.splat_indices
    rows_per_image = tf.shape(lattice.blur_neighbors)[1]
    lattice_values = lattice_convolution_op.splat(values, indices, weights, rows_per_image)
    if neighbors.form == "general":
        lattice_values = lattice_convolution_op.stencil(
            lattice_values, neighbors.rows, taps, neighbors.opposite
        )
    else:
        width = 2 * neighbors.radius + 1
        # Along one direction, tap k = -r..r is opposite to tap -k.
        reverse = tf.range(width - 1, -1, -1, dtype=tf.int32)
        for j in range(taps.shape[0]):
            rows = neighbors.rows[j * width : (j + 1) * width]
            lattice_values = lattice_convolution_op.stencil(lattice_values, rows, taps[j], reverse)
    return lattice_convolution_op.slice_lattice(lattice_values, indices, weights)


def lattice_convolve(
    values: tf.Tensor,
    neighbors: LatticeNeighbors,
    taps: tf.Tensor,
    implementation: str = "auto",
) -> tf.Tensor:
    """Splat, convolve with learned taps on the lattice, slice.

    Args:
        values: (B, N, C_in) float32 or float64 values at the points.
        neighbors: `lattice_neighbors` of the same points.
        taps: General form: (T, C_in, C_out), or (T,) shared by the channels. Separable form:
            (d+1, 2r+1). Same dtype as `values`.
        implementation: `"custom_op"` (the compiled ops), `"tf"` (stock TensorFlow ops) or
            `"auto"` (the compiled ops when they can be built).

    Returns:
        (B, N, C_out) filtered values (C_out = C_in for shared and separable taps).
    """
    values = tf.convert_to_tensor(values)
    if values.dtype not in (tf.float32, tf.float64) or values.shape.rank != 3:
        raise ValueError(
            f"values must be (batch, points, channels) float32 or float64, got {values.dtype} "
            f"{values.shape}"
        )
    taps = tf.cast(check_taps(taps, neighbors, values.shape[-1]), values.dtype)
    operator = neighbors.operator
    if operator.output_scale is not None:
        raise ValueError(
            "lattice_convolve needs an operator without an output scale (with_output_scale): "
            "multiply its result instead"
        )
    if resolve_implementation(implementation) == "custom_op":
        return _convolve_compiled(values, neighbors, taps)
    shape = tf.shape(values)
    flat = tf.reshape(values, tf.stack([-1, shape[2]]))
    lattice_values = _matmul(operator.slice_matrix, flat, adjoint=True)  # splat
    if neighbors.form == "general":
        lattice_values = _general(lattice_values, neighbors, taps)
    else:
        lattice_values = _separable(lattice_values, neighbors, taps)
    out = _matmul(operator.slice_matrix, lattice_values)  # slice
    return tf.reshape(out, tf.stack([shape[0], shape[1], tf.shape(out)[1]]))
