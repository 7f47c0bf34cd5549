"""Spatial poolings for weakly supervised localisation: from class maps to image scores.

A weakly supervised classifier computes class maps `(B, h, w, C)` (a 1x1 convolution on the
backbone features) and pools them into image-level scores `(B, C)`, trained with image labels
only. The pooling decides which positions receive gradient:

- `GlobalLSEPooling2D`: log-sum-exp (Pinheiro & Collobert, CVPR 2015), a smooth
  interpolation between global average (`r -> 0`) and global max (`r -> inf`) pooling.
- `WeldonPooling2D`: the mean of the `k_max` highest plus `alpha` times the mean of the
  `k_min` lowest values (WELDON, Durand et al., CVPR 2016; WILDCAT's spatial pooling with
  `alpha < 1`).
- `ClassWisePooling2D`: averages `M` maps per class (WILDCAT, Durand et al., CVPR 2017),
  `(B, h, w, C * M) -> (B, h, w, C)`.

Global average and global max pooling are Keras' `GlobalAveragePooling2D` and
`GlobalMaxPooling2D`. All layers accept any (dynamic) height and width.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
from keras import ops


def _flatten_positions(x):
    """(B, H, W, C) -> (B, C, H * W)."""
    shape = ops.shape(x)
    flat = ops.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))
    return ops.transpose(flat, (0, 2, 1))


def _check_spatial_input(layer_name: str, input_shape) -> None:
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer_name} expects (batch, height, width, channels) inputs, got the shape "
            f"{tuple(input_shape)}"
        )


def _inverse_softplus(value: float) -> float:
    """`rho` with `softplus(rho) == value` (> 0), stable for large and small values."""
    return float(value + np.log(-np.expm1(-value)))


@keras.saving.register_keras_serializable(package="keras_dense")
class GlobalLSEPooling2D(keras.layers.Layer):
    """Log-sum-exp pooling over height and width (Pinheiro & Collobert, CVPR 2015).

    Per channel, `y = (1 / r) * log((1 / N) * sum_ij exp(r * z_ij))` over the `N = H * W`
    positions. Computed stably as `m + (1 / r) * log1p(mean(expm1(r * (z - m))))` with `m` the
    maximum of the map, in float32 whatever the compute dtype (the result is cast back): no
    overflow for large `r`, no cancellation for small `r`. `r -> 0` gives the mean, `r -> inf`
    the maximum; for every `r > 0` the value lies between the two.

    With `trainable_r=True`, `r` is learnt: the layer holds one weight `rho` (float32, a
    scalar shared by all channels) and uses `r = softplus(rho)`, so `r` stays positive; `rho`
    starts at `softplus^-1(r)`. `get_config` keeps the initial `r`; the learnt value is in
    the weights (see the `current_r` property).

    Args:
        r: The sharpness, a positive finite number (Pinheiro & Collobert use 5 to 10).
        trainable_r: Learn `r` (softplus parameterisation).
        **kwargs: Standard layer keyword arguments.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, channels)`.
    """

    def __init__(self, r: float = 5.0, trainable_r: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r < math.inf:
            raise ValueError(f"r must be a positive finite number, got {r!r}")
        if not isinstance(trainable_r, bool):
            raise ValueError(f"trainable_r must be True or False, got {trainable_r!r}")
        self.r = float(r)
        self.trainable_r = trainable_r
        self.rho = None

    def build(self, input_shape):
        _check_spatial_input(type(self).__name__, input_shape)
        if self.trainable_r:
            self.rho = self.add_weight(
                name="rho",
                shape=(),
                initializer=keras.initializers.Constant(_inverse_softplus(self.r)),
                dtype="float32",
                trainable=True,
            )

    @property
    def current_r(self) -> float:
        """The `r` in use: `softplus(rho)` when learnt, else the constructor's `r`."""
        if self.rho is None:
            return self.r
        return float(ops.convert_to_numpy(ops.softplus(ops.cast(self.rho, "float32"))))

    def call(self, inputs):
        z = _flatten_positions(ops.cast(inputs, "float32"))  # (B, C, N)
        if self.rho is None:
            r = ops.convert_to_tensor(self.r, "float32")
        else:
            r = ops.softplus(ops.cast(self.rho, "float32"))
        peak = ops.max(z, axis=-1, keepdims=True)
        spread = ops.log1p(ops.mean(ops.expm1(r * (z - peak)), axis=-1))
        return ops.cast(ops.squeeze(peak, -1) + spread / r, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"r": self.r, "trainable_r": self.trainable_r})
        return config


def _check_k(name: str, value, allow_zero: bool):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an int count or a float in (0, 1), got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < (0 if allow_zero else 1):
            lowest = "0" if allow_zero else "1"
            raise ValueError(f"{name} must be an int >= {lowest} or a float in (0, 1), got {value}")
        return int(value)
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"{name}={value!r}: a float is a fraction of the positions and must be in (0, 1); "
            "use an int for a count"
        )
    return float(value)


@keras.saving.register_keras_serializable(package="keras_dense")
class WeldonPooling2D(keras.layers.Layer):
    """Max + min pooling over height and width (WELDON, Durand et al., CVPR 2016).

    Per channel, `y = mean(top k_max values) + alpha * mean(bottom k_min values)` over the
    `N = H * W` positions: the highest regions are the evidence for the class, the lowest the
    evidence against it. `k_max=1, k_min=0` is global max pooling; `k_min=k_max` with
    `alpha=1` is WELDON, `alpha < 1` WILDCAT's version.

    An int `k` is a count of positions, clipped to `N`; a float in (0, 1) is a fraction of
    the positions, `ceil(k * N)` and at least 1, so it follows the input size. Both are
    evaluated at run time (`keras.ops.top_k` on the flattened maps), so dynamic sizes work.

    Args:
        k_max: Number (int >= 1) or fraction (float in (0, 1)) of the highest positions.
        k_min: Number (int >= 0; 0 leaves the term out) or fraction of the lowest positions.
        alpha: Weight of the lowest positions' mean.
        **kwargs: Standard layer keyword arguments.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, channels)`.
    """

    def __init__(
        self, k_max: int | float = 1, k_min: int | float = 0, alpha: float = 1.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.k_max = _check_k("k_max", k_max, allow_zero=False)
        self.k_min = _check_k("k_min", k_min, allow_zero=True)
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, numbers.Real)
            or not math.isfinite(alpha)
        ):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)

    def build(self, input_shape):
        _check_spatial_input(type(self).__name__, input_shape)

    @staticmethod
    def _count(k, positions):
        """The number of positions for `k` as an int32 tensor in [1, positions]."""
        if isinstance(k, float):
            count = ops.ceil(ops.cast(positions, "float32") * k)
            count = ops.cast(count, "int32")
        else:
            count = ops.convert_to_tensor(k, "int32")
        return ops.clip(count, 1, ops.cast(positions, "int32"))

    @staticmethod
    def _top_mean(z, count):
        values, _ = ops.top_k(z, count, sorted=False)
        return ops.mean(values, axis=-1)

    def call(self, inputs):
        z = _flatten_positions(inputs)  # (B, C, N)
        positions = ops.shape(z)[-1]
        result = self._top_mean(z, self._count(self.k_max, positions))
        if self.k_min != 0:
            lowest = -self._top_mean(-z, self._count(self.k_min, positions))
            result = result + ops.cast(self.alpha, result.dtype) * lowest
        return result

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"k_max": self.k_max, "k_min": self.k_min, "alpha": self.alpha})
        return config


@keras.saving.register_keras_serializable(package="keras_dense")
class ClassWisePooling2D(keras.layers.Layer):
    """Averages `maps_per_class` maps per class (WILDCAT, Durand et al., CVPR 2017).

    `(B, h, w, C * M) -> (B, h, w, C)` with `M = maps_per_class`. The channel layout is
    class-major: channels `c * M, ..., c * M + M - 1` are the `M` maps (modalities) of class
    `c`, which is the order of a 1x1 convolution's filters reshaped to `(C, M)`.

    Args:
        maps_per_class: `M`, a positive int.
        **kwargs: Standard layer keyword arguments.

    Input shape:
        `(batch, height, width, num_classes * maps_per_class)`.

    Output shape:
        `(batch, height, width, num_classes)`.
    """

    def __init__(self, maps_per_class: int = 1, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(maps_per_class, bool)
            or not isinstance(maps_per_class, numbers.Integral)
            or maps_per_class < 1
        ):
            raise ValueError(f"maps_per_class must be a positive int, got {maps_per_class!r}")
        self.maps_per_class = int(maps_per_class)

    def build(self, input_shape):
        _check_spatial_input(type(self).__name__, input_shape)
        channels = input_shape[-1]
        if channels is None or channels % self.maps_per_class:
            raise ValueError(
                f"{type(self).__name__}(maps_per_class={self.maps_per_class}) needs a known "
                f"number of channels divisible by {self.maps_per_class}, got {channels}"
            )

    def call(self, inputs):
        shape = ops.shape(inputs)
        classes = inputs.shape[-1] // self.maps_per_class
        grouped = ops.reshape(inputs, (shape[0], shape[1], shape[2], classes, self.maps_per_class))
        return ops.mean(grouped, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], input_shape[-1] // self.maps_per_class)

    def get_config(self):
        config = super().get_config()
        config.update({"maps_per_class": self.maps_per_class})
        return config
