"""Bilinear upsampling with a transposed convolution, as in FCN (Long, Shelhamer, Darrell).

A stride-`f` `Conv2DTranspose` whose kernel is the separable "hat" function
`w(i, j) = (1 - |i - c| / f) * (1 - |j - c| / f)`, `c = (k - 1) / 2`, on the diagonal of its
channel axes (zero across channels) performs exact bilinear interpolation by the factor `f`.
FCN uses the kernel size `k = 2 f - f % 2` (4 for x2, 16 for x8, 64 for x32).

Alignment. With `padding="valid"` an input of length `n` gives `(n - 1) f + k` outputs.
Output `o` of the transposed convolution receives input sample `i` with weight
`1 - |o - i f - c| / f`, i.e. it samples the input at coordinate `(o - c) / f`. Bilinear
resizing with the half-pixel convention (`tf.image.resize`, OpenCV's `INTER_LINEAR`,
`align_corners=False`) samples output pixel `p` at input coordinate `(p + 0.5) / f - 0.5`.
The two agree when `o = p + k / 2 - f / 2`, which is `p + f // 2` for both kernel sizes above.
So cropping the transposed convolution's output at offset `f // 2` (on each spatial axis) gives
bilinear resizing by `f`. They differ only at the borders, where resizing clamps to the edge
sample and the transposed convolution sees zeros: the two are equal for the outputs whose
sample coordinate lies in `[0, n - 1]`, i.e. `f // 2 <= p <= n f - 1 - f // 2` (after the crop).
"""

from __future__ import annotations

import keras
import numpy as np


def bilinear_kernel_size(factor: int) -> int:
    """Kernel size FCN uses for bilinear upsampling by `factor`: `2 * factor - factor % 2`.

    Args:
        factor: Integer upsampling factor (>= 1).

    Returns:
        The kernel size.

    Raises:
        ValueError: `factor` is not a positive integer.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return 2 * int(factor) - int(factor) % 2


def bilinear_crop_offset(factor: int) -> int:
    """Offset at which to crop the transposed convolution's output to get bilinear resizing.

    Args:
        factor: Integer upsampling factor (>= 1).

    Returns:
        `factor // 2` (see the module docstring for the derivation).
    """
    bilinear_kernel_size(factor)  # validates factor
    return int(factor) // 2


def bilinear_filter(kernel_size: int, factor: int) -> np.ndarray:
    """The 2-D bilinear interpolation filter of size `kernel_size` for `factor`.

    Args:
        kernel_size: Spatial size of the (square) kernel.
        factor: Upsampling factor.

    Returns:
        A float64 array `(kernel_size, kernel_size)`.
    """
    centre = (kernel_size - 1) / 2.0
    hat = 1.0 - np.abs(np.arange(kernel_size) - centre) / factor
    hat = np.clip(hat, 0.0, None)
    return np.outer(hat, hat)


@keras.saving.register_keras_serializable(package="keras_dense")
class BilinearUpsamplingInitializer(keras.initializers.Initializer):
    """Initialises a `Conv2DTranspose` kernel `(k, k, C, C)` to bilinear upsampling.

    Each output channel interpolates its own input channel (the kernel is zero across
    channels). Crop the layer's output at offset `factor // 2` to obtain bilinear resizing
    with the half-pixel convention (see the module docstring).

    Args:
        factor: Upsampling factor (the layer's stride). `None` infers it from the kernel size
            as FCN does, `(k + 1) // 2`. When given, the kernel size must be
            `2 * factor - factor % 2`.
    """

    def __init__(self, factor: int | None = None):
        if factor is not None:
            bilinear_kernel_size(factor)  # validates factor
            factor = int(factor)
        self.factor = factor

    def __call__(self, shape, dtype=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
            raise ValueError(
                "BilinearUpsamplingInitializer expects a Conv2DTranspose kernel shape "
                f"(k, k, C, C) with square spatial size and as many filters as input "
                f"channels, got shape={shape}"
            )
        kernel_size, channels = shape[0], shape[2]
        factor = self.factor if self.factor is not None else (kernel_size + 1) // 2
        if kernel_size != bilinear_kernel_size(factor):
            raise ValueError(
                f"BilinearUpsamplingInitializer(factor={factor}) expects kernel size "
                f"{bilinear_kernel_size(factor)}, got shape={shape}"
            )
        kernel = np.zeros(shape, dtype="float64")
        filt = bilinear_filter(kernel_size, factor)
        for c in range(channels):
            kernel[:, :, c, c] = filt
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {"factor": self.factor}


def bilinear_upsampling(
    x,
    factor: int,
    filters: int | None = None,
    trainable: bool = False,
    name: str | None = None,
):
    """Upsamples `x` by `factor` with a bilinear-initialised `Conv2DTranspose` (no bias).

    The output is NOT cropped: it has `(n - 1) * factor + kernel_size` rows for `n` input
    rows. Crop it at offset `bilinear_crop_offset(factor)` (e.g. with
    `keras_dense.layers.CropToMatch(offset=(factor // 2, factor // 2))`) to obtain bilinear
    resizing by `factor` with the half-pixel convention.

    Args:
        x: Input tensor `(B, H, W, C)`.
        factor: Integer upsampling factor (the stride).
        filters: Number of channels; must equal `C` (defaults to it).
        trainable: Whether the kernel is learned (FCN's `upscore2`) or fixed (FCN's final
            upsampling).
        name: Layer name.

    Returns:
        The upsampled tensor `(B, (H - 1) * factor + k, (W - 1) * factor + k, C)`.

    Raises:
        ValueError: `factor` is not a positive integer or `filters` differs from `C`.
    """
    kernel_size = bilinear_kernel_size(factor)
    channels = x.shape[-1]
    if filters is None:
        filters = channels
    if channels is not None and filters != channels:
        raise ValueError(
            f"filters must equal the number of input channels ({channels}) for bilinear "
            f"upsampling, got filters={filters}"
        )
    return keras.layers.Conv2DTranspose(
        filters,
        kernel_size,
        strides=factor,
        padding="valid",
        use_bias=False,
        kernel_initializer=BilinearUpsamplingInitializer(factor),
        trainable=trainable,
        name=name,
    )(x)
