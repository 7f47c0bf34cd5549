"""Data-dependent scaling of the fresh layers that sit on a pretrained trunk.

Glorot initialisation sizes a layer for inputs of about unit scale. A pretrained trunk does
not give that: VGG16-family features on 0-255 Caffe-normalised images reach a root mean square
(RMS) of 10-20 at pool5, with peaks in the hundreds, where a randomly initialised trunk gives
about 0.1. In the papers, the layers reading those features (fc6 / fc7) come pretrained too,
so their weights match that scale. A source without VGG16's top, a feature pyramid's lateral
convolutions, or DeepLab's new fc6 start fresh with Glorot weights instead. Their outputs are
then 10-100x too large: the first softmax saturates and training sticks at the class prior
(measured on BCCD: a Fast R-CNN on HED's trunk at 0.036 mAP against 0.463 from scratch).

`scale_fresh_layers` runs one batch through the model before training and shrinks the kernel
of every fresh Dense / Conv layer by the RMS of its input, when that RMS is above 1, so that
the layer meets its input as if it had unit scale. The batch runs in training mode, as `fit`
will run it (BatchNorm on batch moments, dropout on). Layers run in call order, each one scaled
before it runs, so a later layer sees the already-scaled outputs of the earlier ones (the
data-dependent initialisations of Krähenbühl et al. 2016 and LSUV, Mishkin & Matas 2016, in
their simplest form). Left alone:
- the pretrained layers themselves;
- layers whose output goes straight into a normalisation layer, which removes the scale;
- transposed convolutions (FCN's and DeconvNet's upsampling start as bilinear kernels);
- layers whose input is already at or below unit scale (a trunk trained from scratch).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterator

import keras

SCALED_LAYER_TYPES = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
UNSCALED_LAYER_TYPES = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
NORMALIZATION_LAYER_TYPES = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def fresh_kernel_layers(model: keras.Layer, loaded: Collection[str]) -> list[keras.Layer]:
    """The Dense / Conv layers of `model` (nested ones too) not named in `loaded`, nor nested
    in a layer named there."""
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    covered = set(loaded)
    for layer in layers:
        if layer.name in loaded:
            covered.update(part.name for part in layer._flatten_layers(include_self=False))
    return [
        layer
        for layer in layers
        if isinstance(layer, SCALED_LAYER_TYPES)
        and not isinstance(layer, UNSCALED_LAYER_TYPES)
        and layer.name not in covered
    ]


@contextlib.contextmanager
def _observed_calls(
    layers: list[keras.Layer], before: Callable | None = None, after: Callable | None = None
) -> Iterator[None]:
    """Runs `before(layer, args)` and `after(layer, args, output)` around each layer's `call`."""
    patched = []
    try:
        for layer in layers:
            original = layer.call

            def observed(*args, _layer=layer, _call=original, **kwargs):
                if before is not None:
                    before(_layer, args)
                output = _call(*args, **kwargs)
                if after is not None:
                    after(_layer, args, output)
                return output

            # Past Keras's attribute tracking: an instance attribute shadows the method.
            object.__setattr__(layer, "call", observed)
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")


def _rms(tensor) -> float:
    """The root mean square of `tensor`, computed where it lives (one number comes back)."""
    values = keras.ops.cast(tensor, "float32")
    if not math.prod(values.shape):
        return 0.0
    return float(keras.ops.sqrt(keras.ops.mean(keras.ops.square(values))))


def _training_pass(model: keras.Model, inputs) -> None:
    """Runs `model` on `inputs` in training mode, as fit will, then puts back the variables the
    pass updates (BatchNorm's moving statistics): the batch moments a layer trains on, not the
    untrained moving ones (mean 0, variance 1), decide the scale the next layer receives."""
    state = [
        (variable, keras.ops.copy(variable.value)) for variable in model.non_trainable_variables
    ]
    try:
        model(inputs, training=True)
    finally:
        for variable, value in state:
            variable.assign(value)


def normalized_layers(model: keras.Model, inputs, candidates: list[keras.Layer]) -> set[str]:
    """Names of `candidates` whose output goes straight into a normalisation layer.

    Found by running `model` on `inputs` once (`_training_pass`) and matching the output
    tensors of the candidates with the inputs of the normalisation layers.
    """
    norms = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, NORMALIZATION_LAYER_TYPES)
    ]
    if not norms or not candidates:
        return set()
    producers: dict[int, str] = {}
    kept = []  # holds the outputs, so that no id is reused during the pass
    found: set[str] = set()

    def record_output(layer, args, output):
        kept.append(output)
        producers[id(output)] = layer.name

    def record_input(layer, args, output):
        name = producers.get(id(args[0])) if args else None
        if name is not None:
            found.add(name)

    with (
        _observed_calls(candidates, after=record_output),
        _observed_calls(norms, after=record_input),
    ):
        model(inputs, training=False)
    return found


def scale_fresh_layers(model: keras.Model, inputs, loaded: Collection[str]) -> dict[str, float]:
    """Shrinks each fresh layer's kernel by its input's RMS on one batch (module docstring).

    Args:
        model: A built model whose pretrained layers are named in `loaded`.
        inputs: One batch of the model's inputs (as `model(inputs)` takes them).
        loaded: Names of the layers that hold pretrained weights. Empty: nothing is done (a
            model trained from scratch keeps its initialisation).

    Returns:
        `{layer name: factor}` of the layers whose kernel was multiplied by `factor` (< 1),
        in call order.
    """
    if not loaded:
        return {}
    candidates = fresh_kernel_layers(model, loaded)
    skipped = normalized_layers(model, inputs, candidates)
    candidates = [layer for layer in candidates if layer.name not in skipped]
    factors: dict[str, float] = {}
    visited: set[str] = set()

    def scale(layer, args):
        if layer.name in visited or not args:  # a shared layer: scaled at its first call
            return
        visited.add(layer.name)
        rms = _rms(args[0])
        if math.isfinite(rms) and rms > 1.0:
            factor = 1.0 / rms
            kernel = getattr(layer, "_kernel", None)  # the variable itself (Dense's LoRA)
            kernel = layer.kernel if kernel is None else kernel
            kernel.assign(keras.ops.cast(kernel * factor, kernel.dtype))
            factors[layer.name] = factor

    with _observed_calls(candidates, before=scale):
        _training_pass(model, inputs)
    return factors


def batch_inputs(model: keras.Model, batch):
    """The model's inputs from a training batch: `model.model_inputs(batch)` for a dict batch
    (the detectors), else the first element of an `(inputs, targets)` pair."""
    if isinstance(batch, dict) and hasattr(model, "model_inputs"):
        return model.model_inputs(batch)
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch
