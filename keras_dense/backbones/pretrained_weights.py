"""Copying pretrained keras.applications weights into our models by layer name.

`backbone_weights` (`open_weight_source`) is one of:

- `"imagenet"`: the keras.applications network with its ImageNet weights (Keras downloads
  them the first time);
- the path of a weight file in the keras.applications layout, with or without its classifier
  top: a Keras 3 `.weights.h5` (each layer's group records the layer's name) or a Keras-2 style
  `.h5` (root attribute `layer_names`, as the keras.applications downloads). Which layers it
  holds (e.g. whether VGG16's `fc1` / `fc2` are there) is read from the file itself, with
  h5py. A Keras 3 file from a version that did not record the names is loaded into the
  keras.applications network instead, with or without the top by its number of layers;
- a `keras.Model` whose layers (nested models included) carry the keras.applications names,
  e.g. `keras.applications.VGG16(weights=None)` or any model with `block1_conv1` ...

`transfer_weights` checks every mapped layer's shapes before it copies anything: the first
layer (in the model's order) that the source lacks or holds with other shapes is named in a
ValueError, with the expected and found shapes and the source. Layers a builder marks optional
(VGG16's `fc6` / `fc7` from `fc1` / `fc2`) start fresh when the source has no such layer. The
result, a `LoadReport`, says where each layer came from; the builders attach it to the model
(`attach_record`) and the training model card reads it back (`weights_record`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Callable

import h5py
import keras
import numpy as np

# The model attribute holding the JSON of the model's `LoadReport` (not in its config).
RECORD_ATTRIBUTE = "_keras_dense_backbone_weights"


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Named pretrained layers, read on demand.

    Attributes:
        label: `"imagenet"`, the file path, or `"keras.Model '<name>'"`.
        shapes: `{layer name: [weight shapes]}` of the layers with weights, in the source's order.
        read: `read(layer name) -> [arrays]`, in `get_weights()` order.
    """

    label: str
    shapes: Mapping[str, list[tuple[int, ...]]]
    read: Callable[[str], list[np.ndarray]]

    def summary(self, limit: int = 6) -> str:
        """The first layer names, for messages."""
        names = list(self.shapes)
        shown = ", ".join(repr(n) for n in names[:limit])
        return f"{shown}{', ...' if len(names) > limit else ''} ({len(names)} weighted layers)"


@dataclasses.dataclass
class LoadReport:
    """Which layers of a model came from `backbone_weights` and which start fresh.

    Iterating (or `len`) gives the loaded layer names, so a report reads as the list of names
    the loaders used to return; `a + b` merges the reports of two parts of one model.

    Attributes:
        source: The source's label (`WeightSource.label`).
        loaded: Names of the model's layers that received weights, in the model's order.
        fresh: Layers the source could have filled but lacks (a source without VGG16's top:
            `fc6`, `fc7`); they keep their initialisation. Other layers (heads, BatchNorm
            layers VGG16 does not have) are never taken from the source.
        absent: The source layers the `fresh` ones would have come from (`fc1`, `fc2`).
    """

    source: str
    loaded: list[str]
    fresh: list[str] = dataclasses.field(default_factory=list)
    absent: list[str] = dataclasses.field(default_factory=list)

    def __iter__(self):
        return iter(self.loaded)

    def __len__(self) -> int:
        return len(self.loaded)

    def __add__(self, other: LoadReport) -> LoadReport:
        source = self.source if other.source == self.source else f"{self.source}; {other.source}"
        return LoadReport(
            source,
            self.loaded + other.loaded,
            self.fresh + other.fresh,
            self.absent + other.absent,
        )

    def record(self) -> dict:
        """`{"source": ..., "loaded": [...], "fresh": [...]}`, JSON-serialisable."""
        return {"source": self.source, "loaded": list(self.loaded), "fresh": list(self.fresh)}

    def fresh_message(self) -> str | None:
        """One line naming the layers that start fresh, or None when there are none."""
        if not self.fresh:
            return None
        return (
            f"backbone_weights={self.source}: {', '.join(self.fresh)} start fresh (the source "
            f"holds no {', '.join(self.absent)}, e.g. a file without the classifier top)"
        )


def attach_record(model: keras.Model, report: LoadReport) -> None:
    """Stores `report.record()` on `model` (as a JSON string: not tracked, not in its config)."""
    setattr(model, RECORD_ATTRIBUTE, json.dumps(report.record()))


def weights_record(model: keras.Model) -> dict | None:
    """The record `attach_record` stored on `model`, or None (no pretrained weights loaded)."""
    text = getattr(model, RECORD_ATTRIBUTE, None)
    return None if text is None else json.loads(text)


def is_model_source(backbone_weights) -> bool:
    """Whether `backbone_weights` is a `keras.Model` (or an already opened `WeightSource`)."""
    return isinstance(backbone_weights, (keras.Model, WeightSource))


def check_weights_argument(backbone_weights, network: str) -> None:
    """Raises unless `backbone_weights` is None, "imagenet", an existing file or a model.

    Args:
        backbone_weights: A builder's `backbone_weights`.
        network: The keras.applications network the weights belong to, for messages.

    Raises:
        FileNotFoundError: Anything else (a path that does not exist).
    """
    if backbone_weights is None or backbone_weights == "imagenet":
        return
    if is_model_source(backbone_weights):
        return
    if not isinstance(backbone_weights, (str, os.PathLike)) or not os.path.exists(backbone_weights):
        raise FileNotFoundError(
            f"backbone_weights={backbone_weights!r}: expected None, 'imagenet', the path of an "
            f"existing {network} weight file, or a keras.Model with its layer names"
        )


def plain_argument(backbone_weights):
    """`backbone_weights` with a path-like turned into a `str` (models and strings as they are)."""
    return backbone_weights if is_model_source(backbone_weights) else os.fspath(backbone_weights)


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------
def model_source(model: keras.Model, label: str | None = None) -> WeightSource:
    """The weighted layers of `model` and of the models nested in it, by name (first wins)."""
    layers: dict[str, keras.layers.Layer] = {}

    def walk(owner: keras.Model) -> None:
        for layer in owner.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif layer.weights:
                layers.setdefault(layer.name, layer)

    walk(model)
    return WeightSource(
        label or f"keras.Model {model.name!r}",
        {name: [tuple(w.shape) for w in layer.weights] for name, layer in layers.items()},
        lambda name: layers[name].get_weights(),
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _natural(key: str) -> tuple:
    """`conv2d_10` after `conv2d_9`: Keras 3 numbers a class's layers in the model's order."""
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return match.group(1), int(match.group(2) or -1), key


def _keras3_layers(group: h5py.Group, found: dict) -> bool:
    """Collects `{name: [(dataset path, shape)]}`; False when a weighted group has no name."""
    for key in sorted(group, key=_natural):
        child = group[key]
        if not isinstance(child, h5py.Group):
            continue
        if key != "vars":
            if not _keras3_layers(child, found):
                return False
            continue
        arrays = sorted((k for k in child if k.isdigit()), key=int)
        if not arrays:
            continue
        if "name" not in child.attrs:
            return False
        found.setdefault(
            _text(child.attrs["name"]), [(child[k].name, child[k].shape) for k in arrays]
        )
    return True


def _keras2_layers(group: h5py.Group) -> dict:
    found = {}
    for name in map(_text, group.attrs["layer_names"]):
        weight_names = [_text(w) for w in group[name].attrs.get("weight_names", [])]
        if weight_names:
            found[name] = [(group[name][w].name, group[name][w].shape) for w in weight_names]
    return found


def weight_file_layers(path: str) -> dict[str, list[tuple[str, tuple[int, ...]]]] | None:
    """`{layer name: [(dataset path, shape)]}` of a Keras weight file, in the file's order.

    Args:
        path: A Keras 3 `.weights.h5` or a Keras-2 style `.h5` file (weights only or a whole
            model: its `model_weights` group).

    Returns:
        The layers with weights, or None for a Keras 3 file that does not record the names.

    Raises:
        ValueError: Not an HDF5 file, or one without Keras weights.
    """
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"backbone_weights={path!r}: not an HDF5 weight file (expected a keras.applications "
            "layout `.weights.h5` or Keras-2 `.h5` file)"
        )
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs:
            return _keras2_layers(f)
        if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
            return _keras2_layers(f["model_weights"])
        if "layers" not in f:
            raise ValueError(
                f"backbone_weights={path!r}: an HDF5 file without Keras weights (no 'layers' "
                "group, no 'layer_names' attribute)"
            )
        found: dict = {}
        return found if _keras3_layers(f, found) else None


def _read_datasets(path: str, datasets: Sequence[tuple[str, tuple]]) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [np.asarray(f[dataset]) for dataset, _ in datasets]


def _unnamed_file_source(path: str, constructor: Callable[..., keras.Model]) -> WeightSource:
    """A Keras 3 file without layer names: loaded into the keras.applications network.

    Such a file addresses layers by class and position, so it only loads into the network it
    was saved from; it holds the top when it has more layer groups than the no-top network.
    """
    network = constructor(weights=None, include_top=False, input_shape=(224, 224, 3))
    with h5py.File(path, "r") as f:
        top = len(f["layers"]) > len(network.layers)
    if top:
        network = constructor(weights=None, include_top=True)
    try:
        network.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"backbone_weights={path!r}: not a weight file of keras.applications."
            f"{constructor.__name__} (include_top={top}): {error}"
        ) from None
    return model_source(network, label=path)


def open_weight_source(
    backbone_weights, constructor: Callable[..., keras.Model], include_top: bool = False
) -> WeightSource:
    """Opens `backbone_weights` (module docstring) as a `WeightSource`.

    Args:
        backbone_weights: `"imagenet"`, a weight file path, a `keras.Model` or a `WeightSource`
            (returned as it is).
        constructor: The keras.applications constructor (`keras.applications.VGG16`), for
            `"imagenet"` and for Keras 3 files without layer names.
        include_top: With `"imagenet"`: build the network with its classifier (the layers
            are wanted). A file or model holds what it holds.

    Returns:
        The source.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A file that is not a Keras weight file.
    """
    if isinstance(backbone_weights, WeightSource):
        return backbone_weights
    if isinstance(backbone_weights, keras.Model):
        return model_source(backbone_weights)
    if backbone_weights == "imagenet":
        shape = None if include_top else (224, 224, 3)
        network = constructor(weights="imagenet", include_top=include_top, input_shape=shape)
        return model_source(network, label="imagenet")
    check_weights_argument(backbone_weights, f"keras.applications.{constructor.__name__}")
    path = os.path.abspath(os.fspath(backbone_weights))
    layers = weight_file_layers(path)
    if layers is None:
        return _unnamed_file_source(path, constructor)
    return WeightSource(
        path,
        {name: [tuple(shape) for _, shape in datasets] for name, datasets in layers.items()},
        lambda name: _read_datasets(path, layers[name]),
    )


# ---------------------------------------------------------------------------------------
# Copying
# ---------------------------------------------------------------------------------------
def _mismatch(source: WeightSource, network: str, ours: str, theirs: str, expected, found):
    if found is None:
        found_text = f"found no such layer (the source holds {source.summary()})"
    else:
        found_text = f"found {found}"
    return ValueError(
        f"backbone_weights={source.label!r} does not fit this model's {network} layers: the "
        f"first mismatching layer is {theirs!r} (for the model's {ours!r}): expected weight "
        f"shapes {expected}, {found_text}"
    )


def transfer_weights(
    target: keras.Model,
    source: WeightSource | keras.Model,
    name_map: Mapping[str, str],
    transforms: Mapping[str, Callable[[list[np.ndarray]], list[np.ndarray]]] | None = None,
    optional: Sequence[str] = (),
    network: str = "pretrained",
) -> LoadReport:
    """Copies weights from `source` layers into `target` layers, after checking them all.

    Args:
        target: Model receiving the weights.
        source: The source (a `keras.Model` is read by its layer names).
        name_map: `{target layer name: source layer name}`. Target names missing from
            `target` are ignored (a builder may not have every layer).
        transforms: Optional `{target layer name: fn}` applied to the source weight list
            before the check (e.g. reshaping a Dense kernel into a conv kernel).
        optional: Target layers that start fresh when the source has no such layer.
        network: The source network, for messages (`"keras.applications.VGG16"`).

    Returns:
        The report: the loaded layers (in `target`'s order) and the fresh ones.

    Raises:
        ValueError: Naming the first mapped layer (in `target`'s order) that the source lacks
            (and is not optional) or holds with other weight shapes.
    """
    if isinstance(source, keras.Model):
        source = model_source(source)
    transforms = transforms or {}
    pending: dict[str, list[np.ndarray] | None] = {}
    parts: dict[str, keras.layers.Layer] = {}
    fresh, absent, loaded_names = [], [], []
    for layer in target.layers:
        ours = layer.name
        if ours not in name_map:
            continue
        theirs = name_map[ours]
        expected = [tuple(w.shape) for w in layer.weights]
        if theirs not in source.shapes and _nested_in(layer, source):
            # A layer nesting layers (ConvNeXt's Sequential stem): the file names its parts.
            for part in layer.layers:
                if part.weights:
                    parts[part.name] = part
                    wanted = [tuple(w.shape) for w in part.weights]
                    if source.shapes[part.name] != wanted:
                        found = source.shapes[part.name]
                        raise _mismatch(source, network, ours, part.name, wanted, found)
            loaded_names.append(ours)
            continue
        if theirs not in source.shapes:
            if ours in optional:
                fresh.append(ours)
                absent.append(theirs)
                continue
            raise _mismatch(source, network, ours, theirs, expected, None)
        arrays = None
        found = source.shapes[theirs]
        if ours in transforms:
            arrays = transforms[ours](source.read(theirs))
            found = [tuple(a.shape) for a in arrays]
        if found != expected:
            raise _mismatch(source, network, ours, theirs, expected, found)
        pending[ours] = arrays
    for ours, arrays in pending.items():
        target.get_layer(ours).set_weights(
            source.read(name_map[ours]) if arrays is None else arrays
        )
    for name, part in parts.items():
        part.set_weights(source.read(name))
    loaded = [
        layer.name for layer in target.layers if layer.name in pending or layer.name in loaded_names
    ]
    return LoadReport(source.label, loaded, fresh, absent)


def _nested_in(layer, source: WeightSource) -> bool:
    """Whether `layer` nests weighted layers that `source` all holds by name."""
    parts = [part for part in getattr(layer, "layers", ()) if part.weights]
    return bool(parts) and all(part.name in source.shapes for part in parts)


def weighted_layer_names(features: Callable[..., Mapping], output_stride: int) -> frozenset[str]:
    """The names of the weighted layers a family's `features` function builds.

    Builds the features once on a symbolic 3-channel input of unknown size.
    """
    image = keras.Input((None, None, 3))
    outputs = features(image, output_stride)
    model = keras.Model(image, list(outputs.values()))
    return frozenset(layer.name for layer in model.layers if layer.weights)


def by_name_loader(
    constructor: Callable[..., keras.Model],
    features: Callable[..., Mapping],
    output_stride: int,
    extra_names: Callable[[WeightSource], dict[str, str]] | None = None,
) -> Callable[[keras.Model, object], LoadReport]:
    """A `Backbone.load_weights` for a family rebuilt with keras.applications layer names.

    Args:
        constructor: The keras.applications constructor (`keras.applications.ResNet50`).
        features: The family's `features(x, output_stride)`; the layers it builds at
            `output_stride` (the network's own) are the backbone layers.
        output_stride: The stride at which `features` builds every backbone layer.
        extra_names: `extra_names(source) -> {our name: source name}` for backbone layers
            named differently from the source (Xception's unnamed residual convolutions).

    Returns:
        `load(model, backbone_weights) -> LoadReport`: copies a source (module docstring) of
        the keras.applications network (its classifier, if any, is not used) into every
        backbone layer of `model`, which may hold other layers (heads) too.
    """
    backbone_layers = functools.cache(lambda: weighted_layer_names(features, output_stride))
    network = f"keras.applications.{constructor.__name__}"

    def load(model: keras.Model, backbone_weights) -> LoadReport:
        source = open_weight_source(backbone_weights, constructor)
        ours = [
            layer.name
            for layer in model.layers
            if layer.weights and layer.name in backbone_layers()
        ]
        if not ours:
            raise ValueError(
                f"backbone_weights={source.label!r}: the model has no {network} layers"
            )
        mapping = {name: name for name in ours}
        if extra_names is not None:
            mapping.update({k: v for k, v in extra_names(source).items() if k in mapping})
        return transfer_weights(model, source, mapping, network=network)

    return load
