"""`PermutohedralConvolution`: a learned filter on the permutohedral lattice, as a layer.

The layer of Jampani, Kiefel & Gehler (CVPR 2016, "Learning Sparse High Dimensional
Filters"): splat each point's values onto the lattice of its feature vector (e.g. position
and colour), convolve on the lattice with learned taps, slice back. It generalises the
Gaussian filter of the dense CRF: `form="separable"` with `kernel_initializer="gaussian"` is
that filter exactly; `form="general"` (the paper's) learns one tap per neighbour.

Inputs `[values (B, N, C_in), features (B, N, d)]`, output `(B, N, C_out)` in the compute
dtype; the lattice and the convolution run in float32 under any policy. The features are
multiplied by a per-dimension scale (the inverse bandwidths 1/theta, trainable by default)
before the lattice is built; its gradient comes through the barycentric weights and is exact
wherever no point changes simplex (`keras_dense.ops.lattice_convolution`).

The lattice is built once per call and shared by the splat, the convolution, the slice and
the backward pass. `implementation` picks who builds it and runs the convolution: the compiled
ops (`"custom_op"`, faster on a CPU), stock TensorFlow (`"tf"`, for GPUs and exports) or
`"auto"`, as `CrfRnn`. `keras_dense.layers.use_portable_crf(model)` switches these layers to
`"tf"` too, as the exporters do.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_dense.ops import lattice_stencil
from keras_dense.ops.lattice_convolution import lattice_convolve, lattice_neighbors
from keras_dense.ops.permutohedral import build_lattice, check_implementation


def gaussian_taps(form: str, d: int, radius: int, channels: int, filters: int | None):
    """The taps of the Gaussian filter in the layer's shape (see `PermutohedralConvolution`)."""
    if form == "separable":
        return lattice_stencil.gaussian_separable_taps(d, radius)
    stencil, _ = lattice_stencil.gaussian_stencil(d, radius)
    if filters is None:
        return stencil
    return stencil[:, None, None] * np.eye(channels, filters, dtype=np.float32)[None]


@keras.saving.register_keras_serializable(package="keras_dense")
class PermutohedralConvolution(keras.layers.Layer):
    """Learned sparse high-dimensional filtering on the permutohedral lattice.

    Args:
        filters: Output channels of the general form's `(T, C_in, C_out)` taps; None shares
            one scalar per tap across the channels (C_out = C_in). The separable form always
            shares (None).
        radius: Neighbourhood radius on the lattice, 1 or 2.
        form: "general" (one tap per neighbour, `(r+1)^(d+1) - r^(d+1)` of them) or
            "separable" (2r+1 taps along each of the d+1 lattice directions).
        feature_scale: Initial multiplier of the features: one number, or one per feature
            dimension (1 / the kernel's standard deviations).
        trainable_scale: Learn the feature scale.
        kernel_initializer: "gaussian" (the permutohedral Gaussian filter: exact for the
            separable form, the closest stencil for the general one, times identity across
            channels) or any Keras initializer.
        implementation: Who builds the lattice and convolves: "auto", "custom_op" or "tf".
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        filters: int | None = None,
        radius: int = 1,
        form: str = "general",
        feature_scale: float | list[float] = 1.0,
        trainable_scale: bool = True,
        kernel_initializer="gaussian",
        implementation: str = "auto",
        **kwargs,
    ):
        # Features are coordinates: rounded to bfloat16 they would move points by whole
        # pixels, so neither inputs nor weights are autocast; the output is cast to the
        # compute dtype.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.form = lattice_stencil.check_form(form)
        self.radius = lattice_stencil.check_radius(radius)
        if filters is not None and (
            isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1
        ):
            raise ValueError(f"filters must be a positive integer or None, got {filters!r}")
        if filters is not None and form == "separable":
            raise ValueError("the separable form shares its taps across channels: filters=None")
        self.filters = None if filters is None else int(filters)
        scale = np.atleast_1d(np.asarray(feature_scale, np.float64))
        if scale.ndim != 1 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"feature_scale must be positive numbers, got {feature_scale!r}")
        self.feature_scale = [float(s) for s in scale]
        self.trainable_scale = bool(trainable_scale)
        self.kernel_initializer = (
            "gaussian"
            if kernel_initializer == "gaussian"
            else keras.initializers.get(kernel_initializer)
        )
        self.implementation = check_implementation(implementation)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                "PermutohedralConvolution expects two inputs: [values (B, N, C), features "
                "(B, N, d)]"
            )
        values_shape, features_shape = (tuple(s) for s in input_shape)
        if len(values_shape) != 3 or len(features_shape) != 3:
            raise ValueError(
                f"inputs must be 3-D (batch, points, channels), got {values_shape} and "
                f"{features_shape}"
            )
        channels, d = values_shape[-1], features_shape[-1]
        if channels is None or d is None:
            raise ValueError("the channels of the values and of the features must be known")
        if len(self.feature_scale) not in (1, d):
            raise ValueError(
                f"feature_scale has {len(self.feature_scale)} entries for {d} feature dimensions"
            )
        self.channels, self.dimensions = int(channels), int(d)
        if self.form == "separable":
            shape = (d + 1, 2 * self.radius + 1)
        else:
            taps = len(lattice_stencil.stencil_offsets(d, self.radius))
            shape = (taps,) if self.filters is None else (taps, channels, self.filters)
        if self.kernel_initializer == "gaussian":
            value = gaussian_taps(self.form, d, self.radius, channels, self.filters)
            initializer = keras.initializers.Constant(value)
        else:
            initializer = self.kernel_initializer
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=initializer, autocast=False
        )
        scale = np.broadcast_to(np.asarray(self.feature_scale, np.float32), (d,))
        self.scale = self.add_weight(
            name="feature_scale",
            shape=(d,),
            initializer=keras.initializers.Constant(scale),
            trainable=self.trainable_scale,
            autocast=False,
        )

    def call(self, inputs):
        values, features = inputs
        features = tf.cast(features, tf.float32) * tf.cast(self.scale, tf.float32)
        lattice = build_lattice(features, self.implementation)
        neighbors = lattice_neighbors(
            features,
            lattice,
            self.radius,
            self.form,
            differentiable_features=self.trainable_scale,
        )
        out = lattice_convolve(
            tf.cast(values, tf.float32), neighbors, self.kernel, self.implementation
        )
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        values_shape = tuple(input_shape[0])
        channels = values_shape[-1] if self.filters is None else self.filters
        return values_shape[:-1] + (channels,)

    def get_config(self):
        config = super().get_config()
        initializer = self.kernel_initializer
        config.update(
            {
                "filters": self.filters,
                "radius": self.radius,
                "form": self.form,
                "feature_scale": self.feature_scale,
                "trainable_scale": self.trainable_scale,
                "kernel_initializer": initializer
                if initializer == "gaussian"
                else keras.initializers.serialize(initializer),
                "implementation": self.implementation,
            }
        )
        return config
