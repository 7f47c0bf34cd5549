"""Region-of-interest pooling: Fast R-CNN's RoI max pooling and Mask R-CNN's RoIAlign.

`mode="max"` reproduces the Caffe `ROIPoolingLayer` of Fast R-CNN (Girshick, 2015):

1. every RoI coordinate is multiplied by `spatial_scale` and rounded half away from zero
   (C's `round`);
2. RoI height/width = end - start + 1, floored at 1;
3. bin `i` spans `floor(i * size / pool)` to `ceil((i + 1) * size / pool)`, offset by the RoI
   start and clipped to the feature map. As in Caffe, `size / pool` is a float32 quotient and
   the products are float32: for a few sizes (57, 114, 121, ... with pool 7) this makes the
   last bin end one cell past the exact rational value, exactly as the Caffe layer does;
4. an empty bin outputs 0, any other bin the maximum over its cells.

Implementations (`implementation=`): identical outputs, and gradients sent to the same
argmax cells (equal up to the order of float summation where bins share a cell; in half
precision the kernel sums in float32 before rounding). `"custom_op"` is the compiled CPU
kernel pair of `keras_dense/ops/roi_pooling_ops.cc` (Caffe's loop, vectorised over channels
and split over TensorFlow's intra-op threads; the backward pass rescans each bin for its
argmax instead of storing one int32 per output); `"tf"` is the stock-TF path below (GPU,
SavedModel / TF Serving). `"auto"` takes the kernel when it builds or loads, no GPU is
visible and the features are float32, float16 or bfloat16 (half precision is widened to
float32 exactly); otherwise, or without a C++ compiler (one warning), the stock-TF path.

Stock-TF design (no loop over RoIs or bins, memory independent of the bin areas): a 2-D
sparse table `T[k, l][h, w] = max(F[h : h + 2**k, w : w + 2**l])` is built once per image,
for the levels k, l that some bin needs (`floor(log2(largest bin extent))`, so 3 x 3 levels
for RoIs inside a 38 x 50 map: 9 copies of the map, 35 MB at 512 channels). The maximum over
any bin `[h0, h1) x [w0, w1)` is then the maximum of four table entries (the four
overlapping power-of-two windows anchored at the bin's corners), so pooling R RoIs costs one
gather of 4 x the output size (B, R, pool, pool, C) and a max over the four. Empty bins read
an all-zero row. Peak extra memory is about 5 x the output (1 GB for R = 2000 at 7 x 7 x 512).

Gradient: all of it goes to the single argmax of each bin, chosen as in Caffe (the first
maximal cell in row-major order inside the bin; Caffe scans rows then columns and keeps a
value only if it is strictly greater). The backward pass rebuilds the table with (value, flat
index) pairs combined by "larger value, then smaller index", which is associative, so the four
overlapping windows give exactly Caffe's argmax. Empty bins get no gradient and RoI
coordinates get a zero gradient (they are rounded). Unlike a `tf.reduce_max` over a masked
bin, ties are therefore not split between the tied cells.

`mode="align"` is RoIAlign as in Mask R-CNN / Detectron (the original, non-"aligned"
variant): no rounding, RoI size = max(end - start, 1) in feature cells, each bin averages
`sampling_ratio**2` bilinear samples at the centres of a regular sub-grid; samples more than
one cell outside the map contribute 0, samples in the border band are clamped to the edge.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from keras_dense.layers.walk import iter_layers, reset_compiled_functions
from keras_dense.ops import loader
from keras_dense.ops.permutohedral import check_implementation, resolve_implementation

# Feature dtypes the compiled kernel takes (half precision is widened to float32 exactly, and
# the maximum of widened values narrows back exactly); float64 uses the pure-TF path.
_KERNEL_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def round_half_away_from_zero(x: tf.Tensor) -> tf.Tensor:
    """C's `round`: halves go away from zero (tf.round would round them to even)."""
    magnitude = tf.abs(x)
    floor = tf.floor(magnitude)
    rounded = floor + tf.cast(magnitude - floor >= 0.5, x.dtype)
    return tf.sign(x) * rounded


def floor_log2(x: tf.Tensor) -> tf.Tensor:
    """Exact floor(log2(x)) of positive int32 values (0 for x <= 1)."""
    powers = tf.bitwise.left_shift(tf.ones([30], tf.int32), tf.range(1, 31, dtype=tf.int32))
    return tf.reduce_sum(tf.cast(x[..., None] >= powers, tf.int32), axis=-1)


def caffe_bin_edges(
    start: tf.Tensor, end: tf.Tensor, pooled: int, limit: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Bin edges of Caffe's RoI pooling along one axis.

    Args:
        start: int32 (...,) rounded RoI start in feature cells.
        end: int32 (...,) rounded RoI end (inclusive) in feature cells.
        pooled: Number of bins.
        limit: Feature-map size along the axis (bins are clipped to [0, limit]).

    Returns:
        `(bin_start, bin_end)`, int32 (..., pooled), half-open cell ranges.
    """
    size = tf.cast(tf.maximum(end - start + 1, 1), tf.float64)
    # Caffe's float32 quotient size / pooled. Grappler rewrites a float32 division by a
    # constant into a multiplication by its (rounded) reciprocal, which is not correctly
    # rounded (7 / 3 -> 2.3333335 instead of 2.3333333); in float64 the same rewrite is far
    # below float32 resolution, so the cast gives the correctly rounded float32 quotient.
    bin_size = tf.cast(size[..., None] / tf.cast(pooled, tf.float64), tf.float32)
    index = tf.range(pooled, dtype=tf.float32)
    lower = tf.cast(tf.floor(index * bin_size), tf.int32) + start[..., None]
    upper = tf.cast(tf.math.ceil((index + 1.0) * bin_size), tf.int32) + start[..., None]
    return tf.clip_by_value(lower, 0, limit), tf.clip_by_value(upper, 0, limit)


def _shift_gather(x: tf.Tensor, shift: tf.Tensor, axis: int, size: tf.Tensor) -> tf.Tensor:
    """`x` read at index `min(i + shift, size - 1)` along `axis`."""
    index = tf.minimum(tf.range(size) + shift, size - 1)
    shifted = tf.gather(x, index, axis=axis)
    shifted.set_shape(x.shape)
    return shifted


def _build_levels(level0, combine, axis: int, size: tf.Tensor, count: tf.Tensor):
    """Stacks `count` power-of-two window levels of `level0` along `axis` (new leading axis).

    `level0` is a tuple of tensors (values, or values and indices); `combine(a, b)` merges two
    such tuples. Level `j` holds the reduction over `[i, i + 2**j)`, clamped at the border.
    """
    arrays = tuple(
        tf.TensorArray(t.dtype, size=count, element_shape=t.shape).write(0, t) for t in level0
    )

    def body(j, previous, arrays):
        shift = tf.bitwise.left_shift(1, j - 1)
        shifted = tuple(_shift_gather(t, shift, axis, size) for t in previous)
        current = combine(previous, shifted)
        arrays = tuple(a.write(j, t) for a, t in zip(arrays, current))
        return j + 1, current, arrays

    _, _, arrays = tf.while_loop(lambda j, *_: j < count, body, (tf.constant(1), level0, arrays))
    return tuple(a.stack() for a in arrays)


def _combine_max(a, b):
    return (tf.maximum(a[0], b[0]),)


def _combine_argmax(a, b):
    take_b = (b[0] > a[0]) | ((b[0] == a[0]) & (b[1] < a[1]))
    return tf.where(take_b, b[0], a[0]), tf.where(take_b, b[1], a[1])


class _BinQuery:
    """Flat table indices of the four corner windows of every (roi, bin_y, bin_x)."""

    def __init__(self, features: tf.Tensor, rois: tf.Tensor, pool: tuple[int, int], scale):
        shape = tf.shape(features)
        self.batch, self.height, self.width = shape[0], shape[1], shape[2]
        scaled = round_half_away_from_zero(tf.cast(rois, tf.float32) * tf.cast(scale, tf.float32))
        scaled = tf.cast(tf.clip_by_value(scaled, -(2.0**24), 2.0**24), tf.int32)
        y0, x0, y1, x1 = tf.unstack(scaled, axis=-1)
        hs, he = caffe_bin_edges(y0, y1, pool[0], self.height)  # (B, R, Ph)
        ws, we = caffe_bin_edges(x0, x1, pool[1], self.width)  # (B, R, Pw)
        self.empty = (he <= hs)[..., :, None] | (we <= ws)[..., None, :]  # (B, R, Ph, Pw)
        k = floor_log2(tf.maximum(he - hs, 1))
        lvl = floor_log2(tf.maximum(we - ws, 1))
        # Start rows/columns of the two windows covering the bin along each axis (in range
        # for every non-empty bin: 0 <= start < end <= size).
        rows = [hs, he - tf.bitwise.left_shift(1, k)]
        cols = [ws, we - tf.bitwise.left_shift(1, lvl)]
        # Only the levels some bin uses are built: a bin of extent e needs floor(log2(e)).
        self.levels_h = tf.maximum(tf.reduce_max(k), 0) + 1
        self.levels_w = tf.maximum(tf.reduce_max(lvl), 0) + 1
        b = tf.range(self.batch)[:, None, None, None]
        plane = self.height * self.width
        base = ((k[..., :, None] * self.levels_w + lvl[..., None, :]) * self.batch + b) * plane
        # Empty bins read an extra all-zero row appended to the table: their output is 0
        # without a separate masking pass.
        self.zero_row = self.levels_h * self.levels_w * self.batch * plane
        self.corners = [
            tf.where(
                self.empty, self.zero_row, base + r[..., :, None] * self.width + c[..., None, :]
            )
            for r in rows
            for c in cols
        ]

    def _flat(self, table: tf.Tensor) -> tf.Tensor:
        channels = tf.shape(table)[-1]
        flat = tf.reshape(table, [-1, channels])
        return tf.concat([flat, tf.zeros([1, channels], flat.dtype)], axis=0)

    def max(self, table: tf.Tensor) -> tf.Tensor:
        """Maximum over every bin (0 for empty bins): (B, R, Ph, Pw, C)."""
        picked = tf.gather(self._flat(table), tf.stack(self.corners, axis=-1))
        return tf.reduce_max(picked, axis=-2)

    def argmax(self, values: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        """Caffe's argmax (flat h * W + w) of every bin; arbitrary for empty bins."""
        values, indices = self._flat(values), self._flat(indices)
        result = None
        for corner in self.corners:
            picked = (tf.gather(values, corner), tf.gather(indices, corner))
            result = picked if result is None else _combine_argmax(result, picked)
        return result[1]


def _sparse_table(features: tf.Tensor, query: _BinQuery, with_index: bool):
    """2-D sparse table (Lh, Lw, B, H, W, C) of window maxima (and their flat argmax)."""
    shape = tf.shape(features)
    height, width = shape[1], shape[2]
    if with_index:
        position = tf.reshape(tf.range(height * width), [1, height, width, 1])
        level0 = (features, tf.broadcast_to(position, shape))
        combine = _combine_argmax
    else:
        level0 = (features,)
        combine = _combine_max
    along_w = _build_levels(level0, combine, 2, width, query.levels_w)  # (Lw, B, H, W, C)
    # Levels along H are built on top of every W level: axis 2 of (Lw, B, H, W, C) is H.
    return _build_levels(along_w, combine, 2, height, query.levels_h)  # (Lh, Lw, B, H, W, C)


def _roi_max_pool_tf(
    features: tf.Tensor, rois: tf.Tensor, pool_size: tuple[int, int], spatial_scale: float
) -> tf.Tensor:
    """The pure-TF RoI max pooling (sparse table, see the module docstring)."""

    @tf.custom_gradient
    def pool(features, rois):
        query = _BinQuery(features, rois, pool_size, spatial_scale)
        (table,) = _sparse_table(features, query, False)
        output = query.max(table)
        empty = query.empty[..., None]

        def grad(upstream):
            argmax = query.argmax(*_sparse_table(features, query, True))
            channels = tf.shape(features)[-1]
            image = tf.range(query.batch)[:, None, None, None, None]
            position = image * (query.height * query.width) + argmax  # cell in (B*H*W)
            segment = position * channels + tf.range(channels)
            upstream = tf.where(empty, tf.zeros_like(upstream), upstream)
            size = tf.size(features)
            flat = tf.math.unsorted_segment_sum(
                tf.reshape(upstream, [-1]), tf.reshape(segment, [-1]), size
            )
            return tf.reshape(flat, tf.shape(features)), tf.zeros_like(rois)

        return output, grad

    return pool(features, rois)


def _roi_max_pool_kernel(
    features: tf.Tensor, rois: tf.Tensor, pool_size: tuple[int, int], spatial_scale: float
) -> tf.Tensor:
    """The same pooling with the compiled CPU kernels of `roi_pooling_ops.cc`.

    Half-precision features are widened to float32 for the kernels and the results narrowed
    back (exact for the maximum; the gradient is summed in float32 before narrowing).
    """
    library = loader.load_library()
    attrs = {
        "pooled_height": int(pool_size[0]),
        "pooled_width": int(pool_size[1]),
        "spatial_scale": float(spatial_scale),
    }
    dtype = features.dtype

    @tf.custom_gradient
    def pool(features, rois):
        wide = tf.cast(features, tf.float32)
        output = library.keras_dense_roi_max_pool(wide, rois, **attrs)

        def grad(upstream):
            upstream = tf.cast(upstream, tf.float32)
            features_grad = library.keras_dense_roi_max_pool_grad(wide, rois, upstream, **attrs)
            return tf.cast(features_grad, dtype), tf.zeros_like(rois)

        return tf.cast(output, dtype), grad

    return pool(features, rois)


@functools.cache
def _has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (the compiled kernels are CPU-only)."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_roi_implementation(implementation: str, dtype: tf.DType) -> str:
    """Turns `"auto"` into `"custom_op"` or `"tf"` for RoI max pooling.

    Args:
        implementation: `"auto"`, `"custom_op"` or `"tf"`.
        dtype: The feature dtype.

    Returns:
        `"custom_op"` or `"tf"`. `"auto"` takes the compiled kernel when it builds or loads,
        no GPU is visible (the kernel is CPU-only) and the dtype is float32 or half precision.

    Raises:
        ValueError: Unknown implementation, or `"custom_op"` with an unsupported dtype.
        OpBuildError: The kernel is needed and could not be built or loaded.
    """
    check_implementation(implementation)
    supported = dtype in _KERNEL_DTYPES
    if implementation == "custom_op" and not supported:
        raise ValueError(f"implementation='custom_op' takes {_KERNEL_DTYPES}, got {dtype}")
    if implementation == "auto" and (not supported or _has_gpu()):
        return "tf"
    return resolve_implementation(implementation)


def roi_max_pool(
    features: tf.Tensor,
    rois: tf.Tensor,
    pool_size: tuple[int, int],
    spatial_scale: float,
    implementation: str = "auto",
) -> tf.Tensor:
    """Caffe Fast R-CNN RoI max pooling (see the module docstring) with argmax gradient.

    Args:
        features: (B, Hf, Wf, C) feature map.
        rois: (B, R, 4) `[ymin, xmin, ymax, xmax]` in input pixels, inclusive.
        pool_size: `(pool_h, pool_w)`.
        spatial_scale: Feature cells per input pixel (1/16 for VGG16 conv5).
        implementation: `"custom_op"` (compiled CPU kernels), `"tf"` (stock TF ops: GPU,
            SavedModel) or `"auto"` (see `resolve_roi_implementation`). Both give identical
            outputs and the same argmax gradient (up to float summation order).

    Returns:
        (B, R, pool_h, pool_w, C) pooled features.
    """
    features = tf.convert_to_tensor(features)
    rois = tf.stop_gradient(tf.cast(rois, tf.float32))
    if resolve_roi_implementation(implementation, features.dtype) == "custom_op":
        return _roi_max_pool_kernel(features, rois, pool_size, spatial_scale)
    return _roi_max_pool_tf(features, rois, pool_size, spatial_scale)


def _bilinear_corners(coord: tf.Tensor, size: tf.Tensor):
    """Detectron's bilinear sample positions along one axis.

    Returns `(low, high, weight_low, weight_high, valid)` for coordinates `coord`.
    """
    limit = tf.cast(size, coord.dtype)
    valid = (coord >= -1.0) & (coord <= limit)
    coord = tf.maximum(coord, 0.0)
    low = tf.floor(coord)
    at_edge = low >= limit - 1.0
    low = tf.where(at_edge, limit - 1.0, low)
    high = tf.where(at_edge, low, low + 1.0)
    coord = tf.where(at_edge, low, coord)
    frac = coord - low
    return tf.cast(low, tf.int32), tf.cast(high, tf.int32), 1.0 - frac, frac, valid


def roi_align(
    features: tf.Tensor, rois: tf.Tensor, pool_size, spatial_scale, sampling_ratio: int
) -> tf.Tensor:
    """RoIAlign (Mask R-CNN, Detectron's original variant) with bilinear sampling.

    Args:
        features: (B, Hf, Wf, C) feature map.
        rois: (B, R, 4) `[ymin, xmin, ymax, xmax]` in input pixels.
        pool_size: `(pool_h, pool_w)`.
        spatial_scale: Feature cells per input pixel.
        sampling_ratio: Samples per bin along each axis (the bin averages `ratio**2` samples).

    Returns:
        (B, R, pool_h, pool_w, C) pooled features.
    """
    shape = tf.shape(features)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    dtype = features.dtype
    scaled = tf.cast(tf.stop_gradient(rois), tf.float32) * tf.cast(spatial_scale, tf.float32)
    y0, x0, y1, x1 = tf.unstack(scaled, axis=-1)
    bin_h = tf.maximum(y1 - y0, 1.0) / pool_size[0]
    bin_w = tf.maximum(x1 - x0, 1.0) / pool_size[1]
    index_h = tf.range(pool_size[0], dtype=tf.float32)
    index_w = tf.range(pool_size[1], dtype=tf.float32)
    flat = tf.reshape(features, [-1, channels])
    image = tf.range(batch)[:, None, None, None] * (height * width)
    total = None
    for iy in range(sampling_ratio):
        y = y0[..., None] + (index_h + (iy + 0.5) / sampling_ratio) * bin_h[..., None]
        y_low, y_high, wy_low, wy_high, y_ok = _bilinear_corners(y, height)
        for ix in range(sampling_ratio):
            x = x0[..., None] + (index_w + (ix + 0.5) / sampling_ratio) * bin_w[..., None]
            x_low, x_high, wx_low, wx_high, x_ok = _bilinear_corners(x, width)
            valid = tf.cast(y_ok[..., :, None] & x_ok[..., None, :], tf.float32)
            sample = None
            for rows, wy in ((y_low, wy_low), (y_high, wy_high)):
                for cols, wx in ((x_low, wx_low), (x_high, wx_high)):
                    index = image + rows[..., :, None] * width + cols[..., None, :]
                    weight = wy[..., :, None] * wx[..., None, :] * valid
                    term = tf.gather(flat, index) * tf.cast(weight[..., None], dtype)
                    sample = term if sample is None else sample + term
            total = sample if total is None else total + sample
    return total / tf.cast(sampling_ratio * sampling_ratio, dtype)


@keras.saving.register_keras_serializable(package="keras_dense")
class RoIPooling(keras.layers.Layer):
    """Pools every region of interest of a feature map into a fixed grid.

    Inputs are `[features, rois]`:
    - `features`: (B, Hf, Wf, C);
    - `rois`: (B, R, 4) float `[ymin, xmin, ymax, xmax]` in input-image pixel coordinates
      (inclusive), R may be dynamic. Padding rows are pooled like any other RoI.

    Output: (B, R, pool_h, pool_w, C).

    Args:
        pool_size: Output grid, an int or `(pool_h, pool_w)` (Fast R-CNN: 7).
        spatial_scale: Feature cells per input pixel (1/16 for VGG16 conv5_3).
        mode: `"max"` (Fast R-CNN RoI max pooling, Caffe semantics, see the module docstring)
            or `"align"` (RoIAlign with bilinear sampling, Mask R-CNN semantics).
        sampling_ratio: `"align"` only: bilinear samples per bin along each axis.
        implementation: `"max"` only: `"auto"` (the compiled CPU kernel when it can be built
            and no GPU is visible, else stock TF ops), `"custom_op"` or `"tf"` (stock TF ops
            only, for GPUs and SavedModel export; see `use_portable_roi_pooling`). Outputs
            are identical, gradients equal up to float summation order.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 7,
        spatial_scale: float = 1.0 / 16.0,
        mode: str = "max",
        sampling_ratio: int = 2,
        implementation: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(pool_size, int):
            pool_size = (pool_size, pool_size)
        pool_size = tuple(pool_size)
        if len(pool_size) != 2 or not all(isinstance(p, int) and p >= 1 for p in pool_size):
            raise ValueError(
                f"pool_size={pool_size!r}: expected a positive int or a pair of positive ints"
            )
        if not spatial_scale > 0:
            raise ValueError(f"spatial_scale={spatial_scale!r}: expected a positive number")
        if mode not in ("max", "align"):
            raise ValueError(f"mode={mode!r}: expected 'max' or 'align'")
        if not isinstance(sampling_ratio, int) or sampling_ratio < 1:
            raise ValueError(f"sampling_ratio={sampling_ratio!r}: expected an int >= 1")
        self.pool_size = pool_size
        self.spatial_scale = float(spatial_scale)
        self.mode = mode
        self.sampling_ratio = sampling_ratio
        self.implementation = check_implementation(implementation)

    def call(self, inputs):
        features, rois = inputs
        if self.mode == "max":
            return roi_max_pool(
                features, rois, self.pool_size, self.spatial_scale, self.implementation
            )
        return roi_align(features, rois, self.pool_size, self.spatial_scale, self.sampling_ratio)

    def compute_output_shape(self, input_shapes):
        features_shape, rois_shape = input_shapes
        return (features_shape[0], rois_shape[1], *self.pool_size, features_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": list(self.pool_size),
                "spatial_scale": self.spatial_scale,
                "mode": self.mode,
                "sampling_ratio": self.sampling_ratio,
                "implementation": self.implementation,
            }
        )
        return config


def use_portable_roi_pooling(model: keras.Model) -> keras.Model:
    """Switches every RoIPooling layer of `model` to stock TF ops (`implementation="tf"`).

    Do this before exporting a SavedModel (TF Serving cannot load custom ops). Outputs and
    gradients are unchanged.

    Args:
        model: A Keras model, possibly with nested models.

    Returns:
        The same model.
    """
    for layer in iter_layers(model):
        if isinstance(layer, RoIPooling):
            layer.implementation = "tf"
    reset_compiled_functions(model)
    return model
