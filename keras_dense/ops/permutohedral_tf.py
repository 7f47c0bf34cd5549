"""The permutohedral lattice from stock TensorFlow ops only (the portable twin of the op).

Same lattice and same filter as `permutohedral_ops.cc`, built from `tf.unique`, sorting,
`tf.searchsorted`, `tf.math.unsorted_segment_sum` and `tf.gather`, so it runs on any device,
inside SavedModels and in the stock TensorFlow Serving binary (which cannot load custom ops).
The lattice points are numbered in the same order as the op's hash table (first occurrence,
point-major then vertex), so the two produce the same lattice tensors; the filter agrees with
the op to float rounding. Gradients with respect to `values` come from autodiff; the lattice
build is not differentiable (`tf.stop_gradient` on the features).

Hashing: a lattice key is the first d coordinates of a lattice point, all congruent to the
same remainder r modulo d+1. Each key becomes one int64 code `(image, r, q_0, ..., q_{d-1})`
with `q_i = key_i // (d+1)` in mixed radix (int64 arithmetic up to 62 bits, otherwise exact
dense row ids from one `tf.unique` per coordinate); when the keys' own ranges fit in 52 bits
(images and CRF features), the code is the keys' mixed-radix number, from one exact float64
matrix-vector product.

Filtering: the lattice is fixed, so splat, blur and slice are fixed sparse matrices;
`lattice_operator` builds them once (`LatticeOperator`) and each filtering is then a few
sparse-dense products (`SparseTensorDenseMatMul`), with no index arithmetic.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_dense.ops.lattice import Lattice, lattice_scale_factors, max_feature_magnitude

_CODE_BITS = 62.0
_FLOAT_CODE_BITS = 52.0


# Up to this many lattice coordinates (d+1), the simplex is computed one coordinate at a time
# on (B, N) tensors (O(d^2) small ops), which is several times faster on a CPU than the
# (B, N, d+1, d+1) broadcasts of the general form.
_MAX_UNROLLED_COORDINATES = 8


def _elevate_coordinates(features: tf.Tensor, d: int) -> list[tf.Tensor]:
    """Elevates (B, N, d) features onto the lattice hyperplane: d+1 (B, N) coordinates."""
    scale = tf.constant(lattice_scale_factors(d), tf.float32)
    cf = features * scale
    elevated = [None] * (d + 1)
    total = tf.zeros_like(features[..., 0])
    for j in range(d, 0, -1):
        c = cf[..., j - 1]
        elevated[j] = total - tf.constant(float(j), tf.float32) * c
        total = total + c
    elevated[0] = total
    return elevated


def _elevate(features: tf.Tensor, d: int) -> tf.Tensor:
    """Elevates (B, N, d) features onto the lattice hyperplane: (B, N, d+1), op's float order."""
    return tf.stack(_elevate_coordinates(features, d), axis=-1)


def _integer_sum(tensors: list[tf.Tensor]) -> tf.Tensor:
    """The sum of int32 tensors as chained additions (ONNX's Sum, tf.add_n's image, takes
    floats only)."""
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total


def _simplex_unrolled(elevated: list[tf.Tensor], d: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`_simplex` one coordinate at a time: same arithmetic, same results, bit for bit.

    Args:
        elevated: The d+1 (B, N) elevated coordinates.
        d: Feature dimension.

    Returns:
        Vertex keys (B, N, d+1, d) int32 and barycentric weights (B, N, d+1).
    """
    d1 = d + 1
    down = tf.constant(np.float32(1.0) / np.float32(d1))
    up_factor = tf.constant(float(d1), tf.float32)
    rem0 = []
    for e in elevated:
        v = e * down
        up = tf.math.ceil(v) * up_factor
        dn = tf.math.floor(v) * up_factor
        rem0.append(tf.cast(tf.where(up - e < e - dn, up, dn), tf.int32))
    rem_sum = tf.math.floordiv(_integer_sum(rem0), d1)  # exact: a sum of multiples of d+1

    # rank[i] = #{j > i: diff_i < diff_j} + #{j < i: not diff_j < diff_i}, as the op counts.
    diff = [e - tf.cast(r, tf.float32) for e, r in zip(elevated, rem0)]
    terms = [[] for _ in range(d1)]
    for i in range(d1):
        for j in range(i + 1, d1):
            smaller = tf.cast(diff[i] < diff[j], tf.int32)
            terms[i].append(smaller)
            terms[j].append(1 - smaller)
    rank = [_integer_sum(t) for t in terms]
    for i in range(d1):  # back onto the plane (see `_simplex`)
        shifted = rank[i] + rem_sum
        rank[i] = tf.math.floormod(shifted, d1)
        rem0[i] = rem0[i] - (shifted - rank[i])

    scaled = [(e - tf.cast(r, tf.float32)) * down for e, r in zip(elevated, rem0)]
    zero = tf.zeros_like(scaled[0])
    by_rank = [
        tf.add_n([tf.where(tf.equal(rank[i], r), scaled[i], zero) for i in range(d1)])
        for r in range(d1)
    ]
    weights = [by_rank[d] + (1.0 + (-by_rank[0]))]
    weights += [by_rank[d - k] - by_rank[d1 - k] for k in range(1, d1)]

    keys = list(rem0[:d])  # vertex 0: rem0 itself (every rank is at most d)
    for k in range(1, d1):
        keys += [tf.where(rank[i] <= d - k, rem0[i] + k, rem0[i] + (k - d1)) for i in range(d)]
    shape = tf.concat([tf.shape(zero), [d1, d]], 0)
    return tf.reshape(tf.stack(keys, axis=-1), shape), tf.stack(weights, axis=-1)


def _simplex(elevated: tf.Tensor, d: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Vertex keys (B, N, d+1, d) int32 and barycentric weights (B, N, d+1) of each point."""
    d1 = d + 1
    down = tf.constant(np.float32(1.0) / np.float32(d1))
    up_factor = tf.constant(float(d1), tf.float32)
    v = elevated * down
    up = tf.math.ceil(v) * up_factor
    dn = tf.math.floor(v) * up_factor
    rem0 = tf.cast(tf.where(up - elevated < elevated - dn, up, dn), tf.int32)
    rem_sum = tf.reduce_sum(rem0, axis=-1, keepdims=True) // d1

    # rank[i] = #{j > i: diff_i < diff_j} + #{j < i: not diff_j < diff_i}, i.e. the position
    # of i when sorting by decreasing diff, ties in index order.
    diff = elevated - tf.cast(rem0, tf.float32)
    d_i, d_j = diff[..., :, None], diff[..., None, :]
    earlier = tf.constant(np.tril(np.ones((d1, d1), bool), -1))  # [i, j]: j < i
    before = tf.where(earlier, d_j >= d_i, d_j > d_i)  # [i, j]: j sorts before i
    rank = tf.reduce_sum(tf.cast(before, tf.int32), -1)

    # Bring the point back onto the plane: the op's two cases (rem_sum > 0: ranks that pass d
    # wrap around and their coordinates drop by d+1; rem_sum < 0: the reverse) are one
    # modular shift of the ranks.
    shifted = rank + rem_sum
    rank = tf.math.floormod(shifted, d1)
    rem0 = rem0 - (shifted - rank)

    # w[r]: the scaled differential coordinate of the axis of rank r (one term per r).
    scaled = (elevated - tf.cast(rem0, tf.float32)) * down
    by_rank = tf.reduce_sum(tf.one_hot(rank, d1, dtype=tf.float32) * scaled[..., None], axis=-2)
    weights = [by_rank[..., d] + (1.0 + (-by_rank[..., 0]))]
    weights += [by_rank[..., d - k] - by_rank[..., d1 - k] for k in range(1, d1)]
    weights = tf.stack(weights, axis=-1)

    # Vertex k: rem0 + canonical vertex k permuted by rank (first d coordinates).
    k = tf.range(d1, dtype=tf.int32)[:, None]  # (d+1, 1) vertex index
    rank_d = rank[..., None, :d]  # (B, N, 1, d)
    offsets = tf.where(rank_d <= d - k, k, k - d1)  # (B, N, d+1, d)
    keys = rem0[..., None, :d] + offsets
    return keys, weights


def _suffix_products(radix: tf.Tensor) -> tf.Tensor:
    """`prod(radix[i+1:])` for each i of a static-length vector: the exclusive reverse
    cumulative product, from multiplications only (ONNX has no cumulative product)."""
    products = [tf.ones_like(radix[0])]
    for i in range(radix.shape[0] - 1, 0, -1):
        products.append(products[-1] * radix[i])
    return tf.stack(products[::-1])


def _mixed_radix_codes(rows: tf.Tensor, low: tf.Tensor, radix: tf.Tensor) -> tf.Tensor:
    # sum_c (row_c - low_c) * prod_{c' > c} radix_c': three whole-matrix ops, no column loop.
    multipliers = _suffix_products(radix)
    return tf.reduce_sum((rows - low) * multipliers, axis=1)


def _dense_row_codes(rows: tf.Tensor) -> tf.Tensor:
    codes = tf.zeros_like(rows[:, 0])
    for c in range(rows.shape[1]):
        column = rows[:, c] - tf.reduce_min(rows[:, c])
        combined = codes * (tf.reduce_max(column) + 1) + column
        _, ids = tf.unique(combined, out_idx=tf.int64)
        codes = ids
    return codes


def _row_codes(rows: tf.Tensor) -> tf.Tensor:
    """int64 codes of (R, k) int64 rows: equal exactly when the rows are equal."""
    if rows.shape[0] == 0:
        return tf.zeros([0], tf.int64)
    low = tf.reduce_min(rows, 0)
    radix = tf.reduce_max(rows, 0) - low + 1
    bits = tf.reduce_sum(tf.math.log(tf.cast(radix, tf.float64))) / np.log(2.0)
    return tf.cond(
        bits < _CODE_BITS,
        lambda: _mixed_radix_codes(rows, low, radix),
        lambda: _dense_row_codes(rows),
    )


def _key_rows(image: tf.Tensor, keys: tf.Tensor, d: int) -> tf.Tensor:
    """(R,) image ids and (R, d) int32 keys -> (R, d+2) int64 rows (image, remainder, quotients).

    The quotients `floor(key / (d+1))` come from float64 division, exact here (|key| < 2^24:
    the quotient is exact when d+1 divides the key, else at least 1/(d+1) from an integer)
    and several times faster than int64 division on a CPU.
    """
    quotients = tf.cast(tf.math.floor(tf.cast(keys, tf.float64) / float(d + 1)), tf.int64)
    remainder = tf.cast(keys[:, :1], tf.int64) - (d + 1) * quotients[:, :1]
    return tf.concat([tf.cast(image, tf.int64)[:, None], remainder, quotients], axis=1)


def _lattice_codes(image: tf.Tensor, keys: tf.Tensor, d: int) -> tf.Tensor:
    """int64 codes of (R,) image ids and (R, d) int32 keys: equal exactly when both are equal.

    Usually one float64 matrix-vector product: the mixed-radix code of (image, key - its
    minimum) is an integer below 2^52 (checked), so float64 products and sums are exact.
    Wider keys are coded by their quotients (`_key_rows`, d+1 times narrower per
    coordinate) in int64 (`_row_codes`).
    """
    if keys.shape[0] == 0:
        return tf.zeros([0], tf.int64)
    if _for_converters[0]:
        rows = tf.concat([tf.cast(image, tf.int64)[:, None], tf.cast(keys, tf.int64)], 1)
        return _dense_row_codes(rows)
    low = tf.reduce_min(keys, 0)
    span = tf.cast(tf.reduce_max(keys, 0) - low, tf.float64) + 1.0
    image = tf.cast(image, tf.float64)
    radix = tf.concat([[tf.reduce_max(image) + 1.0], span], 0)
    bits = tf.reduce_sum(tf.math.log(radix)) / np.log(2.0)

    def exact_float():
        multipliers = _suffix_products(radix)
        offsets = tf.cast(keys - low, tf.float64)
        codes = tf.linalg.matvec(offsets, multipliers[1:]) + image * multipliers[0]
        return tf.cast(codes, tf.int64)

    return tf.cond(
        bits < min(_FLOAT_CODE_BITS, _CODE_BITS),
        exact_float,
        lambda: _row_codes(_key_rows(image, keys, d)),
    )


def _point_of_codes(codes: tf.Tensor, count) -> tf.Tensor:
    """For `codes` = `count` distinct point codes followed by query codes: the point of each
    query code, or `count` where no point has it.

    `tf.unique` numbers codes by first occurrence, so the points get ids 0..count-1; the ids
    are mapped back through a table all the same, because converters (OpenVINO's) may number
    them in sorted order.
    """
    unique, ids = tf.unique(codes, out_idx=tf.int64)
    table = tf.tensor_scatter_nd_update(
        tf.fill(tf.shape(unique, out_type=tf.int64), tf.cast(count, tf.int64)),
        ids[:count, None],
        tf.range(tf.cast(count, tf.int64)),
    )
    return tf.gather(table, ids[count:])


def build_lattice(features: tf.Tensor) -> Lattice:
    """Builds the permutohedral lattice of a batch of point sets.

    Args:
        features: (B, N, d) float32 features (already divided by the kernel's standard
            deviations); d must be static.

    Returns:
        The `Lattice` (same tensors as the custom op's build).
    """
    features = tf.stop_gradient(tf.convert_to_tensor(features, tf.float32))
    d = features.shape[-1]
    if d is None or features.shape.rank != 3:
        raise ValueError(
            f"features must have shape (batch, points, d) with a static d, got {features.shape}"
        )
    d1 = d + 1
    limit = max_feature_magnitude(d)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.abs(features) <= limit),  # False for NaN too
        [f"features must be finite and at most {limit} in magnitude"],
    )
    with tf.control_dependencies([check]):
        features = tf.identity(features)
    shape = tf.shape(features, out_type=tf.int64)
    batch, points = shape[0], shape[1]
    vertices = points * d1

    if d1 <= _MAX_UNROLLED_COORDINATES:
        keys, weights = _simplex_unrolled(_elevate_coordinates(features, d), d)
    else:
        keys, weights = _simplex(_elevate(features, d), d)
    flat_keys = tf.reshape(keys, [-1, d])
    entry_image = tf.repeat(tf.range(batch), vertices)
    codes = _lattice_codes(entry_image, flat_keys, d)
    # First-occurrence numbering: image 0's points first, then image 1's, ... as in the op.
    unique_codes, global_index = tf.unique(codes, out_idx=tf.int64)
    total = tf.size(unique_codes, out_type=tf.int64)
    # Every entry of a lattice point has its image and key: any of them may write them (a
    # scatter, not a segment reduction, which ONNX lacks).
    point_image = tf.tensor_scatter_nd_update(
        tf.zeros(tf.reshape(total, [1]), tf.int64),
        global_index[:, None],
        tf.cast(entry_image, tf.int64),
    )
    point_keys = tf.tensor_scatter_nd_update(
        tf.zeros(tf.stack([total, d]), flat_keys.dtype), global_index[:, None], flat_keys
    )  # (P, d)
    if _for_converters[0]:  # ONNX and OpenVINO have no bincount: a sum of comparisons
        images = tf.range(tf.cast(batch, tf.int64))
        num_points = tf.reduce_sum(tf.cast(point_image[:, None] == images[None], tf.int64), 0)
    else:
        num_points = tf.math.bincount(point_image, minlength=batch, maxlength=batch, dtype=tf.int64)
    start = tf.cumsum(num_points, exclusive=True)
    max_points = tf.reduce_max(num_points)
    local_index = global_index - tf.gather(start, entry_image)
    point_local = tf.range(total) - tf.gather(start, point_image)

    # Blur neighbours: look up the 2 (d+1) neighbour keys of each lattice point.
    eye = tf.constant(np.eye(d1, d, dtype=np.int32))  # row j: e_j (zero row for j = d)
    step = (d1 * eye)[None] - 1  # (1, d+1, d): n1 = key + step[j], n2 = key - step[j]
    neighbour_keys = tf.stack([point_keys[:, None] + step, point_keys[:, None] - step], axis=2)
    neighbour_keys = tf.reshape(neighbour_keys, [-1, d])  # (P * (d+1) * 2, d)
    neighbour_image = tf.repeat(point_image, 2 * d1)
    all_codes = _lattice_codes(
        tf.concat([point_image, neighbour_image], 0), tf.concat([point_keys, neighbour_keys], 0), d
    )
    # One hash pass, no sort, no binary search: a neighbour key gets the id of its point's
    # code, or an id no point has when it is not in the lattice.
    neighbour_global = _point_of_codes(all_codes, total)
    found = neighbour_global < total
    neighbour_local = tf.where(
        found, neighbour_global - tf.gather(start, neighbour_image), tf.constant(-1, tf.int64)
    )
    slot = point_image * max_points + point_local
    blur = tf.scatter_nd(
        slot[:, None],
        tf.reshape(neighbour_local + 1, [-1, d1, 2]),
        tf.stack([batch * max_points, d1, 2]),
    )
    blur = tf.reshape(blur - 1, tf.stack([batch, max_points, d1, 2]))

    return Lattice(
        splat_indices=tf.cast(tf.reshape(local_index, tf.stack([batch, points, d1])), tf.int32),
        barycentric_weights=weights,
        blur_neighbors=tf.cast(blur, tf.int32),
        num_points=tf.cast(num_points, tf.int32),
    )


class SparseMatrix(NamedTuple):
    """A sparse matrix in coordinate form, for `SparseTensorDenseMatMul`.

    Like a `tf.SparseTensor`, but with int32 indices (half the index traffic of each product;
    `lattice_operator` checks that every row and column id is below 2^31).

    Attributes:
        indices: (nnz, 2) int32 (row, column) of each entry.
        values: (nnz,) float32 entries.
        dense_shape: (2,) int64 shape.
    """

    indices: tf.Tensor
    values: tf.Tensor
    dense_shape: tf.Tensor


def _sparse_matrix(indices: tf.Tensor, values: tf.Tensor, dense_shape: tf.Tensor) -> SparseMatrix:
    return SparseMatrix(tf.cast(indices, tf.int32), values, tf.cast(dense_shape, tf.int64))


_for_converters = [0]  # > 0 inside `for_converters()`


@contextlib.contextmanager
def for_converters():
    """Traces the lattice inside it in operations that model converters keep exact.

    For ONNX and OpenVINO: sparse products from `tf.gather` and
    `tf.math.unsorted_segment_sum` (they have no sparse-dense product), and lattice codes from
    integer `tf.unique` passes, one per key column (no float64 arithmetic, which OpenVINO's
    CPU plugin runs in float32, and no code wider than the rows times one column's span), and
    points per image counted by comparisons (neither has a bincount).
    Same values as the default trace; slower in TensorFlow itself, so only the exports use it.
    """
    _for_converters[0] += 1
    try:
        yield
    finally:
        _for_converters[0] -= 1


def _matmul(matrix: SparseMatrix, dense: tf.Tensor, adjoint: bool = False) -> tf.Tensor:
    """`matrix @ dense` (`matrix^T @ dense` if `adjoint`), in `dense`'s dtype."""
    values = matrix.values
    if values.dtype != dense.dtype:
        values = tf.cast(values, dense.dtype)
    if _for_converters[0]:
        rows, columns = matrix.indices[:, 0], matrix.indices[:, 1]
        if adjoint:
            rows, columns = columns, rows
        size = matrix.dense_shape[1 if adjoint else 0]
        return tf.math.unsorted_segment_sum(values[:, None] * tf.gather(dense, columns), rows, size)
    return tf.raw_ops.SparseTensorDenseMatMul(
        a_indices=matrix.indices,
        a_values=values,
        a_shape=matrix.dense_shape,
        b=dense,
        adjoint_a=adjoint,
    )


class LatticeOperator(NamedTuple):
    """The lattice's filter as fixed sparse matrices, built once and reused by every filtering.

    With P = B*N points and L = B*M lattice rows (row b*M + m is lattice point m of image b,
    so the batch is block diagonal), the filter is `alpha * S^T Blur_d ... Blur_0 S v`.

    Attributes:
        lattice: The `Lattice` it was built from (the custom op filters with that).
        slice_matrix: S^T, a (P, L) `SparseMatrix`: d+1 entries per row (the barycentric
            weights of the point's simplex vertices), in row-major order. The splat is its
            adjoint product.
        blur_matrices: d+1 symmetric (L, L) `SparseMatrix`es `I + (N1_j + N2_j) / 2` (times
            alpha for direction 0), 3 entries per row in row-major order (a missing neighbour
            is an entry of value 0 on the diagonal: a fixed number of entries, no boolean
            mask, so no host round trip on a GPU).
        output_scale: None, or (P, 1) float32 factors of the output rows, folded into
            `scaled_slice` (see `with_output_scale`).
        scaled_slice: None, or `diag(output_scale) S^T` (same indices as `slice_matrix`).
    """

    lattice: Lattice
    slice_matrix: SparseMatrix
    blur_matrices: tuple
    output_scale: tf.Tensor | None = None
    scaled_slice: SparseMatrix | None = None


def with_output_scale(operator: LatticeOperator, scale: tf.Tensor) -> LatticeOperator:
    """The operator times a per-point factor: `filter(v) * scale`, with no extra pass.

    The factor is folded into the slice matrix's values once (a mean field multiplies every
    filtering by the same normalisation); the splat keeps the plain weights.

    Args:
        operator: A `LatticeOperator` without an output scale.
        scale: (B, N, 1) factors, one per point.

    Returns:
        The scaled `LatticeOperator` (its gradient is the transposed, scaled filter).
    """
    if operator.output_scale is not None:
        raise ValueError("the operator already has an output scale")
    matrix = operator.slice_matrix
    scale = tf.reshape(tf.cast(scale, tf.float32), [-1, 1])
    values = matrix.values * tf.gather(scale[:, 0], matrix.indices[:, 0])
    return operator._replace(
        output_scale=scale,
        scaled_slice=matrix._replace(values=values),
    )


def lattice_operator(lattice: Lattice | LatticeOperator) -> LatticeOperator:
    """Builds the sparse matrices of the lattice's filter (all index arithmetic, once).

    Args:
        lattice: A `Lattice` from either implementation (or a `LatticeOperator`, returned
            as is).

    Returns:
        The `LatticeOperator`; `filter_lattice` accepts it in place of the lattice.
    """
    if isinstance(lattice, LatticeOperator):
        return lattice
    indices = tf.cast(lattice.splat_indices, tf.int64)
    d1 = indices.shape[-1]
    if d1 is None:
        raise ValueError("the lattice's last dimension (d+1) must be static")
    shape = tf.shape(indices, out_type=tf.int64)
    batch, points = shape[0], shape[1]
    max_points = tf.shape(lattice.blur_neighbors, out_type=tf.int64)[1]
    rows = batch * max_points
    check = tf.debugging.Assert(
        tf.maximum(batch * points, rows) < 2**31, ["too many points for int32 sparse indices"]
    )
    with tf.control_dependencies([check]):
        indices = tf.identity(indices)
    base = tf.range(batch, dtype=tf.int64)[:, None, None] * max_points  # (B, 1, 1)

    point = tf.reshape(tf.repeat(tf.range(batch * points)[:, None], d1, axis=1), [-1])
    slice_matrix = _sparse_matrix(
        tf.stack([point, tf.reshape(indices + base, [-1])], axis=1),
        tf.reshape(tf.cast(lattice.barycentric_weights, tf.float32), [-1]),
        tf.stack([batch * points, rows]),
    )

    # All directions at once: (d+1, L, 3) columns [self, n1, n2] and values [1, 1/2, 1/2].
    neighbours = tf.cast(lattice.blur_neighbors, tf.int64)  # (B, M, d+1, 2)
    valid = neighbours >= 0
    row = tf.reshape(tf.range(rows, dtype=tf.int64), [1, -1, 1])
    pairs = tf.transpose(tf.reshape(neighbours + base[..., None], [rows, d1, 2]), [1, 0, 2])
    valid = tf.transpose(tf.reshape(valid, [rows, d1, 2]), [1, 0, 2])
    pairs = tf.where(valid, pairs, row)
    columns = tf.concat([tf.broadcast_to(row, [d1, rows, 1]), pairs], axis=2)
    values = tf.concat([tf.ones([d1, rows, 1]), 0.5 * tf.cast(valid, tf.float32)], axis=2)
    # The slice's factor alpha = 1 / (1 + 2^-d), folded into direction 0 (the product is
    # linear): one pass less over the (P, C) output per filtering.
    alpha = 1.0 / (1.0 + 2.0 ** -(d1 - 1))
    values = values * tf.constant([alpha] + [1.0] * (d1 - 1), tf.float32)[:, None, None]
    row_ids = tf.reshape(tf.broadcast_to(row, [1, rows, 3]), [-1])
    dense_shape = tf.stack([rows, rows])
    blur_matrices = tuple(
        _sparse_matrix(
            tf.stack([row_ids, tf.reshape(c, [-1])], 1), tf.reshape(v, [-1]), dense_shape
        )
        for c, v in zip(tf.unstack(columns, num=d1), tf.unstack(values, num=d1))
    )
    return LatticeOperator(lattice, slice_matrix, blur_matrices)


def _apply(flat: tf.Tensor, operator: LatticeOperator, reverse: bool) -> tf.Tensor:
    """The filter of (P, C) values: splat, blur, slice, as sparse-dense products."""
    lattice_values = _matmul(operator.slice_matrix, flat, adjoint=True)  # splat
    blur = operator.blur_matrices
    for matrix in reversed(blur) if reverse else blur:
        lattice_values = _matmul(matrix, lattice_values)
    slice_matrix = operator.slice_matrix if operator.scaled_slice is None else operator.scaled_slice
    return _matmul(slice_matrix, lattice_values)  # slice


def filter_lattice(
    values: tf.Tensor, lattice: Lattice | LatticeOperator, reverse: bool = False
) -> tf.Tensor:
    """Splat, blur along the d+1 lattice directions, slice (the op's filter, in stock TF).

    Each step is a product with a fixed sparse matrix (`lattice_operator`): pass a
    `LatticeOperator` to filter many value tensors with one lattice without rebuilding it.
    The gradient with respect to `values` is the transposed filter (blur order reversed), as
    the op's; there is none with respect to the lattice.

    Args:
        values: (B, N, C) float32 or float64 values at the points.
        lattice: The lattice of the same points (from either implementation), or its
            `LatticeOperator`.
        reverse: Blur the directions in reverse order (the transpose of the filter).

    Returns:
        (B, N, C) filtered values, same dtype as `values`.
    """
    operator = lattice_operator(lattice)
    values = tf.convert_to_tensor(values)
    if values.dtype not in (tf.float32, tf.float64):
        raise ValueError(f"values must be float32 or float64, got {values.dtype}")

    @tf.custom_gradient
    def _filter(v):
        shape = tf.shape(v)
        flat = tf.reshape(v, tf.stack([-1, shape[2]]))
        out = tf.reshape(_apply(flat, operator, reverse), shape)

        def grad(upstream):
            # (D F)^T = F^T D: scale, then the reversed filter without the scale.
            if operator.output_scale is None:
                return filter_lattice(upstream, operator, reverse=not reverse)
            scale = tf.reshape(tf.cast(operator.output_scale, upstream.dtype), tf.shape(v)[:2])
            plain = operator._replace(output_scale=None, scaled_slice=None)
            return filter_lattice(upstream * scale[..., None], plain, reverse=not reverse)

        return out, grad

    return _filter(values)
