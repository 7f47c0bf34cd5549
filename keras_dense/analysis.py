"""Receptive fields of convolutional networks: theoretical and empirical.

`receptive_field(model, layer_name)` applies the standard recurrences layer by layer along
the paths from the model's input to the layer, per axis, starting from `size = 1`,
`jump = 1`, `start = 0` at the input:

- `jump_out = jump_in * s`,
- `size_out = size_in + (k_eff - 1) * jump_in`, with `k_eff = d * (k - 1) + 1`,
- `start_out = start_in + ((k_eff - 1) / 2 - p) * jump_in`,

for a window of `k` taps, dilation `d`, stride `s` and `p` zero rows (columns) padded before
the first one. `start` is the centre of the first output unit's field in input pixel indices
(the centre of the first input pixel is 0): unit `i` is centred at `start + i * jump`.

`empirical_receptive_field(model, layer_name, images)` measures the effective field instead:
the gradient of the centre unit with respect to the input (Zhou et al., ICLR 2015 estimate it
by occlusion; Luo et al., NeurIPS 2016 by gradients), which is concentrated in a much smaller
region than the theoretical field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_dense.layers.walk import iter_layers
from keras_dense.layers.wsl_pooling import ClassWisePooling2D

# Layers that act on each position separately: the field passes through them unchanged.
POINTWISE_LAYERS: tuple[type, ...] = (
    keras.layers.InputLayer,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.Rescaling,
    keras.layers.Normalization,
    keras.layers.Identity,
    keras.layers.Dense,
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
    ClassWisePooling2D,
)
# Sliding windows: (kernel size attribute, has dilation).
_WINDOW_LAYERS: tuple[type, ...] = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
)
_UPSAMPLING_LAYERS: tuple[type, ...] = (keras.layers.Conv2DTranspose, keras.layers.UpSampling2D)
_GLOBAL_LAYERS: tuple[type, ...] = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)


class ReceptiveField(NamedTuple):
    """The theoretical receptive field of the units of a layer, per axis `(height, width)`.

    Attributes:
        size: Side of the field in input pixels.
        jump: Distance in input pixels between neighbouring units (the layer's stride).
        start: Centre of the first unit's field, in input pixel indices (first pixel: 0);
            unit `i` is centred at `start + i * jump`. Negative or half values are normal
            (padding, even windows).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class _Field:
    size: np.ndarray  # (2,) int
    jump: np.ndarray  # (2,) int
    start: np.ndarray  # (2,) float

    @classmethod
    def identity(cls) -> _Field:
        return cls(np.ones(2, np.int64), np.ones(2, np.int64), np.zeros(2))

    def then(self, inner: _Field) -> _Field:
        """The field of `inner` (relative to this field's units) in input pixels."""
        return _Field(
            self.size + (inner.size - 1) * self.jump,
            self.jump * inner.jump,
            self.start + inner.start * self.jump,
        )


class _Unsupported(ValueError):
    """A layer on the path that has no receptive-field recurrence."""


def _pair(value) -> np.ndarray:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    return np.asarray(values, np.int64)


def _padding_before(layer, kernel: np.ndarray, strides: np.ndarray, sizes) -> np.ndarray:
    """Zero rows / columns before the first window (TensorFlow's "same": the extra at the end).

    With stride > 1 "same" padding depends on the input size: known static sizes are used,
    unknown ones are taken to be multiples of the stride.
    """
    if layer.padding == "valid":
        return np.zeros(2, np.int64)
    if layer.padding != "same":
        raise _Unsupported(f"layer {layer.name!r}: padding={layer.padding!r} is not supported")
    before = []
    for axis in range(2):
        size = sizes[axis]
        remainder = (size % strides[axis]) if size is not None else 0
        total = max(kernel[axis] - (remainder or strides[axis]), 0)
        before.append(total // 2)
    return np.asarray(before, np.int64)


def _layer_field(layer, sizes: Sequence[int | None]) -> _Field:
    """The field of one (non-model) layer's units relative to its input's units."""
    name = f"layer {layer.name!r} ({type(layer).__name__})"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _Unsupported(f"{name}: only channels_last is supported")
    if isinstance(layer, _UPSAMPLING_LAYERS):
        raise _Unsupported(
            f"{name}: upsampling layers (transposed convolutions, UpSampling2D) have no "
            "integer receptive-field recurrence and are not supported"
        )
    if isinstance(layer, _GLOBAL_LAYERS):
        raise _Unsupported(f"{name}: its output is not spatial (every unit sees the whole input)")
    if isinstance(layer, POINTWISE_LAYERS):
        return _Field.identity()
    if isinstance(layer, _WINDOW_LAYERS):
        if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            taps, dilation = _pair(layer.pool_size), np.ones(2, np.int64)
        else:
            taps, dilation = _pair(layer.kernel_size), _pair(layer.dilation_rate)
        strides = _pair(layer.strides)
        kernel = dilation * (taps - 1) + 1
        before = _padding_before(layer, kernel, strides, sizes)
        return _Field(kernel, strides, (kernel - 1) / 2.0 - before)
    if isinstance(layer, keras.layers.ZeroPadding2D):
        top, left = layer.padding[0][0], layer.padding[1][0]
        return _Field(np.ones(2, np.int64), np.ones(2, np.int64), -np.asarray([top, left], float))
    if isinstance(layer, keras.layers.Cropping2D):
        top, left = layer.cropping[0][0], layer.cropping[1][0]
        return _Field(np.ones(2, np.int64), np.ones(2, np.int64), np.asarray([top, left], float))
    raise _Unsupported(
        f"{name}: unknown spatial layer, its receptive field cannot be derived (supported: "
        "convolutions, poolings, ZeroPadding2D, Cropping2D, pointwise layers, nested models)"
    )


def _merge(fields: list, layer_name: str) -> _Field:
    """Branches meeting at a layer: the largest size, and the same jump on every branch."""
    for field in fields:
        if isinstance(field, Exception):
            return field
    if not fields:
        return _Field.identity()
    jumps = {tuple(f.jump) for f in fields}
    if len(jumps) > 1:
        raise _Unsupported(
            f"layer {layer_name!r}: branches with different jumps {sorted(jumps)} meet here"
        )
    largest = max(fields, key=lambda f: tuple(f.size))
    size = np.max(np.stack([f.size for f in fields]), axis=0)
    return _Field(size, largest.jump, largest.start)


def _tensor_refs(structure) -> list[tuple[tuple[str, int, int], list]]:
    """`((layer, node, tensor), shape)` of every serialised Keras tensor in a node's args."""
    found = []
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            config = structure["config"]
            found.append((tuple(config["keras_history"]), config.get("shape")))
        else:
            for value in structure.values():
                found.extend(_tensor_refs(value))
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            found.extend(_tensor_refs(value))
    return found


def _layer_refs(refs) -> list:
    """A functional config's `input_layers` / `output_layers` as a list of triples."""
    return [refs] if refs and isinstance(refs[0], str) else list(refs)


def _is_nested_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def _contains(model, layer_name: str) -> bool:
    return any(layer.name == layer_name for layer in iter_layers(model))


def _field_in(model: keras.Model, target: str | None, inputs: list) -> _Field | Exception:
    """The field of `target` (a layer of `model` or of a model nested in it; `None`: the first
    output) given the fields of the model's inputs."""
    if isinstance(model, keras.Sequential):
        return _field_in_sequential(model, target, inputs)

    config = model.get_config()
    entries = {entry["name"] for entry in config["layers"]}
    values: dict[tuple[str, int, int], object] = {}
    for (name, _, _), field in zip(_layer_refs(config["input_layers"]), inputs):
        values[(name, 0, 0)] = field
    inside = None
    if target is None:
        wanted = tuple(_layer_refs(config["output_layers"])[0])
    elif target in entries:
        wanted = (target, 0, 0)
    else:
        holder = next(
            (x for x in model.layers if _is_nested_model(x) and _contains(x, target)), None
        )
        if holder is None:
            raise ValueError(f"no layer named {target!r} in {model.name!r}")
        wanted, inside = (holder.name, 0, 0), target

    for entry in config["layers"]:  # topological order
        name = entry["name"]
        layer = model.get_layer(name)
        for node, arguments in enumerate(entry["inbound_nodes"]):
            refs = _tensor_refs(arguments)
            missing = _Unsupported(f"layer {name!r}: an input comes from outside the graph")
            incoming = [values.get(ref, missing) for ref, _ in refs]
            sizes = [shape[1:3] if shape and len(shape) == 4 else None for _, shape in refs]
            if inside is not None and (name, node) == wanted[:2]:
                return _apply(layer, incoming, sizes, inside)
            for index in range(_output_count(layer)):
                try:
                    values[(name, node, index)] = _apply(layer, incoming, sizes, None, index)
                except _Unsupported as error:
                    values[(name, node, index)] = error
            if (name, node) == wanted[:2]:
                return values.get(wanted, _Unsupported(f"layer {name!r} has no output {wanted}"))
    return values.get(wanted, _Unsupported(f"layer {wanted[0]!r} is not reached from the input"))


def _field_in_sequential(model: keras.Sequential, target: str | None, inputs: list):
    field = _merge(inputs, model.name)
    for layer in model.layers:
        if isinstance(field, Exception):
            return field
        holds_target = target is not None and _is_nested_model(layer) and _contains(layer, target)
        try:
            shape = tuple(layer.input.shape)
        except (AttributeError, ValueError):
            shape = ()
        sizes = [shape[1:3] if len(shape) == 4 else None]
        try:
            field = _apply(layer, [field], sizes, target if holds_target else None)
        except _Unsupported as error:
            return error
        if holds_target or layer.name == target:
            return field
    if target is None:
        return field
    raise ValueError(f"no layer named {target!r} in {model.name!r}")


def _output_count(layer) -> int:
    if _is_nested_model(layer):
        return len(keras.tree.flatten(layer.output))
    return 1


def _apply(layer, incoming: list, sizes: list, target: str | None, index: int = 0):
    """The field after `layer` (or of `target` inside it, for a nested model)."""
    if _is_nested_model(layer):
        for field in incoming:
            if isinstance(field, Exception):
                return field
        if target is None and not isinstance(layer, keras.Sequential):
            config = layer.get_config()
            target = _layer_refs(config["output_layers"])[index][0]
        return _field_in(layer, target, incoming)
    merged = _merge(incoming, layer.name)
    if isinstance(merged, Exception):
        return merged
    size = next((s for s in sizes if s is not None), (None, None))
    return merged.then(_layer_field(layer, size))


def receptive_field(model: keras.Model, layer_name: str) -> ReceptiveField:
    """The theoretical receptive field of the units of `layer_name`'s output.

    Walks the model's graph (its serialised inbound nodes, `model.get_config()`) from the
    input(s) to the layer, which may also be inside a nested model (a backbone model called
    by the model). Supported: `Conv2D`, `DepthwiseConv2D`, `SeparableConv2D` (with dilation,
    "valid" / "same" padding), `MaxPooling2D`, `AveragePooling2D`, `ZeroPadding2D`,
    `Cropping2D`, pointwise layers (`POINTWISE_LAYERS`: activations, normalisations, merges,
    `Dense` on feature maps, ...) and nested functional or sequential models. Refused, by
    name: transposed convolutions and `UpSampling2D` (their units do not have one integer
    field), global poolings and `Flatten` (not spatial), and any other layer. Only the paths
    into the layer matter: unsupported layers elsewhere do no harm.

    Where branches meet (`Add`, `Concatenate`), the size is the largest over the branches;
    their jumps must agree; `start` is the one of the largest branch. With stride > 1,
    "same" padding depends on the input size: static input sizes are used, unknown ones are
    taken to be multiples of the stride (which changes `start` only).

    Args:
        model: A Keras functional or sequential model, channels_last.
        layer_name: The layer (its first call's output).

    Returns:
        `ReceptiveField(size, jump, start)`, each per axis `(height, width)`, in input pixels.
        `keras.applications.VGG16(include_top=False)`: 196 px at `block5_conv3`, 212 px at
        `block5_pool`.

    Raises:
        ValueError: No such layer, or a layer on the path cannot be handled (the message
            names it).
    """
    if not isinstance(layer_name, str):
        raise ValueError(f"layer_name must be a layer name (str), got {layer_name!r}")
    if not _contains(model, layer_name):
        raise ValueError(f"layer_name={layer_name!r}: no such layer in model {model.name!r}")
    inputs = [_Field.identity() for _ in keras.tree.flatten(model.inputs)]
    field = _field_in(model, layer_name, inputs)
    if isinstance(field, Exception):
        raise ValueError(f"receptive_field of {layer_name!r}: {field}") from None
    return ReceptiveField(
        size=tuple(int(v) for v in field.size),
        jump=tuple(int(v) for v in field.jump),
        start=tuple(float(v) for v in field.start),
    )


def _output_in_model(layer):
    """The output of `layer`'s first call in the model's graph.

    For a nested model (a backbone called by the model), `layer.output` is the output of its
    own inner graph, whose input layer may share a name with the outer model's ("images"); the
    tensor the outer graph passes on is the output of its call there.
    """
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if isinstance(layer, keras.Model) and nodes:
        outputs = keras.tree.flatten(nodes[0].output_tensors)
        return outputs[0] if len(outputs) == 1 else outputs
    return layer.output


def _image_probe(model: keras.Model, layer) -> keras.Model:
    """A model from the image input of `model` to `layer`'s output.

    Detectors take more inputs than the image (image shapes, scales, regions); the layers a
    receptive field is asked of depend on the image only.

    Raises:
        ValueError: The model has no single image input, or the layer also depends on the
            other inputs.
    """
    inputs = keras.tree.flatten(model.inputs)
    images = [t for t in inputs if len(t.shape) == 4]
    if len(images) != 1:
        raise ValueError(
            f"model {model.name!r}: expected one image input (batch, height, width, channels), "
            f"got {[tuple(t.shape) for t in inputs]}"
        )
    try:
        return keras.Model(images[0], _output_in_model(layer))
    except ValueError as err:
        others = [t.name for t in inputs if t is not images[0]]
        raise ValueError(
            f"layer_name={layer.name!r}: its output depends on inputs besides the image "
            f"({', '.join(others)}), so it has no receptive field over the image alone ({err})"
        ) from None


@dataclasses.dataclass(frozen=True)
class EmpiricalReceptiveField:
    """The measured (effective) receptive field of a layer's centre unit.

    Attributes:
        size: Side in input pixels of the smallest square, centred on the gradient's centre
            of mass, that holds `fraction` of the gradient mass.
        map: `(H, W)` float32 map of `|gradient|` (summed over input channels, averaged over
            the images), normalised to a maximum of 1.
        centre: `(y, x)` the square's centre (the rounded centre of mass).
        unit: `(y, x)` the output unit whose gradient was taken.
        fraction: The share of the mass inside the square.
    """

    size: int
    map: np.ndarray
    centre: tuple[int, int]
    unit: tuple[int, int]
    fraction: float


def empirical_receptive_field(
    model: keras.Model, layer_name: str, images, fraction: float = 0.95
) -> EmpiricalReceptiveField:
    """The effective receptive field of `layer_name`'s centre unit, from input gradients.

    The objective is the sum over channels of the layer's output at its centre position
    `(h // 2, w // 2)`, for each image; its gradient with respect to the images is taken
    (inference mode), `|gradient|` is summed over input channels and averaged over images.
    The size is the side of the smallest centred square (sides 1, 3, 5, ...) holding
    `fraction` of that mass, from the cumulative mass over growing squares (Chebyshev
    distance to the centre of mass). Use images large enough to hold the theoretical field
    (`receptive_field`); the effective one is usually much smaller (Luo et al., 2016).

    Args:
        model: A Keras model with one image input; `layer_name` must be in its own graph.
        layer_name: The layer.
        images: `(B, H, W, C)` images (the gradient depends on them for non-linear models).
        fraction: The share of the gradient mass, in (0, 1].

    Returns:
        An `EmpiricalReceptiveField`.

    Raises:
        ValueError: No such layer, a non-spatial layer, a bad `fraction`, or a zero gradient.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    layer = next((item for item in model.layers if item.name == layer_name), None)
    if layer is None:
        raise ValueError(
            f"layer_name={layer_name!r}: no such layer in the graph of model {model.name!r} "
            "(layers of nested models are not reachable here)"
        )
    images = tf.convert_to_tensor(np.asarray(keras.ops.convert_to_numpy(images)), tf.float32)
    if images.shape.rank != 4:
        raise ValueError(f"images must be (batch, height, width, channels), got {images.shape}")
    probe = _image_probe(model, layer)
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = keras.tree.flatten(probe(images, training=False))
        grids = {tuple(t.shape[1:3]) if t.shape.rank == 4 else None for t in outputs}
        if len(grids) != 1 or None in grids:
            shapes = [tuple(t.shape) for t in outputs]
            raise ValueError(
                f"layer_name={layer_name!r}: its output(s) {shapes} are not spatial maps on "
                "one grid"
            )
        # Several outputs on one grid (an RPN's scores and deltas): their sum at the unit.
        unit = (int(outputs[0].shape[1]) // 2, int(outputs[0].shape[2]) // 2)
        objective = tf.add_n(
            [tf.reduce_sum(tf.cast(t[:, unit[0], unit[1], :], tf.float32)) for t in outputs]
        )
    gradient = tape.gradient(objective, images)
    mass = np.abs(gradient.numpy().astype(np.float64)).sum(axis=-1).mean(axis=0)  # (H, W)
    total = mass.sum()
    if not total > 0:
        raise ValueError(f"layer_name={layer_name!r}: the centre unit's gradient is zero")
    rows, cols = np.indices(mass.shape)
    centre = (
        int(np.rint((rows * mass).sum() / total)),
        int(np.rint((cols * mass).sum() / total)),
    )
    distance = np.maximum(np.abs(rows - centre[0]), np.abs(cols - centre[1]))
    cumulative = np.cumsum(np.bincount(distance.ravel(), weights=mass.ravel()))
    radius = int(np.searchsorted(cumulative, fraction * total * (1 - 1e-12)))
    return EmpiricalReceptiveField(
        size=2 * radius + 1,
        map=(mass / mass.max()).astype(np.float32),
        centre=centre,
        unit=unit,
        fraction=float(fraction),
    )
