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
- layers whose input is already at or below unit scale (a trunk trained from scratch);
- zero-initialised layers (FCN's skip scores), which no factor changes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterator

import keras

# Transposed convolutions are not among them (in Keras 3 they are not Conv subclasses):
# FCN's and DeconvNet's upsampling start as bilinear kernels and stay so.
SCALED_LAYER_TYPES = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)
NORMALIZATION_LAYER_TYPES = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)
# Factors are rounded to this many significant digits, so that workers measuring the same
# batch agree exactly despite float summation order.
FACTOR_DIGITS = 6


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
        if isinstance(layer, SCALED_LAYER_TYPES) and layer.name not in covered
    ]


@contextlib.contextmanager
def _before_calls(layers: list[keras.Layer], before: Callable) -> Iterator[None]:
    """Runs `before(layer, args)` ahead of each of `layers`' `call`s."""
    patched = []
    try:
        for layer in layers:
            original = layer.call

            def observed(*args, _layer=layer, _call=original, **kwargs):
                before(_layer, args)
                return _call(*args, **kwargs)

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


def normalized_layers(model: keras.Model, candidates: list[keras.Layer]) -> set[str]:
    """Names of `candidates` whose output goes straight into a normalisation layer, read
    from the functional graph (nested models included)."""
    wanted = {id(layer) for layer in candidates}
    found: set[str] = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, NORMALIZATION_LAYER_TYPES):
            continue
        for node in layer._inbound_nodes:
            for parent in node.parent_nodes:
                if id(parent.operation) in wanted:
                    found.add(parent.operation.name)
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
    skipped = normalized_layers(model, candidates)
    candidates = [layer for layer in candidates if layer.name not in skipped]
    factors: dict[str, float] = {}
    visited: set[str] = set()

    def scale(layer, args):
        if layer.name in visited or not args:  # a shared layer: scaled at its first call
            return
        visited.add(layer.name)
        kernel = getattr(layer, "_kernel", None)  # the variable itself (Dense's LoRA)
        kernel = layer.kernel if kernel is None else kernel
        # The stored float32 value: inside a mixed_float16 call, reading the variable
        # would give its float16 cast.
        stored = getattr(kernel, "_value", kernel)
        rms = _rms(args[0])
        if math.isfinite(rms) and rms > 1.0 and bool(keras.ops.any(stored != 0)):
            factor = float(f"{1.0 / rms:.{FACTOR_DIGITS}g}")
            kernel.assign(stored * factor)
            factors[layer.name] = factor

    with _before_calls(candidates, scale):
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
