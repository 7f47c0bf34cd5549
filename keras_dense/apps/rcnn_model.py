"""R-CNN (Girshick et al., CVPR 2014) with a VGG16 network, as the Fast R-CNN paper compares it.

Every region proposal is cropped out of the image and run through the whole network on its
own: the box is dilated so that `context_padding` pixels (16) of context surround it at the
warped size, warped anisotropically to `crop_size x crop_size` (224; `ContextWarp`), and the
crops go through VGG16's conv1_1 ... pool5, fc6 and fc7 (4096 units, dropout 0.5). On fc7 sit
the same two heads as in Fast R-CNN: `cls_score` (K + 1 logits, background = 0) and
class-specific `bbox_pred` (4 deltas per class).

Differences from the 2014 paper, all as in the Fast R-CNN paper's R-CNN comparisons:

- the per-class linear SVMs trained on fc7 features (with hard-negative mining) are replaced
  by the softmax classifier `cls_score` trained with the network;
- the class-specific box regression (the paper's ridge regression on pool5 features) is the
  `bbox_pred` layer on fc7, trained jointly with the smooth-L1 loss of Fast R-CNN;
- training uses Fast R-CNN's RoI sampling (`rois_per_image` per image, 25 % foreground at
  IoU >= 0.5, background in [0.1, 0.5)) rather than R-CNN's 32 + 96 windows per batch from
  all images. The model is a `FastRCNN`, so `fit`, `detect`, the detection task, the recipes
  and VOC mAP apply unchanged.

Memory: R-CNN's cost is one full VGG16 per region. The fc7 features of each region need only
the region itself, so the regions of all images are flattened into one batch and fed to the
convolutional network `roi_chunk` at a time (`ChunkedTimeDistributed`, an in-graph loop):
the peak activation memory is that of `roi_chunk` 224 x 224 images (about 1.3 GB for 64 at
inference) instead of 26 GB for the first convolution over 2000 regions. The warped crops
themselves, `(B, R, 224, 224, 3)` float32, take 0.6 MB per region (1.2 GB for 2000). Training
keeps every chunk's activations for the backward pass (128 regions per step at the default
2 x 64 RoIs).

Nothing is frozen: R-CNN fine-tunes the whole network (pass `frozen_layers` for less).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_dense.apps.builder import makes
from keras_dense.apps.fast_rcnn_model import FC_UNITS, FastRCNN, fast_rcnn_classifier
from keras_dense.apps.two_stage_detector import build_detector
from keras_dense.backbones.pretrained_weights import (
    LoadReport,
    open_weight_source,
    transfer_weights,
)
from keras_dense.backbones.registry import get_backbone
from keras_dense.backbones.vgg16 import (
    VGG16_FC_NAMES,
    VGG16_IMAGENET_NAMES,
    default_pool,
    vgg16_trunk,
)
from keras_dense.layers.chunked_time_distributed import ChunkedTimeDistributed
from keras_dense.layers.context_warp import ContextWarp

# The per-region convolutional network, nested in the model under this name.
CONV_NETWORK = "rcnn_conv"


def load_rcnn_vgg16_weights(model: keras.Model, backbone_weights) -> LoadReport:
    """Copies keras.applications VGG16 weights into an R-CNN model.

    Not the VGG16 family's `load_weights`: the convolutions sit in a nested network and fc6 /
    fc7 in the outer model, both filled from one source network.

    conv1_1 ... conv5_3 go into the nested per-region network (`rcnn_conv`), VGG16's
    `fc1` / `fc2` into `fc6` / `fc7` (as Dense layers: the crops are 224 x 224, so pool5 is
    7 x 7 x 512 as in VGG16); a source without VGG16's top leaves `fc6` / `fc7` fresh.

    Args:
        model: An R-CNN model from `rcnn`.
        backbone_weights: `"imagenet"`, a `keras.applications.VGG16` weight file (with or
            without its top) or a `keras.Model` with VGG16's layer names.

    Returns:
        Which layers were loaded and which start fresh.

    Raises:
        ValueError: A layer's weight shapes do not match VGG16's (e.g. `crop_size` not 224).
    """
    network = "keras.applications.VGG16"
    source = open_weight_source(backbone_weights, keras.applications.VGG16, include_top=True)
    conv = model.get_layer("rcnn_features").layer
    report = transfer_weights(conv, source, VGG16_IMAGENET_NAMES, network=network)
    fc = transfer_weights(
        model, source, VGG16_FC_NAMES, optional=tuple(VGG16_FC_NAMES), network=network
    )
    return report + fc


@makes("detection")
def rcnn(
    num_classes: int = 20,
    backbone: str = "vgg16",
    crop_size: int = 224,
    context_padding: int = 16,
    roi_chunk: int | None = 64,
    fc_units: int = FC_UNITS,
    input_shape: tuple = (None, None, 3),
    backbone_weights: str | None = None,
    weights: str | None = None,
    dropout: float = 0.5,
    frozen_layers: Sequence[str] = (),
    name: str = "rcnn",
    **kwargs,
) -> FastRCNN:
    """Builds R-CNN (VGG16) with softmax and box-regression heads on fc7.

    Args:
        num_classes: Object classes K; the heads have K + 1 outputs (background = 0).
        backbone: Only `"vgg16"` (from the registry, `keras_dense.backbones`).
        crop_size: Side of the warped region (224, VGG16's input size).
        context_padding: Context pixels around the box at the warped size (16, as R-CNN).
        roi_chunk: Regions per pass of the convolutional network (64); None runs all the
            regions of the batch in one pass (memory grows with their number).
        fc_units: Units of fc6 and fc7 (4096; smaller only for tests).
        input_shape: Image shape (H, W, 3); H and W may be None.
        backbone_weights: None, `"imagenet"` or a VGG16 weight file: conv1_1..conv5_3 by name,
            fc6/fc7 from VGG16's fc1/fc2 (needs `crop_size=224` and `fc_units=4096`).
        weights: None or a weight file of this model (`.weights.h5` or `.keras`).
        dropout: Dropout rate after fc6 and fc7 (0.5).
        frozen_layers: Names of layers made non-trainable (none: R-CNN fine-tunes all;
            conv layers are looked up in the nested `rcnn_conv` network).
        name: Model name.
        **kwargs: Training options of `FastRCNN` (`rois_per_image`, `fg_fraction`, ...).

    Returns:
        A `FastRCNN` model with inputs `[images (B, H, W, 3), rois (B, R, 4)]` and outputs
        `[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]`.

    Raises:
        ValueError: Bad argument.
    """
    family = get_backbone(backbone, allowed=("vgg16",))
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 32:
        raise ValueError(
            f"crop_size={crop_size!r}: expected an int >= 32 (VGG16 pools 5 times by 2)"
        )
    if backbone_weights is not None and (crop_size != 224 or fc_units != FC_UNITS):
        raise ValueError(
            f"crop_size={crop_size!r}, fc_units={fc_units!r}: backbone_weights needs "
            f"crop_size=224 and fc_units={FC_UNITS} (VGG16's fc1 takes 7 x 7 x 512 inputs)"
        )
    if isinstance(fc_units, bool) or not isinstance(fc_units, int) or fc_units < 1:
        raise ValueError(f"fc_units={fc_units!r}: expected a positive int")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")
    if roi_chunk is not None and (
        isinstance(roi_chunk, bool) or not isinstance(roi_chunk, int) or roi_chunk < 1
    ):
        raise ValueError(f"roi_chunk={roi_chunk!r}: expected None or a positive int")

    def graph(inputs, classes: int):
        images, rois = inputs
        return rcnn_graph(
            images, rois, classes, crop_size, context_padding, roi_chunk, fc_units, dropout
        )

    model = build_detector(
        graph,
        FastRCNN,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        weights=weights,
        backbone_weights=backbone_weights,
        backbone_family=family,
        load_backbone=load_rcnn_vgg16_weights,
        **kwargs,
    )
    if frozen_layers:
        conv = model.get_layer("rcnn_features").layer
        names = {layer.name for layer in conv.layers}
        for layer_name in frozen_layers:
            owner = conv if layer_name in names else model
            owner.get_layer(layer_name).trainable = False
    return model


def rcnn_conv_network(crop_size: int, channels: int = 3) -> keras.Model:
    """VGG16's conv1_1 ... pool5 on one batch of warped regions, flattened.

    Args:
        crop_size: Side of the warped regions.
        channels: Image channels.

    Returns:
        A functional model `(n, crop, crop, channels) -> (n, (crop / 32)^2 * 512)` named
        `rcnn_conv` (pooling rounds up, as Caffe: `ceil`).
    """
    crops = keras.Input((crop_size, crop_size, channels), name="crops")
    pool5 = vgg16_trunk(crops, pool=default_pool)["pool5"]
    flat = keras.layers.Flatten(name="pool5_flatten")(pool5)
    return keras.Model(crops, flat, name=CONV_NETWORK)


def rcnn_graph(
    images,
    rois,
    num_classes: int,
    crop_size: int,
    context_padding: int,
    roi_chunk: int | None,
    fc_units: int,
    dropout: float,
):
    """R-CNN from the image and RoI inputs to `[cls_score, bbox_pred]`.

    Args:
        images: The image input tensor `(B, H, W, 3)`.
        rois: The RoI input tensor `(B, R, 4)`.
        num_classes: Object classes K (the heads have K + 1 outputs).
        crop_size: Side of the warped regions.
        context_padding: Context pixels around each box at the warped size.
        roi_chunk: Regions per pass of the conv network, or None for all at once.
        fc_units: Units of fc6 and fc7.
        dropout: Dropout rate after fc6 and fc7.

    Returns:
        `[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]`.
    """
    crops = ContextWarp(crop_size, context_padding, name="context_warp")([images, rois])
    conv = rcnn_conv_network(crop_size, images.shape[-1])
    x = ChunkedTimeDistributed(conv, roi_chunk, name="rcnn_features")(crops)
    return fast_rcnn_classifier(x, num_classes, dropout, fc_units)
