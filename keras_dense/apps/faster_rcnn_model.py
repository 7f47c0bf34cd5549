"""Faster R-CNN (Ren et al., NIPS 2015): a Region Proposal Network and the Fast R-CNN head.

One functional graph, made of four named parts that the training step calls one by one:

- `backbone`: a nested functional model, images -> the features at `feature_stride` (16 or
  8) of any family of `keras_dense.backbones` (VGG16 up to conv5_3, ResNet up to conv4,
  MobileNetV2 up to block 12, ...), or, for small images and CPU experiments from scratch,
  the conv-BN-ReLU `compact` trunk (`compact_strided` in the registry);
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

With `fpn=True` (Lin et al. 2017) the parts are the same with a fifth, `fpn`
(`FeaturePyramid`): the backbone gives `[C2, C3, C4, C5]`, the pyramid `[P2, ..., P6]`; the
one `rpn` head runs on every level, with one anchor size per level
(`keras_dense.detection.pyramid_anchors`, whose order the RPN targets and the
`PyramidProposalLayer` share); `roi_head` takes `[P2, ..., P5, rois]` and pools each RoI from
its level (`MultiLevelRoIPooling`). `run_rpn` then returns the levels' outputs concatenated.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_dense.apps.builder import makes
from keras_dense.apps.fast_rcnn_model import (
    FC_UNITS,
    FROZEN_LAYERS,
    fast_rcnn_classifier,
    fast_rcnn_head,
)
from keras_dense.apps.two_stage_detector import TwoStageDetector, build_detector
from keras_dense.backbones.backbone import features_by_stride
from keras_dense.backbones.registry import get_backbone
from keras_dense.backbones.vgg16 import load_vgg16_weights
from keras_dense.detection.anchors import (
    DEFAULT_SCALES,
    FPN_ANCHOR_SIZES,
    FPN_STRIDES,
    generate_anchors,
    num_anchors,
)
from keras_dense.detection.rpn_targets import rpn_loss, rpn_targets
from keras_dense.layers.feature_pyramid import FeaturePyramid
from keras_dense.layers.multilevel_roi_pooling import MultiLevelRoIPooling
from keras_dense.layers.proposal_layer import ProposalLayer
from keras_dense.layers.pyramid_proposal_layer import PyramidProposalLayer
from keras_dense.layers.rpn_head import RPNHead

FEATURE_STRIDE = 16
# Strides of the feature map the RPN and the RoI head read: C4 (the papers') or C3.
FEATURE_STRIDES = (8, 16)
# `backbone="compact"` (recipes before the backbone registry) is the detectors' strided
# compact trunk, registered as "compact_strided".
BACKBONE_ALIASES = {"compact": "compact_strided"}
# Pretrained backbone layers kept frozen, as the papers did (Fast R-CNN's VGG16 conv1 and
# conv2); from scratch nothing is frozen.
FROZEN_BACKBONE_LAYERS = {"vgg16": FROZEN_LAYERS}
# The builder arguments that are not architecture options of `faster_rcnn_parts`.
MODEL_ARGUMENTS = ("num_classes", "input_shape", "weights", "name")
OUTPUT_KEYS = ("cls_score", "bbox_pred", "proposals", "proposal_scores", "num_proposals")
BATCH_KEYS = ("images", "image_shape", "boxes", "labels", "num_boxes")
# The backbone strides a feature pyramid reads (C2 ... C5); P6 subsamples P5.
FPN_BACKBONE_STRIDES = FPN_STRIDES[:-1]


def head_inputs(features, rois) -> list:
    """The inputs of a RoI head: `[features, rois]`, or `[P2, ..., P5, rois]` with FPN."""
    if isinstance(features, (list, tuple)):
        return [*features, rois]
    return [features, rois]


@keras.saving.register_keras_serializable(package="keras_dense")
class FasterRCNN(TwoStageDetector):
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
        **kwargs: The head's RoI sampling options of `TwoStageDetector`, with
            py-faster-rcnn's end2end defaults `rois_per_image=128` and `bg_iou_range=(0,
            0.5)` (`BG_THRESH_LO = 0`), and the functional model's keyword arguments.
    """

    # detect() lets a model with this flag propose its own regions.
    proposes_regions = True
    loss_names: tuple[str, ...] = ("rpn_cls_loss", "rpn_box_loss", "cls_loss", "box_loss")
    batch_keys = BATCH_KEYS
    optional_batch_keys = ("scale", "difficult")
    extra_inputs = {"image_shape": (2,), "scale": ()}
    # Names of the four parts in the graph.
    backbone_name = "backbone"
    rpn_name = "rpn"
    proposal_layer_name = "proposal_layer"
    roi_head_name = "roi_head"
    # The feature pyramid's layer, present only in a model built with `fpn=True`.
    fpn_name = "fpn"

    def __init__(
        self,
        *args,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_positive_iou: float = 0.7,
        rpn_negative_iou: float = 0.3,
        rpn_allowed_border: float = 0.0,
        rpn_box_loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.rpn_batch_size_per_image = int(rpn_batch_size_per_image)
        self.rpn_positive_fraction = float(rpn_positive_fraction)
        self.rpn_positive_iou = float(rpn_positive_iou)
        self.rpn_negative_iou = float(rpn_negative_iou)
        self.rpn_allowed_border = float(rpn_allowed_border)
        self.rpn_box_loss_weight = float(rpn_box_loss_weight)

    def check_graph(self) -> None:
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
            }
        )
        return config

    # ------------------------------------------------------------------------------------
    # The parts of a step
    # ------------------------------------------------------------------------------------
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

    @property
    def has_fpn(self) -> bool:
        """Whether the model was built with a feature pyramid (`fpn=True`)."""
        return any(layer.name == self.fpn_name for layer in self.layers)

    def run_rpn(self, batch: dict, training: bool) -> dict:
        """Backbone and RPN head on the batch's images.

        Returns:
            `{"features", "objectness", "box_deltas"}`; with FPN, `features` is the list
            `[P2, ..., P5]`, the RPN outputs are those of all levels concatenated in anchor
            order ((B, N) and (B, N, 4)), and `"levels"` holds `(objectness, box_deltas)`
            of each level P2 ... P6.
        """
        features = self.get_layer(self.backbone_name)(batch["images"], training=training)
        head = self.get_layer(self.rpn_name)
        if not self.has_fpn:
            objectness, box_deltas = head(features, training=training)
            return {"features": features, "objectness": objectness, "box_deltas": box_deltas}
        pyramid = self.get_layer(self.fpn_name)(features, training=training)
        levels = [head(level, training=training) for level in pyramid]
        batch_size = tf.shape(batch["images"])[0]
        return {
            "features": pyramid[:-1],
            "objectness": tf.concat([tf.reshape(o, [batch_size, -1]) for o, _ in levels], 1),
            "box_deltas": tf.concat([tf.reshape(d, [batch_size, -1, 4]) for _, d in levels], 1),
            "levels": levels,
        }

    def rpn_anchors(self, rpn: dict) -> tf.Tensor:
        """The anchors of the RPN outputs of `run_rpn`, in their order (N, 4)."""
        layer = self.get_layer(self.proposal_layer_name)
        if "levels" in rpn:
            return layer.anchors([objectness for objectness, _ in rpn["levels"]])
        shape = tf.shape(rpn["objectness"])
        return generate_anchors(shape[1], shape[2], layer.stride, layer.scales, layer.ratios)

    def rpn_losses(self, batch: dict, rpn: dict, seed=None) -> dict:
        """Anchor targets and the RPN loss: `{"rpn_cls_loss", "rpn_box_loss"}`."""
        layer = self.get_layer(self.proposal_layer_name)
        targets = rpn_targets(
            self.rpn_anchors(rpn),
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
        if "levels" in rpn:
            maps = [o for o, _ in rpn["levels"]] + [d for _, d in rpn["levels"]]
        else:
            maps = [rpn["objectness"], rpn["box_deltas"]]
        return layer([*maps, batch["image_shape"], self.batch_scale(batch)], training=True)

    def head_losses(self, batch: dict, rpn: dict, targets: dict, training: bool) -> dict:
        """The head on the sampled RoIs and its loss: `{"cls_loss", "box_loss"}`."""
        head = self.get_layer(self.roi_head_name)
        cls_score, bbox_pred = head(
            head_inputs(rpn["features"], targets["rois"]), training=training
        )
        return self.box_head_losses(targets, cls_score, bbox_pred)

    def loss_weights(self) -> dict:
        return {
            "rpn_cls_loss": 1.0,
            "rpn_box_loss": self.rpn_box_loss_weight,
            **super().loss_weights(),
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
        terms["loss"] = self.total_loss(terms)
        terms["_rpn"] = rpn
        terms["_targets"] = targets
        return terms

    def model_inputs(self, batch: dict) -> list:
        """`[images, image_shape, scale]` of a batch dict, for calling the model."""
        images = tf.convert_to_tensor(batch["images"])
        if "image_shape" in batch:
            shape = tf.cast(batch["image_shape"], tf.float32)
        else:
            size = tf.cast(tf.shape(images)[1:3], tf.float32)
            shape = tf.tile(size[None], [tf.shape(images)[0], 1])
        return [images, shape, self.batch_scale(batch)]


@dataclasses.dataclass(frozen=True, eq=False)
class FasterRCNNParts:
    """Faster R-CNN's checked parts; `graph` wires them on input tensors.

    Made by `faster_rcnn_parts`; `faster_rcnn` and `mask_rcnn` build their graphs with it, so
    a detector with a further branch composes the same parts instead of copying them.

    Attributes:
        backbone: The registered family name, or a `keras.Model` nested as is.
        feature_stride: Input pixels per feature cell.
        backbone_options: The family's own options (`{"width": 32}` for the compact trunk).
        rpn: The `RPNHead` layer (`"rpn"`).
        proposal_layer: The `ProposalLayer` (`"proposal_layer"`).
        head_options: Keyword arguments of `fast_rcnn_head` besides the inputs and classes.
        fpn: The `FeaturePyramid` (`"fpn"`) of a model with FPN, else None (the C4 head).
    """

    backbone: str | keras.Model
    feature_stride: int
    backbone_options: dict
    rpn: RPNHead
    proposal_layer: ProposalLayer
    head_options: dict
    fpn: FeaturePyramid | None = None

    @property
    def backbone_source(self) -> str:
        """The pretrained network of `backbone_weights`, for messages."""
        if isinstance(self.backbone, keras.Model):
            return "the backbone model"
        return get_backbone(self.backbone).weights_source or f"backbone={self.backbone!r}"

    def backbone_model(self, input_shape: tuple) -> keras.Model:
        """The trunk as the nested model `"backbone"`: images -> features at the stride
        (with FPN: the list `[C2, C3, C4, C5]`, strides 4 ... 32)."""
        images = keras.Input(input_shape, name="images")
        if isinstance(self.backbone, keras.Model):
            features = self.backbone(images)
            if self.fpn is not None:
                features = self.pyramid_inputs(features, "the backbone model")
            return keras.Model(images, features, name=FasterRCNN.backbone_name)
        family = get_backbone(self.backbone)
        # Built at the network's own stride: the feature at `feature_stride` is then C4 (or
        # C3) of the undilated network, and the model keeps only the layers it needs.
        features = family.apply(images, max(family.output_strides), **self.backbone_options)
        if self.fpn is not None:
            outputs = self.pyramid_inputs(features, f"backbone={self.backbone!r}")
            model = keras.Model(images, outputs, name=FasterRCNN.backbone_name)
        elif self.feature_stride not in features:
            raise ValueError(
                f"feature_stride={self.feature_stride!r}: backbone={self.backbone!r} gives "
                f"features at the strides {sorted(features)}"
            )
        else:
            model = keras.Model(
                images, features[self.feature_stride], name=FasterRCNN.backbone_name
            )
        return model

    @staticmethod
    def pyramid_inputs(features, source: str) -> list:
        """`[C2, C3, C4, C5]` of a backbone's `{stride: tensor}` (or `{"stride_4": ...}`)."""
        if not isinstance(features, dict):
            features = {}
        elif not all(isinstance(key, int) for key in features):
            features = features_by_stride(features)  # a backbone model's "stride_4" names
        missing = [s for s in FPN_BACKBONE_STRIDES if s not in features]
        if missing:
            raise ValueError(
                f"fpn=True: {source} gives features at the strides {sorted(features)}; a "
                f"feature pyramid needs the strides {list(FPN_BACKBONE_STRIDES)}"
            )
        return [features[s] for s in FPN_BACKBONE_STRIDES]

    @staticmethod
    def level_inputs(channels: int, count: int) -> list:
        """The pyramid-level inputs P2 ... of a nested RoI head model."""
        return [
            keras.Input((None, None, channels), name=f"p{level}") for level in range(2, 2 + count)
        ]

    def roi_head_model(self, channels: int, num_classes: int) -> keras.Model:
        """The nested model `"roi_head"`: `[features, rois] -> [cls_score, bbox_pred]`
        (with FPN: `[P2, ..., P5, rois]`, each RoI pooled from its level)."""
        rois = keras.Input((None, 4), name="rois")
        if self.fpn is None:
            features = keras.Input((None, None, channels), name="features")
            outputs = fast_rcnn_head(features, rois, num_classes, **self.head_options)
            return keras.Model([features, rois], outputs, name=FasterRCNN.roi_head_name)
        options = self.head_options
        levels = self.level_inputs(channels, len(FPN_BACKBONE_STRIDES))
        pool = options["pool_size"]
        pooled = MultiLevelRoIPooling(pool, mode=options["roi_mode"], name="roi_pool5")(
            [*levels, rois]
        )
        x = keras.layers.Reshape((-1, pool * pool * channels), name="roi_flatten")(pooled)
        outputs = fast_rcnn_classifier(x, num_classes, options["dropout"], options["fc_units"])
        return keras.Model([*levels, rois], outputs, name=FasterRCNN.roi_head_name)

    def graph(self, images, image_shape, scale, num_classes: int) -> tuple[dict, object]:
        """Wires the parts on the input tensors.

        Returns:
            `(outputs, features)`: the dict of `OUTPUT_KEYS` and the features the RoI heads
            read (the backbone's, or with FPN the list `[P2, ..., P5]`).
        """
        features = self.backbone_model(tuple(images.shape[1:]))(images)
        if self.fpn is None:
            objectness, box_deltas = self.rpn(features)
            maps = [objectness, box_deltas]
            channels = features.shape[-1]
        else:
            pyramid = self.fpn(features)
            levels = [self.rpn(level) for level in pyramid]  # one head shared by the levels
            maps = [o for o, _ in levels] + [d for _, d in levels]
            features, channels = pyramid[:-1], self.fpn.channels
        proposals, scores, count = self.proposal_layer([*maps, image_shape, scale])
        head = self.roi_head_model(channels, num_classes)
        cls_score, bbox_pred = head(head_inputs(features, proposals))
        outputs = {
            "cls_score": cls_score,
            "bbox_pred": bbox_pred,
            "proposals": proposals,
            "proposal_scores": scores,
            "num_proposals": count,
        }
        return outputs, features

    def build(self, graph, model_class: type[FasterRCNN], **arguments) -> FasterRCNN:
        """Builds `graph` on Faster R-CNN's inputs, loading `backbone_weights` into the parts.

        Args:
            graph: `graph([images, image_shape, scale], num_classes) -> outputs`, wiring
                these parts (`FasterRCNNParts.graph`) and any further branch.
            model_class: `FasterRCNN` or a subclass.
            **arguments: `num_classes`, `input_shape`, `name`, `weights`,
                `backbone_weights` (see `keras_dense.apps.builder.build_model`) and the
                training options of `model_class`.

        Returns:
            The `model_class` model.
        """
        return build_detector(
            graph,
            model_class,
            load_backbone=self.load_backbone,
            backbone_source=self.backbone_source,
            **arguments,
        )

    def load_backbone(self, model: keras.Model, path: str) -> list[str]:
        """Copies the family's pretrained weights into the backbone (and VGG16's fc6/fc7).

        The pretrained low layers are then frozen, as the papers did (VGG16's conv1 / conv2);
        a backbone trained from scratch keeps every layer trainable (frozen random filters
        would never learn).
        """
        family = get_backbone(self.backbone)
        backbone = model.get_layer(FasterRCNN.backbone_name)
        loaded = family.load_weights(backbone, path)
        for layer_name in FROZEN_BACKBONE_LAYERS.get(family.name, ()):
            backbone.get_layer(layer_name).trainable = False
        head = self.head_options
        # VGG16's fc6 reads 7 x 7 x 512 pooled cells: not the pyramid's 256 channels.
        if (
            family.name == "vgg16"
            and self.fpn is None
            and head["pool_size"] == 7
            and head["fc_units"] == FC_UNITS
        ):
            loaded += load_vgg16_weights(model.get_layer(FasterRCNN.roi_head_name), path)
        return loaded


def architecture_defaults() -> dict:
    """`faster_rcnn`'s architecture arguments (all but `num_classes`, `input_shape`,
    `weights` and `name`) with their defaults."""
    return {
        key: parameter.default
        for key, parameter in inspect.signature(faster_rcnn).parameters.items()
        if parameter.default is not inspect.Parameter.empty and key not in MODEL_ARGUMENTS
    }


def faster_rcnn_parts(**options) -> FasterRCNNParts:
    """Checks Faster R-CNN's architecture options and makes its parts.

    Args:
        **options: Architecture arguments of `faster_rcnn` (`backbone`, `anchor_scales`,
            ..., `backbone_weights`); those not given take `faster_rcnn`'s defaults.

    Returns:
        The parts; `parts.graph(...)` wires them.

    Raises:
        ValueError: Bad or unknown argument.
    """
    defaults = architecture_defaults()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown arguments {unknown}: Faster R-CNN's architecture takes {sorted(defaults)}"
        )
    o = types.SimpleNamespace(**{**defaults, **options})
    backbone, feature_stride, dropout = o.backbone, o.feature_stride, o.dropout
    if isinstance(backbone, keras.Model):
        if o.backbone_weights is not None:
            raise ValueError("backbone_weights: not supported with a backbone model (load its own)")
        backbone_options = {}
    else:
        if not isinstance(backbone, str):
            raise ValueError(f"backbone={backbone!r}: expected a registered name or a keras.Model")
        backbone = BACKBONE_ALIASES.get(backbone, backbone)
        family = get_backbone(backbone)  # names the registered ones
        backbone_options = {}
        if "width" in family.options:  # the compact trunk's; ignored by the other families
            width = o.backbone_width
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(f"backbone_width={width!r}: expected a positive int")
            backbone_options["width"] = width
        family.check(None, o.backbone_weights)  # a family that is never pretrained says so
        if o.fpn and max(family.output_strides) < max(FPN_BACKBONE_STRIDES):
            raise ValueError(
                f"fpn=True: backbone={backbone!r} reaches stride {max(family.output_strides)}; "
                f"a feature pyramid needs the strides {list(FPN_BACKBONE_STRIDES)} (use a "
                "classification network such as 'vgg16', 'resnet50' or 'mobilenetv2')"
            )
    if isinstance(feature_stride, bool) or feature_stride not in FEATURE_STRIDES:
        raise ValueError(
            f"feature_stride={feature_stride!r}: expected one of {list(FEATURE_STRIDES)}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: expected a rate in [0, 1)")
    for key, value in (("fc_units", o.fc_units), ("pool_size", o.pool_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: expected a positive int")
    if o.roi_mode not in ("max", "align"):
        raise ValueError(f"roi_mode={o.roi_mode!r}: expected 'max' or 'align'")
    if not isinstance(o.fpn, bool):
        raise ValueError(f"fpn={o.fpn!r}: expected True or False")
    proposal_options = dict(
        ratios=tuple(float(r) for r in o.anchor_ratios),
        train_pre_nms_top_n=o.train_pre_nms_top_n,
        train_post_nms_top_n=o.train_post_nms_top_n,
        test_pre_nms_top_n=o.test_pre_nms_top_n,
        test_post_nms_top_n=o.test_post_nms_top_n,
        nms_iou=o.rpn_nms_iou,
        min_size=o.min_size,
        name=FasterRCNN.proposal_layer_name,
    )
    if o.fpn:
        if feature_stride != FEATURE_STRIDE:
            raise ValueError(
                f"feature_stride={feature_stride!r}: not used with fpn=True (the pyramid "
                f"reads the strides {list(FPN_BACKBONE_STRIDES)}); leave it at {FEATURE_STRIDE}"
            )
        sizes = FPN_ANCHOR_SIZES if o.anchor_scales is None else tuple(o.anchor_scales)
        if len(sizes) != len(FPN_STRIDES):
            raise ValueError(
                f"anchor_scales={o.anchor_scales!r}: with fpn=True expected one anchor size per "
                f"level P2 ... P6 ({len(FPN_STRIDES)} sizes, e.g. {list(FPN_ANCHOR_SIZES)})"
            )
        anchors_per_cell = num_anchors(sizes[:1], o.anchor_ratios)  # checks the ratios
        proposal_layer = PyramidProposalLayer(FPN_STRIDES, sizes, **proposal_options)
        fpn = FeaturePyramid(o.fpn_channels, name=FasterRCNN.fpn_name)  # checks its options
    else:
        scales = DEFAULT_SCALES if o.anchor_scales is None else o.anchor_scales
        anchors_per_cell = num_anchors(scales, o.anchor_ratios)  # checks both
        proposal_layer = ProposalLayer(  # checks its options
            stride=feature_stride, scales=tuple(float(s) for s in scales), **proposal_options
        )
        fpn = None
    return FasterRCNNParts(
        backbone=backbone,
        feature_stride=feature_stride,
        backbone_options=backbone_options,
        rpn=RPNHead(anchors_per_cell, o.rpn_filters, name=FasterRCNN.rpn_name),
        proposal_layer=proposal_layer,
        head_options={
            "pool_size": o.pool_size,
            "roi_mode": o.roi_mode,
            "dropout": dropout,
            "fc_units": o.fc_units,
            "spatial_scale": 1.0 / feature_stride,
        },
        fpn=fpn,
    )


@makes("detection")
def faster_rcnn(
    num_classes: int = 20,
    backbone: str | keras.Model = "vgg16",
    anchor_scales: Sequence[float] | None = None,
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
    fpn: bool = False,
    fpn_channels: int = 256,
    backbone_width: int = 32,
    input_shape: tuple = (None, None, 3),
    backbone_weights: str | None = None,
    weights: str | None = None,
    name: str = "faster_rcnn",
    **kwargs,
) -> FasterRCNN:
    """Builds Faster R-CNN: a backbone at stride 16 (or 8) or a feature pyramid (`fpn=True`),
    the RPN and the Fast R-CNN head.

    Args:
        num_classes: Object classes K; the head has K + 1 outputs (background = 0).
        backbone: A family of the backbone registry (`keras_dense.backbones.backbone_names()`):
            the trunk is the family's network cut at its last feature map at
            `feature_stride` (VGG16: conv5_3 at 16, conv1/conv2 frozen when pretrained, as
            in the paper;
            ResNet: conv1 ... conv4 at 16, all trainable, feeding the same fc head, not a
            conv5 head; MobileNetV2, Xception, ...). `"compact"` is the registry's
            `"compact_strided"`: a small conv-BN-ReLU trunk from scratch, for small images
            and CPU experiments, never pretrained. Or a `keras.Model` mapping images to
            features at `feature_stride` with a known number of channels (nested as is; it
            must be serializable; with `fpn=True` its output is a dict of the features at the
            strides 4, 8, 16 and 32, keyed by int or as `"stride_4"`, ...).
        anchor_scales: Anchor sides in input pixels; None is (128, 256, 512), or with
            `fpn=True` one size per level P2 ... P6, (32, 64, 128, 256, 512).
        anchor_ratios: Anchor height / width ratios ((0.5, 1, 2)).
        rpn_filters: Channels of the RPN's 3 x 3 conv (512).
        pool_size: RoI pooling grid (7).
        roi_mode: `"max"` (RoI pooling) or `"align"` (RoIAlign; FPN's).
        fc_units: Units of fc6 and fc7 (4096; smaller for quick experiments).
        dropout: Dropout rate after fc6 and fc7 (0.5).
        train_pre_nms_top_n: Proposals kept before NMS in training (12000).
        train_post_nms_top_n: Proposals kept after NMS in training (2000).
        test_pre_nms_top_n: Proposals kept before NMS at test (6000).
        test_post_nms_top_n: Proposals kept after NMS at test (300).
        rpn_nms_iou: IoU threshold of the proposals' NMS (0.7).
        min_size: Smallest proposal side in original-image pixels (16; the `scale` input
            converts it to input pixels).
        feature_stride: Input pixels per feature cell: 16 (C4, the paper's) or 8 (C3);
            anchors, proposals and RoI pooling follow it. A family without features at that
            stride is refused. Not used with `fpn=True`.
        fpn: Build a Feature Pyramid Network (Lin et al. 2017) on the backbone's C2 ... C5
            (strides 4 ... 32; a family without them is refused): lateral 1 x 1 convs, the
            top-down pathway and 3 x 3 output convs give P2 ... P5 at `fpn_channels`, P6
            subsamples P5. The RPN head (shared by the levels) runs on P2 ... P6 with one
            anchor size per level; the proposals of all levels go through one NMS; each RoI
            is pooled from P_k, k = floor(4 + log2(sqrt(w h) / 224)) clamped to 2 ... 5
            (`MultiLevelRoIPooling`), then the same fc head. False keeps the single-map
            head (the papers' C4 head).
        fpn_channels: Channels of the pyramid's levels (256).
        backbone_width: Channels of the compact trunk's first stage (32; ignored by the
            other backbones).
        input_shape: Image shape (H, W, 3); H and W may be None.
        backbone_weights: None, `"imagenet"` or a weight file of the family's
            keras.applications network (VGG16 with its top: conv layers, and fc6/fc7 when
            `pool_size=7` and `fc_units=4096`).
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
    # The arguments as given, before any other local name exists.
    given = locals()
    FasterRCNN.check_options(kwargs)
    parts = faster_rcnn_parts(**{key: given[key] for key in architecture_defaults()})

    def graph(inputs, classes: int):
        return parts.graph(*inputs, classes)[0]

    return parts.build(
        graph,
        FasterRCNN,
        num_classes=num_classes,
        input_shape=input_shape,
        name=name,
        weights=weights,
        backbone_weights=backbone_weights,
        **kwargs,
    )
