"""Faster R-CNN (Ren et al., NIPS 2015): a Region Proposal Network and the Fast R-CNN head.

One functional graph, made of four named parts that the training step calls one by one:

- `backbone`: a nested functional model, images -> stride-16 features (VGG16 up to conv5_3,
  or ResNet-50 up to conv4, `keras_dense.apps.atrous_backbones.resnet_trunk`), or, for small
  images and CPU experiments from scratch, the conv-BN-ReLU `compact` trunk at stride 8 or
  16 (`keras_dense.apps.compact_backbone`);
- `rpn`: `RPNHead`, features -> objectness logits and box deltas per anchor;
- `proposal_layer`: `ProposalLayer` (decode, clip, min size, top-N, NMS 0.7, top-N);
- `roi_head`: a nested functional model `[features, rois] -> [cls_score, bbox_pred]`
  (`fast_rcnn_head`: RoI pooling or RoIAlign, fc6, fc7, the two sibling outputs).

The model's inputs are `[images (B, H, W, 3), image_shape (B, 2), scale (B,)]` (the valid
size of each padded image and its resize factor, which scales the proposals' `min_size`, as
py-faster-rcnn's `im_info`); its outputs are the dict `{"cls_score", "bbox_pred",
"proposals", "proposal_scores", "num_proposals"}`: at test time the model proposes its own
RoIs (300 after NMS) and scores them, so `keras_dense.detection.detect(model, images)` needs
no proposals.

Training (`FasterRCNN.train_step`, in graph and batched) is the paper's approximate joint
training: anchor targets on the ground truth (`rpn_targets`, 256 anchors, border anchors
ignored) and `rpn_loss`; proposals from the proposal layer at its training lengths
(12000 / 2000), with no gradient through them; `sample_rois` (which adds the ground-truth
boxes to the candidates, as py-faster-rcnn's proposal target layer does); the head on the
sampled RoIs and `fast_rcnn_loss`. The loss is the unweighted sum of the four terms. Each
step is factored into overridable methods (`run_rpn`, `rpn_losses`, `train_proposals`,
`sample_targets`, `head_losses`, `compute_losses`) and `loss_names`, so that a subclass
(Mask R-CNN) can add a branch and its loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_dense.apps.atrous_backbones import load_backbone_weights, resnet_trunk
from keras_dense.apps.builder import build_model
from keras_dense.apps.compact_backbone import (
    check_strided_compact_options,
    strided_compact_trunk,
)
from keras_dense.apps.fast_rcnn_model import FC_UNITS, FROZEN_LAYERS, fast_rcnn_head
from keras_dense.apps.vgg import default_pool, load_vgg16_weights, vgg16_trunk
from keras_dense.detection.anchors import generate_anchors, num_anchors
from keras_dense.detection.boxes import BOX_STDS
from keras_dense.detection.losses import fast_rcnn_loss
from keras_dense.detection.rpn_targets import rpn_loss, rpn_targets
from keras_dense.detection.sampling import sample_rois
from keras_dense.layers.proposal_layer import ProposalLayer
from keras_dense.layers.rpn_head import RPNHead

BACKBONES = ("vgg16", "resnet50", "compact")
FEATURE_STRIDE = 16
OUTPUT_KEYS = ("cls_score", "bbox_pred", "proposals", "proposal_scores", "num_proposals")
BATCH_KEYS = ("images", "image_shape", "boxes", "labels", "num_boxes")


@keras.saving.register_keras_serializable(package="keras_dense")
class FasterRCNN(keras.Model):
    """A functional Faster R-CNN `[images, image_shape, scale] -> dict` (module docstring).

    Build it with `keras_dense.apps.faster_rcnn(...)`. `fit`/`evaluate` take the batches of
    `keras_dense.data.detection_dataset` (dicts with `images`, `image_shape`, `scale`,
    `boxes`, `labels`, `num_boxes`, optionally `difficult`; proposals are not used). Compile
    with an optimizer only: the loss is built in. Metrics: `loss`, `rpn_cls_loss`,
    `rpn_box_loss`, `cls_loss`, `box_loss`.

    Subclasses add a branch by overriding `compute_losses` (call the parent's, add terms)
    and extending `loss_names` (one `Mean` tracker per name is made).

    Args:
        *args: `inputs`, `outputs` (and `name`), as for a functional `keras.Model`.
        rpn_batch_size_per_image: Anchors sampled per image for the RPN loss (256).
        rpn_positive_fraction: Largest share of positive anchors (0.5).
        rpn_positive_iou: Anchor IoU making it positive (0.7).
        rpn_negative_iou: Anchor IoU below which it is negative (0.3).
        rpn_allowed_border: Pixels an anchor may cross the border by and still count (0).
        rpn_box_loss_weight: lambda of the RPN's smooth-L1 term (1).
        rois_per_image: RoIs sampled per image for the head (128, py-faster-rcnn's end2end).
        fg_fraction: Largest share of foreground RoIs (0.25).
        fg_iou_threshold: IoU making a RoI foreground (0.5).
        bg_iou_range: IoU range `[low, high)` of background RoIs ((0, 0.5), py-faster-rcnn's
            end2end `BG_THRESH_LO = 0`).
        box_stds: Standard deviations normalising the head's box targets.
        box_loss_weight: lambda of the head's smooth-L1 term (1).
        use_difficult: Train on VOC "difficult" boxes too (False).
        **kwargs: Functional model keyword arguments (`inputs`, `outputs`, `name`, ...).
    """

    # detect() lets a model with this flag propose its own regions.
    proposes_regions = True
    loss_names: tuple[str, ...] = ("rpn_cls_loss", "rpn_box_loss", "cls_loss", "box_loss")
    # Names of the four parts in the graph.
    backbone_name = "backbone"
    rpn_name = "rpn"
    proposal_layer_name = "proposal_layer"
    roi_head_name = "roi_head"

    def __init__(
        self,
        *args,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_positive_iou: float = 0.7,
        rpn_negative_iou: float = 0.3,
        rpn_allowed_border: float = 0.0,
        rpn_box_loss_weight: float = 1.0,
        rois_per_image: int = 128,
        fg_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        bg_iou_range: Sequence[float] = (0.0, 0.5),
        box_stds: Sequence[float] = BOX_STDS,
        box_loss_weight: float = 1.0,
        use_difficult: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        outputs = self.output
        if not isinstance(outputs, dict) or not set(OUTPUT_KEYS) <= set(outputs):
            raise ValueError(
                f"outputs: expected a dict with the keys {list(OUTPUT_KEYS)}, got "
                f"{sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__}"
            )
        names = {layer.name for layer in self.layers}
        parts = (self.backbone_name, self.rpn_name, self.proposal_layer_name, self.roi_head_name)
        missing = [part for part in parts if part not in names]
        if missing:
            raise ValueError(f"FasterRCNN: the graph has no layers named {missing}")
        if len(box_stds) != 4:
            raise ValueError(f"box_stds={box_stds!r}: expected 4 numbers")
        self.rpn_batch_size_per_image = int(rpn_batch_size_per_image)
        self.rpn_positive_fraction = float(rpn_positive_fraction)
        self.rpn_positive_iou = float(rpn_positive_iou)
        self.rpn_negative_iou = float(rpn_negative_iou)
        self.rpn_allowed_border = float(rpn_allowed_border)
        self.rpn_box_loss_weight = float(rpn_box_loss_weight)
        self.rois_per_image = int(rois_per_image)
        self.fg_fraction = float(fg_fraction)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_range = tuple(float(v) for v in bg_iou_range)
        self.box_stds = tuple(float(v) for v in box_stds)
        self.box_loss_weight = float(box_loss_weight)
        self.use_difficult = bool(use_difficult)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=name) for name in self.loss_names]

    @property
    def num_classes(self) -> int:
        """Number of object classes K (without background)."""
        return int(self.output["cls_score"].shape[-1]) - 1

    @property
    def metrics(self):
        return [self.loss_tracker, *self.term_trackers]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rpn_batch_size_per_image": self.rpn_batch_size_per_image,
                "rpn_positive_fraction": self.rpn_positive_fraction,
                "rpn_positive_iou": self.rpn_positive_iou,
                "rpn_negative_iou": self.rpn_negative_iou,
                "rpn_allowed_border": self.rpn_allowed_border,
                "rpn_box_loss_weight": self.rpn_box_loss_weight,
                "rois_per_image": self.rois_per_image,
                "fg_fraction": self.fg_fraction,
                "fg_iou_threshold": self.fg_iou_threshold,
                "bg_iou_range": list(self.bg_iou_range),
                "box_stds": list(self.box_stds),
                "box_loss_weight": self.box_loss_weight,
                "use_difficult": self.use_difficult,
            }
        )
        return config

    # ------------------------------------------------------------------------------------
    # The parts of a step
    # ------------------------------------------------------------------------------------
    @staticmethod
    def check_batch(data) -> dict:
        """The batch dict of `fit`/`evaluate` data, or a ValueError naming what is missing."""
        if isinstance(data, (tuple, list)) and data and isinstance(data[0], dict):
            data = data[0]
        if not isinstance(data, dict):
            raise ValueError(
                "FasterRCNN.fit/evaluate: expected batches that are dicts from "
                f"keras_dense.data.detection_dataset, got {type(data).__name__}"
            )
        missing = [key for key in BATCH_KEYS if key not in data]
        if missing:
            raise ValueError(
                f"batch: missing keys {missing}; expected a keras_dense.data.detection_dataset "
                f"batch with {list(BATCH_KEYS)} (and optionally scale, difficult)"
            )
        return data

    @staticmethod
    def batch_scale(batch: dict) -> tf.Tensor:
        """The batch's per-image resize factors (B,), ones when it has none."""
        if "scale" in batch:
            return tf.cast(batch["scale"], tf.float32)
        return tf.ones([tf.shape(batch["images"])[0]], tf.float32)

    def gt_valid(self, batch: dict) -> tf.Tensor:
        """(B, G) bool: the ground-truth boxes trained on (real, labelled, not difficult)."""
        labels = tf.cast(batch["labels"], tf.int32)
        slots = tf.range(tf.shape(labels)[1])[None, :]
        valid = (slots < tf.cast(batch["num_boxes"], tf.int32)[:, None]) & (labels > 0)
        if "difficult" in batch and not self.use_difficult:
            valid &= ~tf.cast(batch["difficult"], tf.bool)
        return valid

    def run_rpn(self, batch: dict, training: bool) -> dict:
        """Backbone and RPN head on the batch's images.

        Returns:
            `{"features", "objectness", "box_deltas"}`.
        """
        features = self.get_layer(self.backbone_name)(batch["images"], training=training)
        objectness, box_deltas = self.get_layer(self.rpn_name)(features, training=training)
        return {"features": features, "objectness": objectness, "box_deltas": box_deltas}

    def rpn_losses(self, batch: dict, rpn: dict, seed=None) -> dict:
        """Anchor targets and the RPN loss: `{"rpn_cls_loss", "rpn_box_loss"}`."""
        layer = self.get_layer(self.proposal_layer_name)
        shape = tf.shape(rpn["objectness"])
        anchors = generate_anchors(shape[1], shape[2], layer.stride, layer.scales, layer.ratios)
        targets = rpn_targets(
            anchors,
            batch["boxes"],
            batch["num_boxes"],
            batch["image_shape"],
            gt_valid=self.gt_valid(batch),
            positive_iou=self.rpn_positive_iou,
            negative_iou=self.rpn_negative_iou,
            allowed_border=self.rpn_allowed_border,
            batch_size_per_image=self.rpn_batch_size_per_image,
            positive_fraction=self.rpn_positive_fraction,
            box_stds=layer.box_stds,
            seed=seed,
        )
        terms = rpn_loss(
            targets["labels"],
            targets["box_targets"],
            rpn["objectness"],
            rpn["box_deltas"],
            box_loss_weight=1.0,
        )
        return {"rpn_cls_loss": terms["cls_loss"], "rpn_box_loss": terms["box_loss"]}

    def train_proposals(self, batch: dict, rpn: dict) -> list[tf.Tensor]:
        """Proposals at the training lengths (no gradient): `[proposals, scores, count]`."""
        layer = self.get_layer(self.proposal_layer_name)
        inputs = [rpn["objectness"], rpn["box_deltas"], batch["image_shape"]]
        return layer([*inputs, self.batch_scale(batch)], training=True)

    def sample_targets(self, batch: dict, proposals, num_proposals, seed=None) -> dict:
        """Training RoIs (proposals + ground truth) with labels and box targets.

        Returns:
            The dict of `keras_dense.detection.sample_rois`.
        """
        return sample_rois(
            tf.stop_gradient(proposals),
            num_proposals,
            batch["boxes"],
            batch["labels"],
            batch["num_boxes"],
            gt_difficult=batch.get("difficult"),
            rois_per_image=self.rois_per_image,
            fg_fraction=self.fg_fraction,
            fg_iou_threshold=self.fg_iou_threshold,
            bg_iou_range=self.bg_iou_range,
            box_stds=self.box_stds,
            use_difficult=self.use_difficult,
            seed=seed,
        )

    def head_losses(self, batch: dict, rpn: dict, targets: dict, training: bool) -> dict:
        """The head on the sampled RoIs and its loss: `{"cls_loss", "box_loss"}`."""
        head = self.get_layer(self.roi_head_name)
        cls_score, bbox_pred = head([rpn["features"], targets["rois"]], training=training)
        terms = fast_rcnn_loss(targets["labels"], targets["box_targets"], cls_score, bbox_pred, 1.0)
        return {"cls_loss": terms["cls_loss"], "box_loss": terms["box_loss"]}

    def loss_weights(self) -> dict:
        """Weight of each term of `loss_names` in the total loss."""
        return {
            "rpn_cls_loss": 1.0,
            "rpn_box_loss": self.rpn_box_loss_weight,
            "cls_loss": 1.0,
            "box_loss": self.box_loss_weight,
        }

    def compute_losses(self, batch: dict, training: bool = True, seed=None) -> dict:
        """Every loss term of a batch, float32 scalars, and their weighted sum `"loss"`.

        Args:
            batch: A detection batch dict.
            training: Training mode of the layers (dropout, batch norm).
            seed: Optional int pair: reproducible anchor and RoI sampling.

        Returns:
            `{name: term for name in loss_names}` plus `"loss"` (with `self.losses`), and
            the intermediate results under `"_rpn"` and `"_targets"` for subclasses.
        """
        rpn = self.run_rpn(batch, training)
        terms = self.rpn_losses(batch, rpn, seed)
        proposals, _, count = self.train_proposals(batch, rpn)
        targets = self.sample_targets(batch, proposals, count, seed)
        terms.update(self.head_losses(batch, rpn, targets, training))
        weights = self.loss_weights()
        loss = tf.add_n([weights.get(name, 1.0) * terms[name] for name in self.loss_names])
        if self.losses:
            loss = loss + tf.add_n([tf.cast(v, tf.float32) for v in self.losses])
        terms["loss"] = loss
        terms["_rpn"] = rpn
        terms["_targets"] = targets
        return terms

    def _record(self, terms: dict) -> dict:
        self.loss_tracker.update_state(terms["loss"])
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        batch = self.check_batch(data)
        with tf.GradientTape() as tape:
            terms = self.compute_losses(batch, training=True)
            loss = terms["loss"]
            scaled = self.optimizer.scale_loss(loss) if self.optimizer is not None else loss
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(gradients, weights))
        return self._record(terms)

    def test_step(self, data):
        return self._record(self.compute_losses(self.check_batch(data), training=False))

    def model_inputs(self, batch: dict) -> list:
        """`[images, image_shape, scale]` of a batch dict, for calling the model."""
        images = tf.convert_to_tensor(batch["images"])
        if "image_shape" in batch:
            shape = tf.cast(batch["image_shape"], tf.float32)
        else:
            size = tf.cast(tf.shape(images)[1:3], tf.float32)
            shape = tf.tile(size[None], [tf.shape(images)[0], 1])
        return [images, shape, self.batch_scale(batch)]

    def predict_step(self, data):
        if isinstance(data, (tuple, list)) and data and isinstance(data[0], dict):
            data = data[0]
        if isinstance(data, dict):
            return self(self.model_inputs(data), training=False)
        return super().predict_step(data)


def _pool_without_pool5(x, name: str):
    """VGG16 pooling for pool1..pool4: conv5_3 stays at stride 16."""
    return x if name == "pool5" else default_pool(x, name)


def _backbone_model(backbone, input_shape: tuple, width: int, stride: int) -> keras.Model:
    images = keras.Input(input_shape, name="images")
    if isinstance(backbone, keras.Model):
        return keras.Model(images, backbone(images), name="backbone")
    if backbone == "compact":
        features = strided_compact_trunk(images, width, stride)
    elif backbone == "vgg16":
        features = vgg16_trunk(images, pool=_pool_without_pool5)["conv5_3"]
    else:
        features = resnet_trunk(images, backbone, last_stage=4)
    model = keras.Model(images, features, name="backbone")
    if backbone == "vgg16":
        for layer_name in FROZEN_LAYERS:  # as in the paper (and Fast R-CNN)
            model.get_layer(layer_name).trainable = False
    return model


def _roi_head_model(channels: int, num_classes: int, **options) -> keras.Model:
    features = keras.Input((None, None, channels), name="features")
    rois = keras.Input((None, 4), name="rois")
    outputs = fast_rcnn_head(features, rois, num_classes, **options)
    return keras.Model([features, rois], outputs, name="roi_head")


def faster_rcnn(
    num_classes: int = 20,
    backbone: str = "vgg16",
    anchor_scales: Sequence[float] = (128, 256, 512),
    anchor_ratios: Sequence[float] = (0.5, 1, 2),
    rpn_filters: int = 512,
    pool_size: int = 7,
    roi_mode: str = "max",
    fc_units: int = FC_UNITS,
    dropout: float = 0.5,
    train_pre_nms_top_n: int = 12000,
    train_post_nms_top_n: int = 2000,
    test_pre_nms_top_n: int = 6000,
    test_post_nms_top_n: int = 300,
    rpn_nms_iou: float = 0.7,
    min_size: float = 16.0,
    feature_stride: int = FEATURE_STRIDE,
    backbone_width: int = 32,
    input_shape: tuple = (None, None, 3),
    backbone_weights: str | None = None,
    weights: str | None = None,
    name: str = "faster_rcnn",
    **kwargs,
) -> FasterRCNN:
    """Builds Faster R-CNN: a stride-16 (or 8) backbone, the RPN and the Fast R-CNN head.

    Args:
        num_classes: Object classes K; the head has K + 1 outputs (background = 0).
        backbone: `"vgg16"` (conv5_3, conv1/conv2 frozen as in the paper), `"resnet50"`
            (conv1 ... conv4, all trainable; its features feed the same fc head, not a conv5
            head), or a `keras.Model` mapping images to stride-16 features with a known
            number of channels (nested as is; it must be serializable). `"compact"`: a
            small conv-BN-ReLU trunk from scratch (`keras_dense.apps.compact_backbone`), for
            small images and CPU experiments; it takes no `backbone_weights`.
        anchor_scales: Anchor sides in input pixels ((128, 256, 512)).
        anchor_ratios: Anchor height / width ratios ((0.5, 1, 2)).
        rpn_filters: Channels of the RPN's 3 x 3 conv (512).
        pool_size: RoI pooling grid (7).
        roi_mode: `"max"` (RoI pooling) or `"align"` (RoIAlign).
        fc_units: Units of fc6 and fc7 (4096; smaller for quick experiments).
        dropout: Dropout rate after fc6 and fc7 (0.5).
        train_pre_nms_top_n: Proposals kept before NMS in training (12000).
        train_post_nms_top_n: Proposals kept after NMS in training (2000).
        test_pre_nms_top_n: Proposals kept before NMS at test (6000).
        test_post_nms_top_n: Proposals kept after NMS at test (300).
        rpn_nms_iou: IoU threshold of the proposals' NMS (0.7).
        min_size: Smallest proposal side in original-image pixels (16; the `scale` input
            converts it to input pixels).
        feature_stride: Input pixels per feature cell: 16, or 8 with `backbone="compact"`
            (anchors, proposals and RoI pooling follow it).
        backbone_width: Channels of the compact trunk's first stage (32; ignored by the
            other backbones).
        input_shape: Image shape (H, W, 3); H and W may be None.
        backbone_weights: None, `"imagenet"` or a weight file of the keras.applications
            network (VGG16 with its top: conv layers, and fc6/fc7 when `pool_size=7` and
            `fc_units=4096`; ResNet50: conv1 ... conv4).
        weights: None or a weight file of this model (`.weights.h5` or `.keras`).
        name: Model name.
        **kwargs: Training options of `FasterRCNN` (`rpn_batch_size_per_image`,
            `rois_per_image`, `fg_fraction`, ...).

    Returns:
        A `FasterRCNN` with inputs `[images (B, H, W, 3), image_shape (B, 2), scale (B,)]`
        and the dict outputs `cls_score (B, N, K + 1)`, `bbox_pred (B, N, 4 (K + 1))`,
        `proposals (B, N, 4)`, `proposal_scores (B, N)`, `num_proposals (B,)`, N =
        `test_post_nms_top_n`.

    Raises:
        ValueError: Bad argument.
    """
    if not isinstance(backbone, keras.Model) and backbone not in BACKBONES:
        raise ValueError(
            f"backbone={backbone!r}: expected one of {list(BACKBONES)} or a keras.Model"
        )
    if isinstance(backbone, keras.Model) and backbone_weights is not None:
        raise ValueError("backbone_weights: not supported with a backbone model (load its own)")
    if backbone == "compact":
        if backbone_weights is not None:
            raise ValueError("backbone_weights: the compact backbone is never pretrained")
        check_strided_compact_options(backbone_width, feature_stride)
    elif feature_stride != FEATURE_STRIDE:
        raise ValueError(
            f"feature_stride={feature_stride!r}: expected {FEATURE_STRIDE} with this backbone "
            "(8 needs backbone='compact')"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")
    for key, value in (("fc_units", fc_units), ("pool_size", pool_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: expected a positive int")
    if roi_mode not in ("max", "align"):
        raise ValueError(f"roi_mode={roi_mode!r}: expected 'max' or 'align'")
    anchors_per_cell = num_anchors(anchor_scales, anchor_ratios)  # checks both
    proposal_options = {
        "stride": feature_stride,
        "scales": tuple(float(s) for s in anchor_scales),
        "ratios": tuple(float(r) for r in anchor_ratios),
        "train_pre_nms_top_n": train_pre_nms_top_n,
        "train_post_nms_top_n": train_post_nms_top_n,
        "test_pre_nms_top_n": test_pre_nms_top_n,
        "test_post_nms_top_n": test_post_nms_top_n,
        "nms_iou": rpn_nms_iou,
        "min_size": min_size,
    }
    proposal_layer = ProposalLayer(**proposal_options, name="proposal_layer")  # checks them
    rpn_head = RPNHead(anchors_per_cell, rpn_filters, name="rpn")

    def graph(inputs, classes: int):
        images, image_shape, scale = inputs
        trunk = _backbone_model(backbone, tuple(images.shape[1:]), backbone_width, feature_stride)
        features = trunk(images)
        objectness, box_deltas = rpn_head(features)
        proposals, scores, count = proposal_layer([objectness, box_deltas, image_shape, scale])
        head = _roi_head_model(
            features.shape[-1],
            classes,
            pool_size=pool_size,
            roi_mode=roi_mode,
            dropout=dropout,
            fc_units=fc_units,
            spatial_scale=1.0 / feature_stride,
        )
        cls_score, bbox_pred = head([features, proposals])
        return {
            "cls_score": cls_score,
            "bbox_pred": bbox_pred,
            "proposals": proposals,
            "proposal_scores": scores,
            "num_proposals": count,
        }

    def load_backbone(model: keras.Model, path: str):
        trunk = model.get_layer(FasterRCNN.backbone_name)
        if backbone == "vgg16":  # (a backbone model takes no backbone_weights)
            loaded = load_vgg16_weights(trunk, path, fc=False)
            if pool_size == 7 and fc_units == FC_UNITS:
                loaded += load_vgg16_weights(model.get_layer(FasterRCNN.roi_head_name), path)
            return loaded
        return load_backbone_weights(trunk, backbone, path)

    return build_model(
        graph,
        num_classes=num_classes,
        input_shape=input_shape,
        input_channels=3,
        name=name,
        input_name="images",
        extra_inputs={"image_shape": (2,), "scale": ()},
        weights=weights,
        backbone_weights=backbone_weights,
        load_backbone=load_backbone,
        backbone_source=(
            "keras.applications.VGG16 (include_top=True)"
            if backbone == "vgg16"
            else "keras.applications.ResNet50"
            if backbone == "resnet50"
            else "the backbone model"
        ),
        model_class=FasterRCNN,
        **kwargs,
    )
