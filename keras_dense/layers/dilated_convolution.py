"""A dilated 2-D convolution computed as one matrix product over its shifted taps.

TensorFlow's CPU kernels run a large dilation badly: a convolution with dilation rate `d` goes
through `SpaceToBatchND`, which splits the feature map into `d * d` tiny maps. DeepLab v1's
`fc6` (3x3, 512 -> 1024, dilation 12) on the 20 x 20 maps of a 160 px crop then runs forward and
backward at about 3 GFLOP/s on a 2-core AMD EPYC, against about 110 GFLOP/s for the same layer
undilated, and takes 85% of a training step (`benchmarks/dilated_convolution.py`).

`DilatedConv2D` keeps `keras.layers.Conv2D`'s weights, configuration and results, and computes
a stride-1 dilated convolution as `im2col`: the `kh * kw` shifted copies of the zero-padded
input are concatenated along the channels and multiplied by the kernel reshaped to
`(kh * kw * in_channels, filters)`. Taps that see only padding at a static input size are left
out. Everything else (stride > 1, no dilation, `channels_first`, groups) is `Conv2D`'s own path.

The shifted copies cost `kh * kw` times the input's memory, kept for the backward pass. A GPU's
cuDNN kernels run dilation natively without them, so by default (`implementation="auto"`) the
layer takes `Conv2D`'s path when TensorFlow sees a GPU, and the shifted taps otherwise.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def _tap_sees_input(offset: int, pad_before: int, size: int | None) -> bool:
    """Whether rows `[offset, offset + size)` of the padded input meet the unpadded rows."""
    if size is None:  # unknown until run time: keep every tap
        return True
    return offset < pad_before + size and offset + size > pad_before


def _check_valid_extent(inputs, span_h: int, span_w: int, name: str):
    """Fail with a clear message when a `"valid"` map is smaller than the dilated kernel.

    A static size is checked by `Conv2D` itself; this covers a size known only at run time,
    where the shifted slices would otherwise fail with a bare "Expected size[1] ..." error.
    """
    shape = tf.shape(inputs)
    return tf.debugging.assert_greater(
        shape[1:3],
        tf.constant([span_h, span_w], shape.dtype),
        message=(
            f"{name}: a 'valid' dilated convolution needs an input map at least as large as "
            f"its dilated kernel ({span_h + 1} x {span_w + 1}); got height, width"
        ),
        summarize=2,
    )


def shifted_taps_convolution(
    inputs, kernel, dilation_rate: tuple[int, int], padding: str, name: str = "convolution"
):
    """A stride-1 dilated 2-D convolution (channels last) as one matmul over the shifted taps.

    Args:
        inputs: `(batch, height, width, in_channels)`.
        kernel: `(kh, kw, in_channels, filters)`.
        dilation_rate: `(dh, dw)`.
        padding: `"same"` (TensorFlow's split: the smaller half before) or `"valid"`.
        name: the layer's name, for the error a too-small `"valid"` input raises.

    Returns:
        `(batch, out_height, out_width, filters)`, equal to `ops.conv(inputs, kernel, 1,
        padding, dilation_rate=dilation_rate)` up to float rounding.
    """
    kh, kw, in_channels, filters = kernel.shape
    dh, dw = dilation_rate
    static_h, static_w = inputs.shape[1], inputs.shape[2]
    dynamic = ops.shape(inputs)
    span_h, span_w = dh * (kh - 1), dw * (kw - 1)
    if padding == "same":
        top, left = span_h // 2, span_w // 2
        inputs = ops.pad(inputs, ((0, 0), (top, span_h - top), (left, span_w - left), (0, 0)))
        out_h, out_w = dynamic[1], dynamic[2]
        seen_h, seen_w = static_h, static_w
    else:
        top = left = 0
        if static_h is None or static_w is None:
            with tf.control_dependencies([_check_valid_extent(inputs, span_h, span_w, name)]):
                inputs = tf.identity(inputs)
        out_h, out_w = dynamic[1] - span_h, dynamic[2] - span_w
        seen_h = seen_w = None  # every tap of a valid convolution sees the input
    taps, weights = [], []
    for i in range(kh):
        if not _tap_sees_input(i * dh, top, seen_h):
            continue
        for j in range(kw):
            if not _tap_sees_input(j * dw, left, seen_w):
                continue
            start = (0, i * dh, j * dw, 0)
            taps.append(ops.slice(inputs, start, (dynamic[0], out_h, out_w, in_channels)))
            weights.append(kernel[i, j])
    columns = taps[0] if len(taps) == 1 else ops.concatenate(taps, axis=-1)
    return ops.matmul(columns, ops.concatenate(weights, axis=0))


IMPLEMENTATIONS = ("auto", "shifted_taps", "conv2d")


def _gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (its dilated convolutions then run in cuDNN)."""
    return bool(tf.config.list_physical_devices("GPU"))


@keras.saving.register_keras_serializable(package="keras_dense")
class DilatedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose stride-1 dilated case runs as one matmul over shifted taps.

    Same arguments, weights and results as `Conv2D`; see the module docstring for why. A
    `.keras` file records each layer's class, so models saved either way load. A bare
    `.weights.h5` file does not: Keras 3 addresses a layer's weights by its snake-cased class
    (`conv2d_3`, `dilated_conv2d`), so swapping this class into an existing architecture moves
    its weights in such files, and files saved before no longer load (which is why DeepLabv3's
    ASPP and the dilated backbones keep `Conv2D`; `tests/test_aspp.py` pins that layout).

    Args:
        *args: `keras.layers.Conv2D`'s.
        implementation: `"shifted_taps"` for the matmul over shifted taps wherever it applies
            (stride 1, dilation > 1, `channels_last`, no groups, `"same"` or `"valid"`),
            `"conv2d"` for `Conv2D`'s own kernels, or `"auto"` (default): the shifted taps
            unless TensorFlow sees a GPU, decided when the layer is traced.
        **kwargs: `keras.layers.Conv2D`'s.
    """

    def __init__(self, *args, implementation: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"DilatedConv2D {self.name!r}: implementation must be one of "
                f"{IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.implementation = implementation

    def _uses_shifted_taps(self) -> bool:
        applicable = (
            max(self.dilation_rate) > 1
            and tuple(self.strides) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
            and self.padding in ("same", "valid")
        )
        if self.implementation == "auto":
            return applicable and not _gpu_visible()
        return applicable and self.implementation == "shifted_taps"

    def convolution_op(self, inputs, kernel):
        if self._uses_shifted_taps():
            return shifted_taps_convolution(
                inputs, kernel, self.dilation_rate, self.padding, name=self.name
            )
        return super().convolution_op(inputs, kernel)

    def get_config(self) -> dict:
        return {**super().get_config(), "implementation": self.implementation}
