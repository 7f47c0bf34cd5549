"""Converters from common data-set layouts into keras_dense TFRecords."""

from keras_dense.data.converters.coco import convert_coco
from keras_dense.data.converters.folders import convert_folders
from keras_dense.data.converters.instances import convert_instances
from keras_dense.data.converters.pairs import convert_pairs
from keras_dense.data.converters.shapes import (
    SHAPE_CLASSES,
    convert_shapes,
    render_shape_instances,
    render_shapes,
)
from keras_dense.data.converters.voc import convert_voc

__all__ = [
    "SHAPE_CLASSES",
    "convert_coco",
    "convert_folders",
    "convert_instances",
    "convert_pairs",
    "convert_shapes",
    "convert_voc",
    "render_shape_instances",
    "render_shapes",
]
