"""Mask R-CNN (He et al., ICCV 2017): Faster R-CNN plus a mask branch.

The graph is Faster R-CNN's (`keras_dense.apps.faster_rcnn`: backbone, RPN, proposal layer,
box head), followed at test time by the detection step inside the graph (`DetectionLayer`:
softmax, per-class box decoding, clipping, per-class NMS, the best `max_detections`) and the
mask branch on the detected boxes, as the paper does ("the mask branch is then applied to the
highest scoring 100 detection boxes"):

- `mask_head`: a nested functional model `[features, rois] -> mask logits`: RoIAlign to
  `mask_size / 2` squared (14 x 14), then `MaskHead` (4 x 3 x 3 conv 256 + ReLU, a 2 x 2
  stride-2 transposed conv to 28 x 28, a 1 x 1 conv with one logit map per class);
- `detection_masks`: `ClassMasks`, the sigmoid of each detection's class channel.

Outputs: Faster R-CNN's dict plus, with the Object Detection API's names,
`detection_boxes` (B, D, 4) yxyx pixels of the input, `detection_scores` (B, D),
`detection_classes` (B, D) int32 1-based (0 in padding), `num_detections` (B,) and
`detection_masks` (B, D, M, M) box-relative probabilities. As in the OD API, the model's
masks are box-relative; `keras_dense.detection.paste_masks` pastes them into image
coordinates at any size (the serving signature does so at each original image's size).

Training (`MaskRCNN.head_losses`) adds `L_mask` to Faster R-CNN's four terms: the mask head
runs on the sampled foreground RoIs (`sample_rois` puts them first), their targets are the
matched ground-truth instance masks cropped and resized into each RoI (`mask_targets`, from
the batch's `instance_masks`, `detection_dataset(..., instance_masks=True)`), and the loss
is the per-pixel sigmoid cross-entropy of the RoI's class channel (`mask_loss`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_dense.apps.builder import makes
from keras_dense.apps.faster_rcnn_model import (
    FasterRCNN,
    FasterRCNNParts,
    architecture_defaults,
    faster_rcnn_parts,
    head_inputs,
)
from keras_dense.detection.boxes import BOX_STDS
from keras_dense.detection.losses import mask_loss
from keras_dense.detection.mask_targets import mask_targets
from keras_dense.layers.detection_layer import DetectionLayer
from keras_dense.layers.mask_head import ClassMasks, MaskHead
from keras_dense.layers.multilevel_roi_pooling import MultiLevelRoIPooling
from keras_dense.layers.roi_pooling import RoIPooling

DETECTION_KEYS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
)


@keras.saving.register_keras_serializable(package="keras_dense")
class MaskRCNN(FasterRCNN):
    """A functional Mask R-CNN `[images, image_shape, scale] -> dict` (module docstring).

    Build it with `keras_dense.apps.mask_rcnn(...)`. `fit`/`evaluate` take the batches of
    `keras_dense.data.detection_dataset(..., instance_masks=True)`: Faster R-CNN's keys plus
    `instance_masks` (B, G, H, W), one mask per ground-truth box at the padded image size.
    Metrics: Faster R-CNN's plus `mask_loss`.

    Args:
        *args: `inputs`, `outputs` (and `name`), as for a functional `keras.Model`.
        mask_loss_weight: Weight of `L_mask` in the total loss (1, as the paper).
        mask_target_threshold: Mask targets are binary, `sample >= threshold` (0.5); None
            keeps soft (bilinear) targets.
        **kwargs: `FasterRCNN`'s training options and the functional model's arguments.
    """

    loss_names = (*FasterRCNN.loss_names, "mask_loss")
    mask_head_name = "mask_head"
    detection_layer_name = "detection"

    def __init__(
        self,
        *args,
        mask_loss_weight: float = 1.0,
        mask_target_threshold: float | None = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.mask_size = int(self.output["detection_masks"].shape[-1])
        self.mask_loss_weight = float(mask_loss_weight)
        self.mask_target_threshold = (
            None if mask_target_threshold is None else float(mask_target_threshold)
        )

    def check_graph(self) -> None:
        super().check_graph()
        missing = [key for key in DETECTION_KEYS if key not in self.output]
        if missing:
            raise ValueError(f"outputs: a Mask R-CNN graph needs the outputs {missing}")
        names = {layer.name for layer in self.layers}
        for part in (self.mask_head_name, self.detection_layer_name):
            if part not in names:
                raise ValueError(f"MaskRCNN: the graph has no layer named {part!r}")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mask_loss_weight": self.mask_loss_weight,
                "mask_target_threshold": self.mask_target_threshold,
            }
        )
        return config

    @classmethod
    def check_batch(cls, data) -> dict:
        batch = super().check_batch(data)
        if "instance_masks" not in batch:
            raise ValueError(
                "batch: missing key 'instance_masks'; Mask R-CNN trains on "
                "keras_dense.data.detection_dataset(..., instance_masks=True) batches of "
                "records with instance masks (image/object/mask)"
            )
        return batch

    def loss_weights(self) -> dict:
        return {**super().loss_weights(), "mask_loss": self.mask_loss_weight}

    def foreground_slots(self) -> int:
        """RoI slots that can hold foreground: `sample_rois` puts those first."""
        return max(int(round(self.fg_fraction * self.rois_per_image)), 1)

    def head_losses(self, batch: dict, rpn: dict, targets: dict, training: bool) -> dict:
        """Faster R-CNN's head losses plus `"mask_loss"` on the foreground RoIs."""
        terms = super().head_losses(batch, rpn, targets, training)
        slots = self.foreground_slots()
        rois = tf.stop_gradient(targets["rois"][:, :slots])
        labels = targets["labels"][:, :slots]
        wanted = mask_targets(
            batch["instance_masks"],
            targets["matched_gt"][:, :slots],
            rois,
            mask_size=self.mask_size,
            threshold=self.mask_target_threshold,
        )
        head = self.get_layer(self.mask_head_name)
        logits = head(head_inputs(rpn["features"], rois), training=training)
        terms["mask_loss"] = mask_loss(labels, wanted, logits)
        return terms

    @property
    def max_detections(self) -> int:
        """Detections per image, fixed when the graph is built (the builder's argument)."""
        return int(self.output["detection_boxes"].shape[1])

    def set_detection_options(
        self, score_threshold: float | None = None, nms_iou: float | None = None
    ) -> None:
        """Changes the in-graph detection step's thresholds (None keeps a value).

        The number of detections per image is part of the graph's shapes: build the model
        with another `max_detections` to change it.

        Args:
            score_threshold: Minimum class probability of a detection.
            nms_iou: Per-class NMS IoU threshold.
        """
        layer = self.get_layer(self.detection_layer_name)
        if score_threshold is not None:
            layer.score_threshold = float(score_threshold)
        if nms_iou is not None:
            layer.nms_iou = float(nms_iou)
        for attribute in ("predict_function", "test_function", "train_function"):
            if hasattr(self, attribute):
                setattr(self, attribute, None)


def _mask_head_model(
    channels: int, num_classes: int, mask_size: int, stride: float, fpn: bool, **options
) -> keras.Model:
    rois = keras.Input((None, 4), name="rois")
    if fpn:  # [P2, ..., P5, rois]: each RoI pooled from its level
        features = FasterRCNNParts.level_inputs(channels, 4)
        pool = MultiLevelRoIPooling(mask_size // 2, mode="align", name="mask_roi_align")
    else:
        features = [keras.Input((None, None, channels), name="features")]
        pool = RoIPooling(
            mask_size // 2,
            1.0 / stride,
            mode="align",
            sampling_ratio=2,
            name="mask_roi_align",
        )
    pooled = pool([*features, rois])
    logits = MaskHead(num_classes, name="mask_branch", **options)(pooled)
    return keras.Model([*features, rois], logits, name="mask_head")


@makes("instance_segmentation")
def mask_rcnn(
    num_classes: int = 80,
    backbone: str = "resnet50",
    mask_size: int = 28,
    mask_filters: int = 256,
    mask_convs: int = 4,
    roi_mode: str = "align",
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    input_shape: tuple = (None, None, 3),
    backbone_weights: str | None = None,
    weights: str | None = None,
    name: str = "mask_rcnn",
    **kwargs,
) -> MaskRCNN:
    """Builds Mask R-CNN: Faster R-CNN (`faster_rcnn`) plus the mask branch.

    Args:
        num_classes: Object classes K; the box head has K + 1 outputs, the mask head K.
        backbone: A family of the backbone registry, cut at `feature_stride` (`"resnet50"`:
            conv4 at stride 16; `"vgg16"`: conv5_3; see `faster_rcnn`), `"compact"` (from
            scratch, stride 8 or 16 by `feature_stride`, for small images and CPU
            experiments) or a `keras.Model`.
        mask_size: Side of the predicted masks (28; RoIAlign pools `mask_size / 2`).
        mask_filters: Channels of the mask head's convolutions (256).
        mask_convs: 3 x 3 convolutions of the mask head (4).
        roi_mode: Pooling of the box head: `"align"` (RoIAlign, as Mask R-CNN) or `"max"`.
        score_threshold: Minimum class probability of a detection (0.05).
        nms_iou: Per-class NMS IoU threshold of the detections (0.5).
        max_detections: Detections per image, each with a mask (100).
        input_shape: Image shape (H, W, 3); H and W may be None.
        backbone_weights: None, `"imagenet"` or a weight file (see `faster_rcnn`).
        weights: None or a weight file of this model (`.weights.h5` or `.keras`).
        name: Model name.
        **kwargs: The other options of `faster_rcnn` (anchors, RPN, proposal counts,
            `fc_units`, `pool_size`, `fpn=True` for a feature pyramid, whose levels the mask
            branch also pools from by RoI size, ...) and the training options of `FasterRCNN` /
            `MaskRCNN` (`rois_per_image`, `mask_loss_weight`, ...).

    Returns:
        A `MaskRCNN` with inputs `[images (B, H, W, 3), image_shape (B, 2), scale (B,)]`
        and Faster R-CNN's outputs plus `detection_boxes`, `detection_scores`,
        `detection_classes`, `num_detections` and `detection_masks` (B, D, M, M).

    Raises:
        ValueError: Bad argument.
    """
    if isinstance(mask_size, bool) or not isinstance(mask_size, int) or mask_size < 2:
        raise ValueError(f"mask_size={mask_size!r}: expected an even int >= 2")
    if mask_size % 2:
        raise ValueError(f"mask_size={mask_size!r}: expected an even int (RoIAlign to half)")
    MaskRCNN.check_options(kwargs, architecture_defaults())
    training_keys = MaskRCNN.training_option_names()
    training = {k: v for k, v in kwargs.items() if k in training_keys}
    architecture = {k: v for k, v in kwargs.items() if k not in training_keys}
    # Faster R-CNN's parts (backbone, RPN, proposal layer, box head), checked once.
    parts = faster_rcnn_parts(
        backbone=backbone, roi_mode=roi_mode, backbone_weights=backbone_weights, **architecture
    )
    box_stds = training.get("box_stds", BOX_STDS)
    detection_layer = DetectionLayer(
        score_threshold, nms_iou, max_detections, box_stds, name=MaskRCNN.detection_layer_name
    )  # checks its options

    def graph(inputs, classes: int):
        images, image_shape, scale = inputs
        outputs, features = parts.graph(images, image_shape, scale, classes)
        boxes, det_scores, det_classes, num = detection_layer(
            [
                outputs["cls_score"],
                outputs["bbox_pred"],
                outputs["proposals"],
                image_shape,
                outputs["num_proposals"],
            ]
        )
        fpn = parts.fpn is not None
        head = _mask_head_model(
            parts.fpn.channels if fpn else features.shape[-1],
            classes,
            mask_size,
            parts.feature_stride,
            fpn,
            filters=mask_filters,
            num_convs=mask_convs,
        )
        logits = head(head_inputs(features, boxes))
        masks = ClassMasks(name="detection_masks")([logits, det_classes])
        return {
            **outputs,
            "detection_boxes": boxes,
            "detection_scores": det_scores,
            "detection_classes": det_classes,
            "num_detections": num,
            "detection_masks": masks,
        }

    return parts.build(
        graph,
        MaskRCNN,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        weights=weights,
        backbone_weights=backbone_weights,
        **training,
    )
