"""Overlap-tile inference: segmenting images of any size tile by tile (U-Net paper, Fig. 2).

The image is cut into tiles the model accepts; each tile contributes only its central part
(the "core") to the result, the rest of the tile being context. Missing context at the image
borders is extrapolated by mirroring the image. Tiles are run through the model in batches.

How the geometry is derived from the model (per axis, by evaluating the model's output shape
for one tile):

- Valid models (output smaller than the input, e.g. `unet(padding="valid")`): the margin is
  `(tile - output) / 2` and each tile contributes its whole output. The result equals one pass
  of the model over the mirror-padded whole image, exactly.
- Same-size models (output = input: FCN, DeepLab, DeconvNet, `unet(padding="same")`): each
  tile contributes all but `margin` pixels on each side. The result equals one pass over the
  mirror-padded whole image (and, away from the borders, over the image itself) exactly when
  the model's receptive field reaches at most `margin` pixels from the output pixel; for
  models that see further (most segmenters: the receptive field of VGG16's pool5 is 212 px)
  the margin trades context for speed and the result is an approximation near tile seams.

Alignment: a network that downsamples by `s` is only translation-equivariant for shifts that
are multiples of `s`. So that every tile sees its pixels on the same pooling grid as the
single pass does, tiles are placed at multiples of the alignment, the largest downsampling
factor of any feature map of the model (16 for the paper's U-Net, 32 for VGG16-based nets).
It is derived by evaluating the shapes of every layer's output for two tile sizes, and can be
given explicitly. For the paper's U-Net (572 -> 388 tiles) this means steps of 384 pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import keras
import numpy as np

from keras_dense.utils.output_probe import model_output_size

# Tile size used when the model's input size is not fixed.
DEFAULT_TILE_SIZE = 256
# Context margin of same-size models when none is given (rounded up to the alignment).
DEFAULT_CONTEXT_MARGIN = 32
# Size difference between the two shape evaluations that measure each layer's stride.
_STRIDE_PROBE = 1024
_PAD_MODES = ("reflect", "symmetric", "edge", "constant")


def _pair(value, argument: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"{argument}={value!r}: expected a positive int or a pair of them")
    return int(pair[0]), int(pair[1])


def _feature_maps_probe(model: keras.Model) -> keras.Model:
    """A model from `model`'s input to the output of each of its layers, with no input spec."""
    outputs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            layer_outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError, RuntimeError):
            continue  # a layer used several times has no single output
        outputs.extend(t for t in layer_outputs if len(t.shape) == 4)
    probe = keras.Model(model.inputs, outputs)
    probe.input_spec = None  # let the shape evaluation use sizes other than a fixed input size
    return probe


def model_alignment(model: keras.Model, tile_size: int | Sequence[int]) -> int:
    """Largest downsampling factor of any 4D feature map of `model`.

    Each layer output's stride is measured as `delta_input / delta_size` between two
    symbolic shape evaluations (no computation) at `tile_size` and `tile_size + 1024`.

    Args:
        model: A single-input functional Keras model.
        tile_size: Tile size `(height, width)` or an int.

    Returns:
        The least common multiple of the layers' strides (1 if nothing downsamples). Falls
        back to 1, with a warning, when the shapes cannot be evaluated.
    """
    tile_h, tile_w = _pair(tile_size, "tile_size")
    channels = model.inputs[0].shape[-1]
    try:
        probe = _feature_maps_probe(model)
        specs = [
            keras.tree.flatten(
                probe.compute_output_spec(
                    keras.KerasTensor((1, tile_h + extra, tile_w + extra, channels))
                )
            )
            for extra in (0, _STRIDE_PROBE)
        ]
    except Exception as error:  # any failure only costs the alignment, not the result's shape
        warnings.warn(
            f"predict_tiled could not derive the model's downsampling factor ({error}); "
            "using alignment=1. Pass alignment= explicitly for seamless tiles.",
            stacklevel=3,
        )
        return 1
    alignment = 1
    for small, large in zip(*specs):
        for axis in (1, 2):
            a, b = small.shape[axis], large.shape[axis]
            if a is None or b is None or b <= a:
                continue  # unknown, or not growing with the input (e.g. global pooling)
            stride = _STRIDE_PROBE / (b - a)
            if stride > 1:
                alignment = math.lcm(alignment, round(stride))
    return alignment


def _axis_geometry(tile: int, out: int, margin: int | None, alignment: int, axis: str):
    """Returns `(input_offset, output_offset, step)` of the tiles along one axis."""
    if out == tile:  # same-size model: context margin
        context = DEFAULT_CONTEXT_MARGIN if margin is None else int(margin)
        if context < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        context = alignment * -(-context // alignment)
        available = tile - 2 * context
        input_offset, output_offset = context, context
    elif out < tile and (tile - out) % 2 == 0:  # valid model: margin fixed by the model
        input_offset, output_offset, available = (tile - out) // 2, 0, out
        if margin is not None and int(margin) != input_offset:
            raise ValueError(
                f"margin={margin!r}: this model loses {input_offset} pixels on each side of "
                f"the {axis} (tile {tile} -> output {out}); leave margin=None for valid models"
            )
    else:
        raise ValueError(
            f"the model maps a tile {axis} of {tile} to {out}: predict_tiled needs an output "
            "of the input size (same padding) or smaller by an even number (valid padding)"
        )
    step = (available // alignment) * alignment
    if step < 1:
        raise ValueError(
            f"tile_size {axis} {tile} leaves {available} pixels per tile after the margin "
            f"({input_offset} on each side), fewer than the alignment {alignment}: use a "
            "larger tile_size or a smaller margin"
        )
    return input_offset, output_offset, step


def predict_tiled(
    model: keras.Model,
    image,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int = 4,
    margin: int | None = None,
    alignment: int | None = None,
    pad_mode: str = "reflect",
) -> np.ndarray:
    """Segments an image of any size with overlapping tiles (overlap-tile strategy).

    Args:
        model: A segmenter mapping `(B, h, w, C)` to `(B, h', w', K)` with `h' = h` (same
            padding) or `h' = h - 2m` (valid padding, e.g. the paper's U-Net).
        image: `(H, W, C)` or `(B, H, W, C)` array of any height and width.
        tile_size: Model input size per tile, an int or `(height, width)`. Defaults to the
            model's input size when it is fixed, else 256 for same-size models; valid models
            with a dynamic input size need it given, as they accept only some sizes
            (`keras_dense.apps.unet_model.unet_input_size`).
        batch_size: Number of tiles per model call.
        margin: Context pixels on each side of a tile's core for same-size models (default
            32, rounded up to a multiple of the alignment). Valid models define their own
            margin, `(tile - output) / 2`; leave it None for them.
        alignment: Tiles start at multiples of this many pixels; default: the model's largest
            downsampling factor (`model_alignment`).
        pad_mode: `numpy.pad` mode extrapolating the image beyond its borders; "reflect"
            (mirroring, as in the paper), "symmetric", "edge" or "constant" (zeros).

    Returns:
        `(H, W, K)` or `(B, H, W, K)` float predictions, matching the rank of `image`.

    Raises:
        ValueError: A bad argument, or a model/tile size combination that cannot be tiled.
    """
    images = np.asarray(image)
    if images.ndim not in (3, 4):
        raise ValueError(f"image must be (H, W, C) or (B, H, W, C), got shape {images.shape}")
    single = images.ndim == 3
    if single:
        images = images[None]
    images = images.astype(np.float32, copy=False)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("predict_tiled needs a model with one image input and one output")
    fixed_size = model.inputs[0].shape[1:3]
    guessed_size = tile_size is None and None in fixed_size
    if tile_size is None:
        tile_size = tuple(DEFAULT_TILE_SIZE if d is None else d for d in fixed_size)
    tile = _pair(tile_size, "tile_size")
    if alignment is None:
        alignment = model_alignment(model, tile)
    elif isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"alignment must be a positive integer, got {alignment!r}")

    count, height, width, channels = images.shape
    try:
        out_hw = model_output_size(model, tile[0], tile[1], channels, run_if_unknown=True)
    except ValueError as error:
        raise ValueError(
            f"predict_tiled: tile_size={tile!r}: {error}; pass a tile_size the model can process "
            "(for a valid U-Net see keras_dense.apps.unet_model.unet_input_size)"
        ) from error
    if guessed_size and out_hw != tile:
        raise ValueError(
            f"the model shrinks a {tile} tile to {out_hw} (valid padding) and its input size is "
            "not fixed: pass a tile_size it accepts (for a valid U-Net: "
            "keras_dense.apps.unet_model.unet_input_size)"
        )
    geometry = [
        _axis_geometry(t, o, margin, alignment, axis)
        for t, o, axis in zip(tile, out_hw, ("height", "width"))
    ]
    (in_y, out_y, step_y), (in_x, out_x, step_x) = geometry
    tiles_y, tiles_x = -(-height // step_y), -(-width // step_x)
    pad_y = (in_y, (tiles_y - 1) * step_y + tile[0] - height - in_y)
    pad_x = (in_x, (tiles_x - 1) * step_x + tile[1] - width - in_x)
    padded = np.pad(images, ((0, 0), pad_y, pad_x, (0, 0)), mode=pad_mode)

    origins = [
        (n, i * step_y, j * step_x)
        for n in range(count)
        for i in range(tiles_y)
        for j in range(tiles_x)
    ]
    result = None
    batch = np.zeros((batch_size, tile[0], tile[1], channels), padded.dtype)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        for k, (n, y, x) in enumerate(chunk):
            batch[k] = padded[n, y : y + tile[0], x : x + tile[1]]
        predictions = np.asarray(model.predict_on_batch(batch))
        if result is None:
            result = np.zeros(
                (count, tiles_y * step_y, tiles_x * step_x, predictions.shape[-1]),
                predictions.dtype,
            )
        for k, (n, y, x) in enumerate(chunk):
            result[n, y : y + step_y, x : x + step_x] = predictions[
                k, out_y : out_y + step_y, out_x : out_x + step_x
            ]
    result = result[:, :height, :width]
    return result[0] if single else result
