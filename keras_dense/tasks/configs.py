"""The typed tables of a training recipe that every task shares.

A recipe (`apps/*.toml`) has the tables `[model]`, `[data]`, `[training]`, `[optimizer]`,
`[schedule]` and `[loss]`. Each is a frozen dataclass here; its fields are the table's keys
with their defaults. `[data]` belongs to the task: `DataConfig` holds the keys every task
reads, and each task declares its own subclass with the keys its pipeline reads
(`Task.data_config`, e.g. `keras_dense.tasks.segmentation_config.SegmentationData`), so a key
of another task's pipeline is refused naming that task. `keras_dense.tasks.recipe_config`
parses a whole recipe into these.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from keras_dense.losses import LOSS_NAMES
from keras_dense.utils.errors import RecipeError
from keras_dense.utils.typed_tables import require

NORMALIZATIONS = ("caffe", "torch", "tf", "none")
ON_ERROR = ("fail", "skip")
SCHEDULES = ("poly", "cosine", "step", "constant")
# `loss.class_weights` may name a rule instead of listing the weights.
CLASS_WEIGHT_RULES = ("median_frequency",)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """`[model]`: which `keras_dense.apps` builder makes the model, and its arguments.

    Attributes:
        builder: A builder of the recipe's task, e.g. "unet" (required).
        kwargs: `[model.kwargs]`, the builder's keyword arguments (checked against its
            signature when the model is built; "none" stands for None).
        num_classes: The model's classes; 0: the data's class count (given, it must match it).
    """

    builder: str = ""
    kwargs: dict = dataclasses.field(default_factory=dict)
    num_classes: int = 0

    def check(self) -> None:
        """Raises `RecipeError` naming a missing builder or a bad class count."""
        require(bool(self.builder), "model.builder", "missing: name a builder, e.g. 'unet'")
        require(self.num_classes >= 0, "model.num_classes", "expected >= 0 (0: from the data)")
        given = self.kwargs.get("num_classes")
        if self.num_classes and given is not None and given != self.num_classes:
            raise RecipeError(
                f"recipe key 'model.kwargs.num_classes' = {given!r} contradicts "
                f"model.num_classes = {self.num_classes}"
            )

    def class_count(self, data_classes: int) -> int:
        """The model's number of classes: the data's, checked against the recipe's.

        Args:
            data_classes: The number of class names of the run's data.

        Raises:
            RecipeError: The recipe gives another count (its key is named).
        """
        for key, given in (
            ("model.num_classes", self.num_classes),
            ("model.kwargs.num_classes", self.kwargs.get("num_classes", 0)),
        ):
            if given and given != data_classes:
                raise RecipeError(
                    f"recipe key {key!r} = {given} but the data has {data_classes} classes"
                )
        return data_classes


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`[data]` keys every task reads (the tasks' own configs add theirs).

    Attributes:
        train: Glob pattern of the training TFRecord shards (required).
        validation: Glob pattern of the validation shards ("": no validation).
        classes: Class names; empty: those of the shards' manifests.
        normalization: Input normalisation, one of `NORMALIZATIONS` ("none": raw pixels).
        channels: Image channels, 1 or 3.
        ignore_label: The mask value that is not trained on, in [0, 255].
        flip: Random horizontal flips while training.
        cache: Keep the decoded records in memory after the first epoch.
        shuffle_buffer: Records in the training shuffle buffer.
        on_error: A training record that fails the check: "fail" stops naming it, "skip"
            leaves it out with a count (where the task's pipeline can leave records out).
    """

    train: str = ""
    validation: str = ""
    classes: tuple[str, ...] = ()
    normalization: str = "caffe"
    channels: int = 3
    ignore_label: int = 255
    flip: bool = True
    cache: bool = False
    shuffle_buffer: int = 256
    on_error: str = "fail"

    @property
    def normalization_mode(self) -> str | None:
        """`normalization` with "none" (TOML has no null) as None."""
        return None if self.normalization == "none" else self.normalization

    def check(self) -> None:
        """Raises `RecipeError` naming the first key whose value is out of range."""
        require(bool(self.train), "data.train", "missing: a glob pattern of TFRecord shards")
        one_of(self.normalization, NORMALIZATIONS, "data.normalization")
        require(self.channels in (1, 3), "data.channels", f"expected 1 or 3, got {self.channels}")
        require(
            0 <= self.ignore_label <= 255, "data.ignore_label", "expected an integer in [0, 255]"
        )
        require(
            self.shuffle_buffer >= 1,
            "data.shuffle_buffer",
            f"expected >= 1, got {self.shuffle_buffer}",
        )
        one_of(self.on_error, ON_ERROR, "data.on_error")


@dataclasses.dataclass(frozen=True)
class CropData(DataConfig):
    """`[data]` of the tasks that train on random crops of rescaled images.

    Attributes:
        crop_size: Training crop `(height, width)`; one integer in a recipe for a square.
        scale_range: `(min, max)` random rescaling before the crop.
    """

    crop_size: tuple[int, ...] | int = (512, 512)
    scale_range: tuple[float, ...] = (0.5, 2.0)

    def __post_init__(self):
        if isinstance(self.crop_size, int):
            object.__setattr__(self, "crop_size", (self.crop_size, self.crop_size))

    def check(self) -> None:
        super().check()
        crop = self.crop_size
        require(
            len(crop) == 2 and all(c > 0 for c in crop),
            "data.crop_size",
            f"expected a positive integer or [height, width], got {list(crop)!r}",
        )
        low_high = self.scale_range
        require(
            len(low_high) == 2 and 0 < low_high[0] <= low_high[1],
            "data.scale_range",
            f"expected [min, max] with 0 < min <= max, got {list(low_high)!r}",
        )


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """`[training]`.

    Attributes:
        batch_size: Images per training step (per worker).
        validation_batch_size: Images per validation step (0: `batch_size`).
        epochs: Training epochs (ignored when `steps` is set).
        steps: Optimizer steps of the run (0: `epochs` epochs).
        steps_per_epoch: Steps per epoch (0: one pass over the training records).
        validation_steps: Validation steps per epoch (0: one pass).
        metrics: Metrics computed while training, among the task's (`Task.metrics`); a
            recipe without this key gets all of them.
        mixed_precision: Train under the `mixed_float16` policy.
        jit_compile: XLA-compile the train step.
        image_summaries: Images drawn to TensorBoard each epoch (tasks that draw them).
        precise_bn_steps: Training batches over which BatchNorm's running statistics are
            re-estimated before each validation (precise BN, see
            `keras_dense.training.precise_batch_norm`; 0: off, scoring uses the running
            averages as trained).
        scale_fresh_layers: On a pretrained trunk, shrink the fresh layers' kernels to the
            scale of their inputs on the first training batch before training (see
            `keras_dense.training.fresh_layer_scaling`); a model trained from scratch is
            left alone either way.
    """

    batch_size: int = 8
    validation_batch_size: int = 0
    epochs: int = 1
    steps: int = 0
    steps_per_epoch: int = 0
    validation_steps: int = 0
    metrics: tuple[str, ...] = ()
    mixed_precision: bool = False
    jit_compile: bool = False
    image_summaries: int = 3
    precise_bn_steps: int = 0
    scale_fresh_layers: bool = True

    def check(self, known_metrics: tuple[str, ...], task: str) -> None:
        """Raises `RecipeError` naming a value out of range or a metric the task lacks."""
        require(self.batch_size >= 1, "training.batch_size", "expected >= 1")
        require(self.epochs >= 1, "training.epochs", "expected >= 1")
        for key in ("steps", "steps_per_epoch", "validation_steps", "validation_batch_size"):
            require(getattr(self, key) >= 0, f"training.{key}", "expected >= 0 (0: automatic)")
        require(self.image_summaries >= 0, "training.image_summaries", "expected >= 0")
        require(self.precise_bn_steps >= 0, "training.precise_bn_steps", "expected >= 0 (0: off)")
        unknown = [m for m in self.metrics if m not in known_metrics]
        require(
            not unknown,
            "training.metrics",
            f"unknown {unknown}; {task} models compute {list(known_metrics)}",
        )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """`[optimizer]` keys every optimizer shares (the chosen class's own arguments may follow).

    Attributes:
        name: A `keras.optimizers` class, e.g. "sgd", "adamw".
        learning_rate: The initial learning rate (see `[schedule]`).
        momentum: SGD momentum, in [0, 1).
        nesterov: SGD Nesterov momentum.
        weight_decay: Decoupled weight decay (0: none).
        beta_1: Adam's first-moment decay.
        beta_2: Adam's second-moment decay.
        epsilon: Adam's epsilon.
        clipnorm: Gradient norm clipping (0: off).
        learning_rate_multipliers: `fnmatch` pattern on a trainable variable's path ->
            factor of its learning rate, e.g. `{"fc8/*" = 10}` (Caffe's `lr_mult`; see
            `keras_dense.training.learning_rate_multipliers`); empty: every variable at the
            optimizer's rate.
    """

    name: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    clipnorm: float = 0.0
    learning_rate_multipliers: dict[str, float] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Raises `RecipeError` naming a value out of range."""
        require(self.learning_rate > 0, "optimizer.learning_rate", "expected > 0")
        require(0 <= self.momentum < 1, "optimizer.momentum", "expected in [0, 1)")
        require(self.weight_decay >= 0, "optimizer.weight_decay", "expected >= 0")
        require(self.clipnorm >= 0, "optimizer.clipnorm", "expected >= 0 (0: off)")
        check_learning_rate_multipliers(self.learning_rate_multipliers)


def check_learning_rate_multipliers(multipliers: Mapping) -> None:
    """Checks `optimizer.learning_rate_multipliers` without the model: types and range.

    Args:
        multipliers: The table: non-empty pattern strings -> finite numbers > 0.

    Raises:
        RecipeError: Not a table, an empty pattern, or a multiplier that is not a finite
            number > 0 (the key, the pattern and the value are named).
    """
    key = "optimizer.learning_rate_multipliers"
    require(
        isinstance(multipliers, Mapping),
        key,
        f"expected a table of pattern = multiplier, got {multipliers!r}",
    )
    for pattern, value in multipliers.items():
        require(
            isinstance(pattern, str) and bool(pattern),
            key,
            f"pattern {pattern!r}: expected a non-empty fnmatch pattern on variable paths, "
            'e.g. "fc8/*"',
        )
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        require(
            number and math.isfinite(value) and value > 0,
            key,
            f"the multiplier of pattern {pattern!r} is {value!r}: expected a number > 0",
        )


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """`[schedule]`: the learning rate over the optimizer steps.

    Attributes:
        name: One of `SCHEDULES`.
        power: Poly decay power (DeepLab: 0.9).
        end_learning_rate: Poly decay's final learning rate.
        alpha: Cosine decay's final fraction of the learning rate.
        boundaries: Step schedule: increasing optimizer steps where the rate drops.
        factor: Step schedule: the factor at each boundary.
    """

    name: str = "constant"
    power: float = 0.9
    end_learning_rate: float = 0.0
    alpha: float = 0.0
    boundaries: tuple[int, ...] = ()
    factor: float = 0.1

    def check(self) -> None:
        """Raises `RecipeError` naming a value out of range."""
        one_of(self.name, SCHEDULES, "schedule.name")
        require(self.power > 0, "schedule.power", "expected > 0 (DeepLab: 0.9)")
        require(0 <= self.alpha <= 1, "schedule.alpha", "expected in [0, 1]")
        bounds = list(self.boundaries)
        require(
            all(b > 0 for b in bounds) and bounds == sorted(set(bounds)),
            "schedule.boundaries",
            f"expected increasing positive step numbers, got {bounds!r}",
        )
        require(
            self.name != "step" or bool(bounds),
            "schedule.boundaries",
            "the step schedule needs at least one boundary (optimizer steps)",
        )
        require(self.factor > 0, "schedule.factor", "expected > 0")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """`[loss]` (tasks whose models compute their own losses ignore it).

    Attributes:
        name: One of `keras_dense.losses.LOSS_NAMES`.
        class_weights: One non-negative weight per class, or a rule of `CLASS_WEIGHT_RULES`.
    """

    name: str = "sparse_categorical_crossentropy"
    class_weights: tuple[float, ...] | str = ()

    def check(self) -> None:
        """Raises `RecipeError` naming a value out of range."""
        one_of(self.name, LOSS_NAMES, "loss.name")
        weights = self.class_weights
        if isinstance(weights, str):
            require(
                weights in CLASS_WEIGHT_RULES,
                "loss.class_weights",
                f"expected a list of non-negative numbers (one per class) or one of "
                f"{CLASS_WEIGHT_RULES}, got {weights!r}",
            )
        else:
            require(
                all(w >= 0 for w in weights),
                "loss.class_weights",
                'expected non-negative numbers, one per class, or "median_frequency"',
            )


def one_of(value: Any, choices: tuple, key: str) -> None:
    """Raises `RecipeError` naming `key` unless `value` is one of `choices`."""
    require(value in choices, key, f"expected one of {choices}, got {value!r}")
