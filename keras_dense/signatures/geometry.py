"""How a segmenter's input size relates to its output: what the serving graph must feed it.

Three kinds of models, told apart by evaluating output shapes symbolically (no computation):

- Fixed input size (`input_shape=(512, 512, 3)`): every image is resized to it and the
  scores are resized back to the image's size.
- Same-size models (output = input: FCN, DeepLab, DeconvNet, `unet(padding="same")`): the
  image is fed as it is, zero-padded (after normalisation, i.e. with the mean pixel) at the
  bottom and right up to a size the model accepts (at least its minimum size, e.g. 193 px
  for DeconvNet's valid fc6); the output is cropped back.
- Valid models (output smaller by `2 m`, e.g. `unet(padding="valid")`): the image is
  mirror-padded by the margin `m` on each side (the U-Net paper's extrapolation), then
  zero-padded at the bottom and right up to a valid size; the output is cropped.

Accepted sizes are `offset + step * k` (k >= 0). `step` is the model's alignment (largest
downsampling factor, `keras_dense.tiling.model_alignment`) for models that only accept some
sizes (a valid U-Net: 16 k + 60), and 1 for models that accept any size (all the
same-padded builders of keras_dense: their poolings round up and crop back).
"""

from __future__ import annotations

import dataclasses

import keras

from keras_dense.tiling import model_alignment
from keras_dense.utils.output_probe import accepted_output_size

# Probe sizes: every size from 64 to 127, then larger ones (models with a minimum size such
# as DeconvNet's valid fc6, >= 193 px); the first accepted one and its neighbours tell the
# step, a bisection below it the minimum.
_PROBE_START = 64
_PROBE_SIZES = (*range(_PROBE_START, 128), 160, 192, 224, 256, 320, 384, 512, 768, 1024)


@dataclasses.dataclass(frozen=True)
class InputGeometry:
    """What a segmenter needs as input.

    Attributes:
        fixed_size: `(height, width)` of a model with a fixed input size, else None.
        margin: Pixels the model loses on each side (0 for same-size models).
        offset: Accepted input sizes are `offset + step * k`.
        step: See `offset`; 1 when any size is accepted.
        channels: Input channels.
        minimum: Smallest accepted input size.
    """

    fixed_size: tuple[int, int] | None
    margin: int
    offset: int
    step: int
    channels: int
    minimum: int = 1

    def input_size(self, output_size: int) -> int:
        """Smallest accepted input size whose output covers `output_size` pixels.

        Args:
            output_size: Pixels wanted along one axis (a Python int).

        Returns:
            The input size.
        """
        needed = max(output_size + 2 * self.margin, self.minimum)
        return self.offset + self.step * -(-(needed - self.offset) // self.step)


def _first_accepted(model: keras.Model, channels: int) -> int | None:
    return next(
        (s for s in _PROBE_SIZES if accepted_output_size(model, s, s, channels) is not None), None
    )


def segmenter_geometry(model: keras.Model) -> InputGeometry:
    """Works out how to feed images of any size to a single-input segmenter.

    Args:
        model: A Keras model mapping `(B, H, W, C)` images to `(B, H', W', K)` scores.

    Returns:
        The model's `InputGeometry`.

    Raises:
        ValueError: The model does not map images to dense scores, or its output is neither
            the input size nor smaller by an even margin, or no input size is accepted.
    """
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError(
            f"model {model.name!r}: a segmenter needs one (B, H, W, C) input, got "
            f"{[tuple(t.shape) for t in model.inputs]}"
        )
    _, height, width, channels = model.inputs[0].shape
    if channels is None:
        raise ValueError(f"model {model.name!r}: the number of input channels must be known")
    if height is not None and width is not None:
        if accepted_output_size(model, height, width, channels) is None:
            raise ValueError(f"model {model.name!r}: output is not a (B, H, W, K) score map")
        return InputGeometry((int(height), int(width)), 0, 0, 1, int(channels))
    if height is not None or width is not None:
        raise ValueError(
            f"model {model.name!r}: input height and width must both be fixed or both be None, "
            f"got {model.inputs[0].shape}"
        )
    probe = _first_accepted(model, channels)
    if probe is None:
        raise ValueError(
            f"model {model.name!r}: no input size from {_PROBE_START} to {_PROBE_SIZES[-1]} "
            "pixels is accepted; cannot serve it on images"
        )
    out = accepted_output_size(model, probe, probe, channels)[0]
    lost = probe - out
    if lost < 0 or lost % 2:
        raise ValueError(
            f"model {model.name!r} maps {probe} pixels to {out}: serving needs an output of the "
            "input size (same padding) or smaller by an even margin (valid padding)"
        )
    margin = lost // 2

    def accepted(size: int) -> bool:
        return size >= 1 and accepted_output_size(model, size, size, channels) == (size - lost,) * 2

    if accepted(probe + 1) and accepted(probe + 3):
        step = 1
    else:
        step = model_alignment(model, probe)
        for size in (probe + step, probe + 2 * step):
            expected = (size - lost, size + step - lost)
            if accepted_output_size(model, size, size + step, channels) != expected:
                raise ValueError(
                    f"model {model.name!r}: accepts {probe} pixels but not {size}; cannot derive "
                    "the input sizes it accepts"
                )
    offset = probe % step
    # Smallest accepted size of the lattice offset + step * k, by bisection on k (acceptance
    # grows with the size: valid convolutions and valid fc layers need a minimum).
    low, high = -1, (probe - offset) // step
    while high - low > 1:
        middle = (low + high) // 2
        if accepted(offset + step * middle):
            high = middle
        else:
            low = middle
    return InputGeometry(None, margin, offset, step, int(channels), offset + step * high)
