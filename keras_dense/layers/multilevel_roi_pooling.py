"""RoI pooling on a feature pyramid (FPN, Lin et al. 2017, Eq. 1).

A region of interest of width w and height h (input pixels) is pooled from pyramid level

    k = floor(k0 + log2(sqrt(w * h) / 224)),   k0 = 4, clamped to [2, 5],

so a 224 x 224 RoI (ImageNet's canonical size) reads P4 and every halving of its side reads
one level finer. Sizes follow the inclusive-pixel convention of `keras_dense.detection.boxes`
(`w = xmax - xmin + 1`); padding rows (all zeros, w = h = 1) read the finest level.

`fpn_levels` evaluates the formula exactly, without a logarithm: `k >= k0 + j` exactly when
`w * h >= (224 * 2**j)**2`, so the level is the lowest level plus the number of such
thresholds the area reaches. `MultiLevelRoIPooling` pools every RoI on every level with
`keras_dense.layers.RoIPooling`'s RoIAlign (or RoI max pooling) at that level's scale
`2**-k` and keeps, per RoI, the result of its own level (one `tf.where` per level: no loop
over RoIs, and gradients reach only the selected level).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.layers.roi_pooling import RoIPooling, roi_align, roi_max_pool

MIN_LEVEL = 2
MAX_LEVEL = 5
CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 4


def fpn_levels(
    rois,
    min_level: int = MIN_LEVEL,
    max_level: int = MAX_LEVEL,
    canonical_size: float = CANONICAL_SIZE,
    canonical_level: int = CANONICAL_LEVEL,
) -> tf.Tensor:
    """The pyramid level of each RoI (FPN's Eq. 1, see the module docstring).

    Args:
        rois: (..., 4) `[ymin, xmin, ymax, xmax]` in input pixels, inclusive.
        min_level: The finest level (2: P2).
        max_level: The coarsest level (5: P5).
        canonical_size: The RoI side that maps to `canonical_level` (224).
        canonical_level: k0 (4).

    Returns:
        (...) int32 levels in `[min_level, max_level]`.
    """
    rois = tf.cast(rois, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(rois, 4, axis=-1)
    area = tf.maximum(ymax - ymin + 1.0, 0.0) * tf.maximum(xmax - xmin + 1.0, 0.0)
    level = tf.fill(tf.shape(area), min_level)
    for above in range(min_level + 1, max_level + 1):
        side = float(canonical_size) * 2.0 ** (above - canonical_level)
        level += tf.cast(area >= side * side, tf.int32)
    return level


@keras.saving.register_keras_serializable(package="keras_dense")
class MultiLevelRoIPooling(RoIPooling):
    """Pools each RoI from the pyramid level its size selects (FPN; module docstring).

    Inputs are `[P_min, ..., P_max, rois]`: one feature map (B, H_k, W_k, C) per level,
    finest first, each at stride `2**k`, then `rois` (B, R, 4) yxyx in input pixels.
    Output: (B, R, pool_h, pool_w, C), as `RoIPooling`'s.

    A subclass of `RoIPooling`: `use_portable_roi_pooling` switches it to stock TF ops too.

    Args:
        pool_size: Output grid, an int or `(pool_h, pool_w)` (7).
        mode: `"align"` (RoIAlign, FPN's and Mask R-CNN's) or `"max"` (RoI max pooling).
        sampling_ratio: `"align"` only: bilinear samples per bin along each axis (2).
        implementation: `"max"` only: see `RoIPooling`.
        min_level: Level of the first feature map (2: P2 at stride 4).
        max_level: Level of the last feature map (5: P5 at stride 32).
        canonical_size: RoI side that maps to `canonical_level` (224).
        canonical_level: k0 (4).
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 7,
        mode: str = "align",
        sampling_ratio: int = 2,
        implementation: str = "auto",
        min_level: int = MIN_LEVEL,
        max_level: int = MAX_LEVEL,
        canonical_size: float = CANONICAL_SIZE,
        canonical_level: int = CANONICAL_LEVEL,
        **kwargs,
    ):
        for name, value in (("min_level", min_level), ("max_level", max_level)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: expected an int >= 0")
        if max_level < min_level:
            raise ValueError(f"max_level={max_level!r}: expected >= min_level={min_level!r}")
        if isinstance(canonical_level, bool) or not isinstance(canonical_level, int):
            raise ValueError(f"canonical_level={canonical_level!r}: expected an int")
        if isinstance(canonical_size, bool) or not canonical_size > 0:
            raise ValueError(f"canonical_size={canonical_size!r}: expected a positive number")
        kwargs.pop("spatial_scale", None)  # each level has its own, 2**-level
        super().__init__(
            pool_size,
            2.0**-min_level,
            mode=mode,
            sampling_ratio=sampling_ratio,
            implementation=implementation,
            **kwargs,
        )
        self.min_level = min_level
        self.max_level = max_level
        self.canonical_size = float(canonical_size)
        self.canonical_level = canonical_level

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != self.num_levels + 1:
            got = len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(
                f"MultiLevelRoIPooling inputs: expected [{self.num_levels} feature maps "
                f"(levels {self.min_level}..{self.max_level}), rois], got {got}"
            )
        return list(inputs[:-1]), inputs[-1]

    def call(self, inputs):
        features, rois = self._split(inputs)
        levels = fpn_levels(
            tf.stop_gradient(rois),
            self.min_level,
            self.max_level,
            self.canonical_size,
            self.canonical_level,
        )[..., None, None, None]
        output = None
        for level, feature in enumerate(features, start=self.min_level):
            scale = 2.0**-level
            if self.mode == "max":
                pooled = roi_max_pool(feature, rois, self.pool_size, scale, self.implementation)
            else:
                pooled = roi_align(feature, rois, self.pool_size, scale, self.sampling_ratio)
            output = pooled if output is None else tf.where(levels == level, pooled, output)
        return output

    def compute_output_shape(self, input_shapes):
        features, rois = self._split(input_shapes)
        return (features[0][0], rois[1], *self.pool_size, features[0][3])

    def get_config(self):
        config = super().get_config()
        config.pop("spatial_scale")
        config.update(
            {
                "min_level": self.min_level,
                "max_level": self.max_level,
                "canonical_size": self.canonical_size,
                "canonical_level": self.canonical_level,
            }
        )
        return config
