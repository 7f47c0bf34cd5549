"""Fast R-CNN (Girshick, ICCV 2015) with a VGG16 trunk.

The conv features of the whole image are computed once (VGG16 up to conv5_3, stride 16);
every region of interest is max-pooled into a 7 x 7 grid (`RoIPooling`), goes through fc6 and
fc7 (4096 units each, dropout 0.5) and two sibling heads: `cls_score` (K + 1 logits,
background = class 0) and `bbox_pred` (4 deltas per class, `(dx, dy, dw, dh)`). conv1_x and
conv2_x are frozen when `backbone_weights` loads them, as in the paper (from scratch, nothing
is frozen).

`FastRCNN` is a functional `keras.Model` whose `train_step` consumes the batches of
`keras_dense.data.detection_dataset` (dicts with images, ground truth and proposals): RoI
sampling, targets and the multi-task loss all run in the graph, so `model.fit(dataset)` works.
"""

from __future__ import annotations

import keras

from keras_dense.apps.builder import makes
from keras_dense.apps.two_stage_detector import TwoStageDetector, build_detector
from keras_dense.backbones.registry import get_backbone
from keras_dense.backbones.vgg16 import VGG16_FC_NAMES, VGG16_IMAGENET_NAMES
from keras_dense.layers.roi_pooling import RoIPooling

FROZEN_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2")
FC_UNITS = 4096
FEATURE_STRIDE = 16
# Our layer name -> keras.applications.VGG16 layer name (conv trunk, fc6/fc7 from fc1/fc2).
FAST_RCNN_IMAGENET_NAMES = {**VGG16_IMAGENET_NAMES, **VGG16_FC_NAMES}
BATCH_KEYS = ("images", "boxes", "labels", "num_boxes", "proposals", "num_proposals")


@keras.saving.register_keras_serializable(package="keras_dense")
class FastRCNN(TwoStageDetector):
    """A functional model `[images, rois] -> [cls_score, bbox_pred]` trained as Fast R-CNN.

    Build it with `keras_dense.apps.fast_rcnn(...)`. Any functional graph with these inputs
    and outputs works (e.g. a compressed one from `compress_dense`).

    `fit`/`evaluate` take detection batches (see `keras_dense.data.detection_dataset`): dicts
    with `images`, `boxes`, `labels`, `num_boxes`, `proposals`, `num_proposals` and optionally
    `difficult`. Each step samples `rois_per_image` RoIs per image (`sample_rois`) and minimises
    `fast_rcnn_loss`. `predict` on such a dict runs the heads on the proposals. Compile with an
    optimizer only (the loss is built in); the paper uses SGD, momentum 0.9, lr 0.001.
    Metrics: `loss`, `cls_loss`, `box_loss`.

    Args:
        *args: `inputs`, `outputs` (and `name`), as for a functional `keras.Model`.
        **kwargs: The RoI sampling options of `TwoStageDetector`, with the paper's defaults
            `rois_per_image=64` (2 images give R = 128) and `bg_iou_range=(0.1, 0.5)`, and
            the functional model's keyword arguments.
    """

    default_rois_per_image = 64
    default_bg_iou_range = (0.1, 0.5)
    batch_keys = BATCH_KEYS
    extra_inputs = {"rois": (None, 4)}

    def check_graph(self) -> None:
        if len(self.outputs) != 2:
            raise ValueError(
                f"outputs: expected [cls_score, bbox_pred], got {len(self.outputs)} outputs"
            )
        classes = self.outputs[0].shape[-1]
        if classes is None or self.outputs[1].shape[-1] != 4 * classes:
            raise ValueError(
                "outputs: expected cls_score (B, R, K + 1) and bbox_pred (B, R, 4 (K + 1)), got "
                f"{self.outputs[0].shape} and {self.outputs[1].shape}"
            )

    def compute_losses(self, batch: dict, training: bool = True, seed=None) -> dict:
        """The head on RoIs sampled among the batch's proposals: `cls_loss`, `box_loss`, `loss`."""
        targets = self.sample_targets(batch, seed=seed)
        cls_score, bbox_pred = self([batch["images"], targets["rois"]], training=training)
        terms = self.box_head_losses(targets, cls_score, bbox_pred)
        terms["loss"] = self.total_loss(terms)
        return terms

    def model_inputs(self, batch: dict) -> list:
        """`[images, proposals]` of a batch dict, for calling the model."""
        return [batch["images"], batch["proposals"]]


@makes("detection")
def fast_rcnn(
    num_classes: int = 20,
    backbone: str = "vgg16",
    pool_size: int = 7,
    input_shape: tuple = (None, None, 3),
    backbone_weights: str | None = None,
    weights: str | None = None,
    roi_mode: str = "max",
    dropout: float = 0.5,
    name: str = "fast_rcnn",
    **kwargs,
) -> FastRCNN:
    """Builds Fast R-CNN (VGG16, the paper's model "L").

    Args:
        num_classes: Object classes K; the heads have K + 1 outputs (background = 0).
        backbone: Only `"vgg16"` (the registry's VGG16 family, as the paper).
        pool_size: RoI pooling grid (7; fc6 then has 7 * 7 * 512 inputs).
        input_shape: Image shape (H, W, 3); H and W may be None.
        backbone_weights: None, `"imagenet"`, a VGG16 weight file or a `keras.Model` with
            VGG16's layer names: conv1_1..conv5_3 from VGG16 by name, fc6/fc7 from VGG16's
            fc1/fc2 (same 25088 -> 4096 -> 4096 shapes, requires `pool_size=7`); a source
            without VGG16's top leaves fc6/fc7 fresh, and the builder says so.
        weights: None or a weight file of this model (`.weights.h5` or `.keras`).
        roi_mode: `"max"` (Fast R-CNN RoI pooling) or `"align"` (RoIAlign).
        dropout: Dropout rate after fc6 and fc7 (0.5).
        name: Model name.
        **kwargs: Training options of `FastRCNN` (`rois_per_image`, `fg_fraction`, ...).

    Returns:
        A `FastRCNN` model with inputs `[images (B, H, W, 3), rois (B, R, 4)]` and outputs
        `[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]`.

    Raises:
        ValueError: Bad argument.
    """
    family = get_backbone(backbone, allowed=("vgg16",))  # the paper's trunk only
    FastRCNN.check_options(kwargs)
    if backbone_weights is not None and pool_size != 7:
        raise ValueError(
            f"pool_size={pool_size!r}: backbone_weights needs pool_size=7 (VGG16's fc1 takes "
            "7 x 7 x 512 inputs)"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")

    def graph(inputs, classes: int):
        images, rois = inputs
        return fast_rcnn_graph(images, rois, classes, pool_size, roi_mode, dropout)

    return build_detector(
        graph,
        FastRCNN,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        weights=weights,
        backbone_weights=backbone_weights,
        load_backbone=family.load_weights,
        backbone_source=family.weights_source,
        # The paper freezes the pretrained conv1 / conv2; random filters must train.
        frozen_layers=FROZEN_LAYERS if backbone_weights is not None else (),
        **kwargs,
    )


def fast_rcnn_graph(images, rois, num_classes: int, pool_size: int, roi_mode: str, dropout: float):
    """Fast R-CNN from the image and RoI inputs to `[cls_score, bbox_pred]`.

    Args:
        images: The image input tensor `(B, H, W, 3)`.
        rois: The RoI input tensor `(B, R, 4)`.
        num_classes: Object classes K (the heads have K + 1 outputs).
        pool_size: RoI pooling grid.
        roi_mode: `"max"` or `"align"`.
        dropout: Dropout rate after fc6 and fc7.

    Returns:
        `[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]`.
    """
    # conv5_3 at stride 16: RoI pooling replaces pool5.
    features = get_backbone("vgg16").apply(images, FEATURE_STRIDE)[FEATURE_STRIDE]
    return fast_rcnn_head(features, rois, num_classes, pool_size, roi_mode, dropout)


def fast_rcnn_head(
    features,
    rois,
    num_classes: int,
    pool_size: int = 7,
    roi_mode: str = "max",
    dropout: float = 0.5,
    fc_units: int = FC_UNITS,
    spatial_scale: float = 1.0 / FEATURE_STRIDE,
):
    """Fast R-CNN's per-RoI head: RoI pooling, fc6, fc7 and the two sibling outputs.

    Shared by Fast R-CNN (on the VGG16 trunk) and Faster R-CNN (on any stride-16 backbone).

    Args:
        features: The feature map tensor `(B, h, w, C)` with a known C.
        rois: The RoI tensor `(B, R, 4)`, yxyx in input pixels.
        num_classes: Object classes K (the heads have K + 1 outputs).
        pool_size: RoI pooling grid.
        roi_mode: `"max"` or `"align"`.
        dropout: Dropout rate after fc6 and fc7.
        fc_units: Units of fc6 and fc7 (4096).
        spatial_scale: Feature cells per input pixel (1 / 16).

    Returns:
        `[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]`.
    """
    channels = features.shape[-1]
    pooled = RoIPooling(pool_size, spatial_scale, mode=roi_mode, name="roi_pool5")([features, rois])
    x = keras.layers.Reshape((-1, pool_size * pool_size * channels), name="roi_flatten")(pooled)
    return fast_rcnn_classifier(x, num_classes, dropout, fc_units)


def fast_rcnn_classifier(x, num_classes: int, dropout: float = 0.5, fc_units: int = FC_UNITS):
    """fc6, fc7 and the two sibling outputs on per-RoI feature vectors.

    Shared by Fast and Faster R-CNN (after RoI pooling) and R-CNN (after its per-region conv
    network); the layer names are those of the paper's VGG16 head, so weights load by name.

    Args:
        x: Per-RoI features `(B, R, D)`.
        num_classes: Object classes K (the heads have K + 1 outputs).
        dropout: Dropout rate after fc6 and fc7.
        fc_units: Units of fc6 and fc7 (4096).

    Returns:
        `[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]`.
    """
    x = keras.layers.Dense(fc_units, activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    cls_score = keras.layers.Dense(
        num_classes + 1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name="cls_score",
    )(x)
    bbox_pred = keras.layers.Dense(
        4 * (num_classes + 1),
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        name="bbox_pred",
    )(x)
    return [cls_score, bbox_pred]
