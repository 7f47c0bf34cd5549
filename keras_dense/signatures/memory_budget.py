"""How many pixels one request may carry: the model's activation memory per input pixel.

A segmenter's memory grows with the image: every layer output is (H/s, W/s, C) for some
stride s. The export measures that growth on small symbolic inputs (no computation): the
peak bytes of the layer outputs alive at once (`activation_bytes`) at two probe sizes, whose
difference over the difference in pixels is the bytes per input pixel. Adding what the
serving graph itself holds per pixel (decoded bytes, the float image, class maps) gives
`bytes_per_pixel`. A memory budget (`--max-request-memory`, 2 GiB by default) then turns
into a pixel budget for a whole request (summed over its images), written into the
signature as a constant. A safety factor (`SAFETY_FACTOR`, from measurements in
`benchmarks/serving_memory.py`) covers what the count does not see: convolution workspaces
and the executor's own buffers.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

DEFAULT_MAX_REQUEST_MEMORY = 2 * 1024**3
# Measured peak memory over counted activations, rounded up (see the module docstring).
SAFETY_FACTOR = 2.0
# Probe output sizes (pixels per side) for the slope measurement.
_PROBES = (64, 128)


@dataclasses.dataclass(frozen=True)
class PixelBudget:
    """The pixel limits of a serving signature or a `predict` run.

    Attributes:
        bytes_per_pixel: Measured memory per input pixel (model activations + serving).
        max_request_memory: The memory budget in bytes.
        max_request_pixels: Pixels allowed in one request, summed over its images.
        max_image_pixels: Pixels allowed in one image (also capped by the request budget).
    """

    bytes_per_pixel: float
    max_request_memory: int
    max_request_pixels: int
    max_image_pixels: int

    def describe(self) -> str:
        """One line for messages: the budget and where it comes from."""
        return (
            f"{self.max_request_pixels} pixels per request (= {self.max_request_memory} bytes "
            f"at {self.bytes_per_pixel:.0f} bytes per pixel), {self.max_image_pixels} per image"
        )


def _layer_tensors(model: keras.Model):
    """Per layer, in execution order: its input tensors and its output tensors."""
    steps = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        steps.append((keras.tree.flatten(layer.input), keras.tree.flatten(layer.output)))
    return steps


def activation_bytes(model: keras.Model, height: int, width: int, channels: int) -> int:
    """Peak bytes of live layer outputs of a segmenter for one (height, width) image.

    Layers run in the functional model's (topological) order; a layer output stays alive from
    the layer that makes it to the last layer that reads it (the model outputs to the end).
    The peak over the steps is the activation memory an executor that frees dead tensors
    needs. Sizes come from `compute_output_spec`, so nothing is computed.

    Args:
        model: A functional segmenter (each layer called once; nested models count as one).
        height: Probe image height.
        width: Probe image width.
        channels: Input channels.

    Returns:
        Bytes.
    """
    steps = _layer_tensors(model)
    outputs = [t for _, outs in steps for t in outs]
    probe = keras.Model(model.inputs, outputs)
    specs = keras.tree.flatten(
        probe.compute_output_spec(keras.KerasTensor((1, height, width, channels)))
    )
    size = {}
    for tensor, spec in zip(outputs, specs):
        dims = [int(d) for d in spec.shape[1:]]
        itemsize = np.dtype(keras.backend.standardize_dtype(spec.dtype)).itemsize
        size[id(tensor)] = int(np.prod(dims)) * itemsize
    last_use = {id(t): len(steps) for t in keras.tree.flatten(model.outputs)}
    for index, (inputs, _) in enumerate(steps):
        for tensor in inputs:
            last_use[id(tensor)] = max(last_use.get(id(tensor), index), index)
    peak = 0
    live: dict[int, int] = {}
    for index, (_, outs) in enumerate(steps):
        for tensor in outs:
            live[id(tensor)] = size[id(tensor)]
        peak = max(peak, sum(live.values()))
        for key in [k for k in live if last_use.get(k, index) <= index]:
            del live[key]
    return peak


def serving_bytes_per_pixel(channels: int, num_classes: int) -> int:
    """Memory the serving graph holds per pixel besides the model's activations.

    The encoded and decoded uint8 image (and its flattened copy), the centred, padded and
    normalised float32 images, the float32 scores, the int32 class map, its padded copy and the
    output tensor.
    """
    return 3 * channels + 3 * 4 * channels + 4 * num_classes + 3 * 4


def measure_bytes_per_pixel(model: keras.Model, geometry, num_classes: int) -> float:
    """Memory per input pixel of one image through the serving graph of a segmenter.

    Args:
        model: The segmenter.
        geometry: Its `keras_dense.signatures.geometry.segmenter_geometry`.
        num_classes: Its number of classes (channels of the scores).

    Returns:
        Bytes per input pixel.
    """
    channels = geometry.channels
    serving = serving_bytes_per_pixel(channels, num_classes)
    if geometry.fixed_size is not None:  # activations do not grow with the image
        return float(serving)
    sizes = [geometry.input_size(p) for p in _PROBES]
    used = [activation_bytes(model, s, s, channels) for s in sizes]
    slope = (used[1] - used[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
    return float(SAFETY_FACTOR * (slope + serving))


def pixel_budget(
    bytes_per_pixel: float,
    max_request_memory: int = DEFAULT_MAX_REQUEST_MEMORY,
    max_image_pixels: int | None = None,
) -> PixelBudget:
    """The pixel budget for a memory budget.

    Args:
        bytes_per_pixel: From `measure_bytes_per_pixel`.
        max_request_memory: Bytes one request may use.
        max_image_pixels: A further per-image cap (e.g. the signature's `max_pixels`).

    Returns:
        The `PixelBudget`.

    Raises:
        ValueError: A non-positive budget, or one too small for a single 64 x 64 image.
    """
    if isinstance(max_request_memory, bool) or not isinstance(max_request_memory, int):
        raise ValueError(f"max_request_memory={max_request_memory!r}: expected bytes as an int")
    if max_request_memory <= 0:
        raise ValueError(f"max_request_memory={max_request_memory}: expected a positive size")
    pixels = int(max_request_memory // max(bytes_per_pixel, 1.0))
    if pixels < 64 * 64:
        raise ValueError(
            f"max_request_memory={max_request_memory} bytes allows only {pixels} pixels at "
            f"{bytes_per_pixel:.0f} bytes per pixel; expected room for at least a 64x64 image"
        )
    per_image = pixels if max_image_pixels is None else min(pixels, int(max_image_pixels))
    return PixelBudget(float(bytes_per_pixel), int(max_request_memory), pixels, per_image)


def parse_memory(text: str, option: str | None = None) -> int:
    """A memory size such as `2GiB`, `512MiB`, `1.5GB` or `1000000` (bytes) in bytes.

    Args:
        text: The size.
        option: The command-line option it came from, named in the error (e.g. `--max-memory`).

    Raises:
        ValueError: Not a positive, finite size.
    """
    units = {
        "": 1,
        "b": 1,
        "k": 1000,
        "kb": 1000,
        "kib": 1024,
        "m": 1000**2,
        "mb": 1000**2,
        "mib": 1024**2,
        "g": 1000**3,
        "gb": 1000**3,
        "gib": 1024**3,
    }
    where = f"{option} " if option else ""
    value = str(text).strip().lower()
    number = value.rstrip("abgikm")
    unit = value[len(number) :].strip()
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in units or not (amount > 0 and math.isfinite(amount * units.get(unit, 1))):
        raise ValueError(
            f"{where}{text!r}: expected a positive, finite memory size such as 2GiB, 512MiB or "
            "1000000"
        )
    size = int(amount * units[unit])
    if size < 1:
        raise ValueError(f"{where}{text!r}: expected a memory size of at least 1 byte")
    return size
