"""Data: the TFRecord schema, converters, read-back and tf.data input pipelines."""

from keras_dense.data.converters import (
    SHAPE_CLASSES,
    convert_coco,
    convert_folders,
    convert_instances,
    convert_pairs,
    convert_shapes,
    convert_voc,
    render_shapes,
)
from keras_dense.data.detection_pipeline import detection_dataset
from keras_dense.data.errors import BadInputError
from keras_dense.data.reader import decode_record, read_examples
from keras_dense.data.segmentation_pipeline import segmentation_dataset
from keras_dense.utils.normalization import normalize

__all__ = [
    "SHAPE_CLASSES",
    "BadInputError",
    "convert_coco",
    "convert_folders",
    "convert_instances",
    "convert_pairs",
    "convert_shapes",
    "convert_voc",
    "decode_record",
    "detection_dataset",
    "normalize",
    "read_examples",
    "render_shapes",
    "segmentation_dataset",
]
