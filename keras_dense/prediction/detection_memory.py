"""How many tiles of sliced detection fit in a memory budget (`--max-memory`).

One image through a Fast or Faster R-CNN holds, at its peak:
- the feature extractor's live activations at the size the card resizes the image to
  (`keras_dense.signatures.memory_budget.activation_bytes`, from the layers' output specs:
  nothing is run);
- per region of interest, the pooled cells and the fc head's activations (each Dense layer's
  inputs and outputs), for as many regions as the detector scores: the proposal layer's
  `test_post_nms_top_n` (Faster R-CNN) or selective search's 2000 (Fast R-CNN).

Their sum, times the same safety factor the segmentation plan uses, is one tile's bytes. The
plan runs `max_memory // tile_bytes` tiles per model call; the detections do not depend on
that number (`detect_sliced`).
"""

from __future__ import annotations

import functools

import keras

from keras_dense.detection import proposes_regions
from keras_dense.detection.proposals import DEFAULT_MAX_BOXES
from keras_dense.layers.multilevel_roi_pooling import MultiLevelRoIPooling
from keras_dense.layers.roi_pooling import RoIPooling
from keras_dense.signatures.memory_budget import SAFETY_FACTOR, activation_bytes

ROI_LAYERS = (RoIPooling, MultiLevelRoIPooling)


def _feature_extractor(model: keras.Model) -> keras.Model:
    """The part of `model` from the image to the feature map(s) the RoIs are pooled from."""
    names = {layer.name for layer in model.layers}
    if "backbone" in names:  # Faster R-CNN: a nested functional model
        return model.get_layer("backbone")
    for layer in model.layers:  # Fast R-CNN: one flat graph, image and rois in
        if isinstance(layer, ROI_LAYERS):
            return keras.Model(model.inputs[0], keras.tree.flatten(layer.input)[0])
    raise ValueError(
        f"model {model.name!r}: no 'backbone' and no RoI pooling layer, so its memory per "
        "tile cannot be planned; leave --max-memory out"
    )


def _dense_bytes_per_roi(model: keras.Layer) -> int:
    """float32 bytes of every Dense layer's input and output for one RoI (the fc head)."""
    return 4 * sum(
        int(layer.kernel.shape[0]) + int(layer.kernel.shape[1])
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Dense)
    )


def _regions_per_image(model: keras.Model) -> int:
    if proposes_regions(model):
        return int(model.get_layer("proposal_layer").test_post_nms_top_n)
    return DEFAULT_MAX_BOXES


@functools.lru_cache(maxsize=16)  # per model and tile shape: planned once, not per image
def tile_bytes(model: keras.Model, height: int, width: int) -> int:
    """Estimated peak bytes of one image of `height` x `width` pixels as the detector sees it
    (after the card's resizing), safety factor included (module docstring)."""
    features = activation_bytes(_feature_extractor(model), int(height), int(width), 3)
    regions = _regions_per_image(model) * _dense_bytes_per_roi(model)
    return int(SAFETY_FACTOR * (features + regions))


def tiles_per_call(model: keras.Model, height: int, width: int, max_memory: int) -> int:
    """How many resized tiles of `height` x `width` one model call may take within
    `max_memory` bytes.

    Raises:
        ValueError: Not even one tile fits (naming `--max-memory` and the bytes one needs).
    """
    need = tile_bytes(model, height, width)
    count = int(max_memory) // max(need, 1)
    if count < 1:
        raise ValueError(
            f"--max-memory {max_memory} bytes: one {height} x {width} tile (as the detector "
            f"sees it) needs about {need} bytes; raise --max-memory or use a smaller --slice"
        )
    return count
