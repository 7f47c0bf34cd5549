"""The base of the two-stage detectors (Fast R-CNN, Faster R-CNN, Mask R-CNN).

A two-stage detector is a functional `keras.Model` whose second stage classifies and refines
regions of interest. Its training step samples RoIs among candidate boxes and matches them to
the ground truth (`keras_dense.detection.sample_rois`), then minimises a sum of loss terms.
`TwoStageDetector` holds what the three models share:

- the RoI sampling options (`rois_per_image`, `fg_fraction`, `fg_iou_threshold`,
  `bg_iou_range`, `box_stds`, `box_loss_weight`, `use_difficult`) and their `get_config`
  entries; the papers' defaults differ, so a subclass sets `default_rois_per_image` and
  `default_bg_iou_range`;
- the batch check (`check_batch`, from `batch_keys`), the `sample_rois` call
  (`sample_targets`), the head's loss terms (`box_head_losses`);
- `train_step`, `test_step` and `predict_step` around `compute_losses`, one `Mean` tracker per
  name of `loss_names` and the weighted total (`loss_weights`).

A subclass checks its graph (`check_graph`), says how a batch is fed to the model
(`model_inputs`) and computes its loss terms (`compute_losses`); it names its inputs besides
the RGB `images` in `extra_inputs`, which `build_detector` creates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from keras_dense.apps.builder import build_model
from keras_dense.detection.boxes import BOX_STDS
from keras_dense.detection.losses import fast_rcnn_loss
from keras_dense.detection.sampling import sample_rois


class TwoStageDetector(keras.Model):
    """A functional two-stage detector trained on `keras_dense.data.detection_dataset` batches.

    Not registered for serialization itself: the models are its subclasses. Compile with an
    optimizer only (the loss is built in).

    Args:
        *args: `inputs`, `outputs` (and `name`), as for a functional `keras.Model`.
        rois_per_image: RoIs sampled per image and step (`default_rois_per_image` when None).
        fg_fraction: Largest share of foreground RoIs (0.25).
        fg_iou_threshold: IoU with a ground-truth box that makes a RoI foreground (0.5).
        bg_iou_range: IoU range `[low, high)` of background RoIs (`default_bg_iou_range`
            when None).
        box_stds: Standard deviations normalising the head's box targets
            ((0.1, 0.1, 0.2, 0.2)).
        box_loss_weight: lambda of the head's smooth-L1 term (1).
        use_difficult: Train on VOC "difficult" boxes too (False, as the papers).
        **kwargs: Functional model keyword arguments (`inputs`, `outputs`, `name`, ...).
    """

    default_rois_per_image = 128
    default_bg_iou_range: tuple[float, float] = (0.0, 0.5)
    # Keys a training batch must hold, and the optional ones named in the message.
    batch_keys: tuple[str, ...] = ("images", "boxes", "labels", "num_boxes")
    optional_batch_keys: tuple[str, ...] = ("difficult",)
    # The loss terms besides the total "loss", in the order of `metrics`.
    loss_names: tuple[str, ...] = ("cls_loss", "box_loss")
    # `{name: shape}` of the model's inputs after `images` (B, H, W, 3).
    extra_inputs: Mapping[str, tuple] = {}

    def __init__(
        self,
        *args,
        rois_per_image: int | None = None,
        fg_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        bg_iou_range: Sequence[float] | None = None,
        box_stds: Sequence[float] = BOX_STDS,
        box_loss_weight: float = 1.0,
        use_difficult: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.check_graph()
        if len(box_stds) != 4:
            raise ValueError(f"box_stds={box_stds!r}: expected 4 numbers")
        if rois_per_image is None:
            rois_per_image = self.default_rois_per_image
        if bg_iou_range is None:
            bg_iou_range = self.default_bg_iou_range
        self.rois_per_image = int(rois_per_image)
        self.fg_fraction = float(fg_fraction)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_range = tuple(float(v) for v in bg_iou_range)
        self.box_stds = tuple(float(v) for v in box_stds)
        self.box_loss_weight = float(box_loss_weight)
        self.use_difficult = bool(use_difficult)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=name) for name in self.loss_names]

    @classmethod
    def training_option_names(cls) -> set[str]:
        """The keyword options of this class's `__init__` and its bases' (the training options)."""
        return {
            key
            for klass in cls.__mro__
            if issubclass(klass, TwoStageDetector)
            for key, parameter in inspect.signature(klass.__init__).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }

    @classmethod
    def check_options(cls, options, builder_options=()) -> None:
        """Raises ValueError naming the keys of a builder's `**kwargs` that no one takes.

        Args:
            options: The builder's extra keyword arguments.
            builder_options: Further names the builder itself takes from them.
        """
        training = cls.training_option_names()
        unknown = sorted(set(options) - training - set(builder_options))
        if unknown:
            other = f" and the options {sorted(builder_options)}" if builder_options else ""
            raise ValueError(
                f"unknown arguments {unknown}: expected the training options of "
                f"{cls.__name__} {sorted(training)}{other}"
            )

    def check_graph(self) -> None:
        """Raises ValueError when the functional graph is not this detector's (subclasses)."""

    @property
    def num_classes(self) -> int:
        """Number of object classes K (without background), from the `cls_score` output."""
        output = self.output
        cls_score = output["cls_score"] if isinstance(output, dict) else self.outputs[0]
        return int(cls_score.shape[-1]) - 1

    @property
    def metrics(self):
        return [self.loss_tracker, *self.term_trackers]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
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
    # Batches and RoI sampling
    # ------------------------------------------------------------------------------------
    @classmethod
    def check_batch(cls, data) -> dict:
        """The batch dict of `fit`/`evaluate` data, or a ValueError naming what is missing."""
        if isinstance(data, (tuple, list)) and data and isinstance(data[0], dict):
            data = data[0]
        if not isinstance(data, dict):
            raise ValueError(
                f"{cls.__name__}.fit/evaluate: expected batches that are dicts from "
                f"keras_dense.data.detection_dataset, got {type(data).__name__}"
            )
        missing = [key for key in cls.batch_keys if key not in data]
        if missing:
            optional = ", ".join(cls.optional_batch_keys)
            raise ValueError(
                f"batch: missing keys {missing}; expected a keras_dense.data.detection_dataset "
                f"batch with {list(cls.batch_keys)} (and optionally {optional})"
            )
        return data

    def sample_targets(self, batch: dict, proposals=None, num_proposals=None, seed=None) -> dict:
        """Training RoIs (candidates + ground truth) with their labels and box targets.

        Args:
            batch: A detection batch dict (see `check_batch`).
            proposals: Candidate boxes `(B, N, 4)` (no gradient flows into them); None takes
                the batch's `proposals` and `num_proposals`.
            num_proposals: Valid candidates per image `(B,)`.
            seed: Optional int pair for reproducible sampling.

        Returns:
            The dict of `keras_dense.detection.sample_rois`.
        """
        if proposals is None:
            batch = self.check_batch(batch)
            proposals, num_proposals = batch["proposals"], batch["num_proposals"]
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

    @staticmethod
    def box_head_losses(targets: dict, cls_score, bbox_pred) -> dict:
        """The head's terms on sampled RoIs: `{"cls_loss", "box_loss"}` (unweighted)."""
        terms = fast_rcnn_loss(targets["labels"], targets["box_targets"], cls_score, bbox_pred, 1.0)
        return {"cls_loss": terms["cls_loss"], "box_loss": terms["box_loss"]}

    # ------------------------------------------------------------------------------------
    # Losses and steps
    # ------------------------------------------------------------------------------------
    def loss_weights(self) -> dict:
        """Weight of each term of `loss_names` in the total loss (1 when absent)."""
        return {"cls_loss": 1.0, "box_loss": self.box_loss_weight}

    def total_loss(self, terms: dict) -> tf.Tensor:
        """The weighted sum of the `loss_names` terms plus `self.losses`, float32."""
        weights = self.loss_weights()
        loss = tf.add_n([weights.get(name, 1.0) * terms[name] for name in self.loss_names])
        if self.losses:
            loss = loss + tf.add_n([tf.cast(v, tf.float32) for v in self.losses])
        return loss

    def compute_losses(self, batch: dict, training: bool = True, seed=None) -> dict:
        """Every loss term of a checked batch and their total `"loss"` (subclasses).

        Args:
            batch: A detection batch dict.
            training: Training mode of the layers (dropout, batch norm).
            seed: Optional int pair: reproducible sampling.

        Returns:
            `{name: term for name in loss_names}` plus `"loss"` (`total_loss`).
        """
        raise NotImplementedError(f"{type(self).__name__}.compute_losses")

    def model_inputs(self, batch: dict) -> list:
        """The model's inputs taken from a batch dict, for `predict` (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__}.model_inputs")

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

    def predict_step(self, data):
        if isinstance(data, (tuple, list)) and data and isinstance(data[0], dict):
            data = data[0]
        if isinstance(data, dict):
            return self(self.model_inputs(data), training=False)
        return super().predict_step(data)


def build_detector(
    graph: Callable, model_class: type[TwoStageDetector], **arguments
) -> TwoStageDetector:
    """`build_model` with a two-stage detector's inputs: RGB `images`, then
    `model_class.extra_inputs`.

    Args:
        graph: `graph([images, *extra_inputs], num_classes) -> outputs`.
        model_class: The detector class (`FastRCNN`, `FasterRCNN`, ...).
        **arguments: The other arguments of `keras_dense.apps.builder.build_model`
            (`num_classes`, `input_shape`, `name`, `weights`, `backbone_weights`, ...) and the
            training options of `model_class`.

    Returns:
        The `model_class` model.
    """
    return build_model(
        graph,
        input_channels=3,
        input_name="images",
        extra_inputs=model_class.extra_inputs,
        model_class=model_class,
        **arguments,
    )
