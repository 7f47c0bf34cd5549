"""Backbones: one contract (`Backbone`) and one registry for every trunk.

`get_backbone("resnet50").model(output_stride=16)` is a functional model returning
`{"stride_4": C2, "stride_8": C3, "stride_16": C4}`; builders call
`get_backbone(name).apply(x, output_stride)` to build the same layers inside their own graph.
Adding a family is one module that calls `register_backbone`, plus its line in
`keras_dense.backbones.registry.FAMILY_MODULES`.
"""

from keras_dense.backbones.backbone import Backbone, features_by_stride, stride_key
from keras_dense.backbones.registry import (
    backbone_names,
    build_backbone,
    get_backbone,
    register_backbone,
)

__all__ = [
    "Backbone",
    "backbone_names",
    "build_backbone",
    "features_by_stride",
    "get_backbone",
    "register_backbone",
    "stride_key",
]
