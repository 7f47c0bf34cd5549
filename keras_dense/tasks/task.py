"""The `Task` interface and its registry.

A task (segmentation, detection, ...) owns everything that differs between tasks: which
builders fit it, the tf.data pipelines it trains and evaluates on, its loss and metrics, what
`keras-dense evaluate` reports, its serving signatures, how `keras-dense predict` draws its
outputs, and what its model card holds. The trainer, the commands and the export driver look
a task up by name (`get_task(card["task"])`) and call these hooks; none of them compares task
names. Adding a task is one module defining a `Task` subclass and calling `register_task`, plus
its module path in `keras_dense.tasks.TASK_MODULES`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING

import keras
import numpy as np

from keras_dense import apps
from keras_dense.prediction.inference import DEFAULT_MAX_MEMORY
from keras_dense.tasks.capabilities import TaskCapabilities
from keras_dense.tasks.configs import DataConfig
from keras_dense.tasks.export_options import ExportOptions
from keras_dense.utils.tta import TestTimeAugmentation

# The checked conversions' formats (`keras-dense export --format`), as their runtimes name them.
FORMAT_NAMES = {"tflite": "TFLite", "onnx": "ONNX", "openvino": "OpenVINO"}

if TYPE_CHECKING:  # the recipe's module reads the registry below
    import tensorflow as tf

    from keras_dense.tasks.recipe_config import Recipe

_REGISTRY: dict[str, Task] = {}


@dataclasses.dataclass(frozen=True)
class EvaluateOptions:
    """`keras-dense evaluate` options.

    Attributes:
        crf: Dense-CRF refinement (tasks that support it).
        tiled: Force overlap-tile inference (None: automatic).
        use_07_metric: VOC2007 11-point AP (tasks that report AP).
        tta: Test-time augmentation (segmentation: softmax averaged over flips and scales).
        progress: Draw a progress bar over the images on stderr (on a terminal only).
        pointing_tolerance: Classification: the pointing game's tolerance in pixels (3 by
            default, for images up to about 128 px; Oquab et al. use 18 on VOC).
        max_memory: Segmentation: bytes one image's prediction may take, planned as `predict`
            plans it (whole, tiled, or refused naming the record).
        runner: `"local"`, or `"beam"`: an Apache Beam pipeline (segmentation so far).
        beam_options: `KEY=VALUE` Beam pipeline options.
        model_path: The saved model's path (Beam's workers load it themselves).
        slice: Detection: sliced detection on tiles of this many pixels (None: whole images).
        overlap: Detection with `slice`: fraction of a tile shared by adjacent tiles.
        merge: Detection with `slice`: `"nms"` or `"greedy"` (`detect_sliced`'s `merge`).
        merge_iou: Detection with `slice`: the merge's IoU (`detect_sliced`'s `nms_iou`).
        tile_memory: Detection with `slice`: the `--max-memory` given, the budget of one
            model call over a batch of tiles (None: one tile per call).
    """

    crf: bool = False
    tiled: bool | None = None
    use_07_metric: bool = False
    tta: TestTimeAugmentation = TestTimeAugmentation()
    progress: bool = False
    pointing_tolerance: float = 3.0
    max_memory: int = DEFAULT_MAX_MEMORY
    runner: str = "local"
    beam_options: tuple[str, ...] = ()
    model_path: str | None = None
    slice: int | None = None
    overlap: float = 0.2
    merge: str = "nms"
    merge_iou: float = 0.5
    tile_memory: int | None = None


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """`keras-dense predict` options.

    Attributes:
        tiled: Overlap-tile inference: None (automatic), True or False.
        tile_size: Tile size, or None for the default.
        score_threshold: Lowest score drawn (detection).
        tta: Test-time augmentation (segmentation: softmax averaged over flips and scales).
        crf: Dense-CRF refinement with the model card's parameters (tasks that support it).
        slice: Detection: run the detector on overlapping tiles of this many pixels (sliced
            detection), or None for the whole image.
        overlap: Detection with `slice`: fraction of a tile shared by adjacent tiles.
        merge: Detection with `slice`: `"nms"` or `"greedy"` (`detect_sliced`'s `merge`).
        merge_iou: Detection with `slice`: the merge's IoU (`detect_sliced`'s `nms_iou`).
        tile_memory: Detection with `slice`: the `--max-memory` given, the budget of one
            model call over a batch of tiles (None: one tile per call).
    """

    tiled: bool | None = None
    tile_size: int | None = None
    score_threshold: float = 0.5
    tta: TestTimeAugmentation = TestTimeAugmentation()
    crf: bool = False
    slice: int | None = None
    overlap: float = 0.2
    merge: str = "nms"
    merge_iou: float = 0.5
    tile_memory: int | None = None


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What `Task.compile` decided for this run (a task object keeps no per-run state).

    Attributes:
        card_fields: Model card fields computed while compiling (e.g. class weights measured
            on the training data); they replace those of `Task.card_fields` with the same key.
        notes: Lines for the person running the training (the trainer prints them).
    """

    card_fields: dict = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


class Task:
    """Base class of the tasks; subclasses override the hooks that apply to them.

    Attributes:
        name: The name recipes and model cards use.
        builders: Names of the `keras_dense.apps` builders that make models for this task:
            by default those declared for it with `keras_dense.apps.builder.makes`, in
            `keras_dense.apps.__all__` order (a subclass may list them instead).
        background_outputs: Score channels the model has beyond `classes` (1 for a
            background class that is not listed in the class names).
        image_summaries: Whether the trainer writes input/truth/prediction image summaries.
        capabilities: What its models support beyond what every task does (TTA, CRF, ...);
            the commands refuse the options of the others, in one place
            (`keras_dense.commands.applicable_options`), and the task hooks trust their
            options.
        export_options: Its `ExportOptions` class; each declared field is one option of
            `keras-dense export` and of `export_saved_model`
            (`keras_dense.tasks.export_options`).
        data_config: The dataclass of its recipes' `[data]` table (the keys its pipelines
            read, with their defaults; `keras_dense.tasks.configs`).
        metrics: The `training.metrics` its `compile` can build; a recipe without the key
            gets all of them.
        best_metric: The metric (higher is better) that picks the best checkpoint when the
            recipe's `training.metrics` holds it (else, and when None, the lowest loss).
    """

    name: str = ""
    background_outputs: int = 0
    image_summaries: bool = False
    capabilities: TaskCapabilities = TaskCapabilities()
    export_options: type[ExportOptions] = ExportOptions
    data_config: type[DataConfig] = DataConfig
    metrics: tuple[str, ...] = ()
    best_metric: str | None = None

    @property
    def builders(self) -> tuple[str, ...]:
        """The builders declared for this task (see the class docstring)."""
        return tuple(
            name for name in apps.__all__ if getattr(getattr(apps, name), "task", None) == self.name
        )

    # -- data and classes ------------------------------------------------------------------
    def class_names(self, names: list[str]) -> list[str]:
        """The class names this task's models use, from a manifest's or recipe's list."""
        return list(names)

    def check_recipe(self, recipe: Recipe) -> None:
        """Raises `RecipeError` for recipe values that do not fit this task."""

    def datasets(self, recipe: Recipe, model: keras.Model, num_workers: int, worker_index: int):
        """`(train, validation, steps_per_epoch, validation_steps)` of a recipe."""
        raise NotImplementedError

    # -- model and training ----------------------------------------------------------------
    def finalize_model(self, model: keras.Model, mixed_precision: bool) -> keras.Model:
        """The built model, adapted for training (e.g. float32 outputs under mixed precision)."""
        return model

    def compile(
        self, model: keras.Model, recipe: Recipe, optimizer, num_classes: int
    ) -> CompileResult | None:
        """Compiles the model with this task's loss and metrics.

        Returns:
            What compiling decided for this run's card and log (None: nothing).
        """
        raise NotImplementedError

    def train_batch_stage(self, recipe: Recipe, model: keras.Model):
        """A function applied to each training batch at the start of the train step, or None.

        It runs inside the compiled step, on the step's device (e.g. batched augmentation
        with `data.augment_on = "device"`); the trainer installs it
        (`keras_dense.training.batch_stage`).
        """
        return None

    def monitor(self, recipe: Recipe, has_validation: bool) -> tuple[str, str]:
        """`(log key, "max" | "min")` that picks the best checkpoint (see `best_metric`)."""
        prefix = "val_" if has_validation else ""
        if self.best_metric is not None and self.best_metric in recipe.training.metrics:
            return f"{prefix}{self.best_metric}", "max"
        return f"{prefix}loss", "min"

    def card_fields(self, recipe: Recipe) -> dict:
        """Task-specific fields of the model card written by the trainer."""
        return {}

    # -- evaluation and prediction ---------------------------------------------------------
    def evaluate(self, model: keras.Model, card: dict, pattern: str, options: EvaluateOptions):
        """A JSON-ready report of the model on the shards matching `pattern`."""
        raise NotImplementedError

    def report_lines(self, report: dict) -> list[str]:
        """The headline lines `keras-dense evaluate` prints for a report."""
        return []

    def evaluation_files(self, report: dict, card: dict, title: str) -> dict[str, bytes]:
        """Extra files (name -> content) written beside `metrics.json`."""
        return {}

    def plan_prediction(
        self,
        model,
        card: dict,
        height: int,
        width: int,
        max_memory: int,
        options: PredictOptions | None = None,
    ):
        """How an image of this size is predicted within `max_memory` bytes ("whole")."""
        return "whole"

    def predict_image(self, model, card: dict, rgb, options: PredictOptions, plan: str):
        """Output files (suffix -> content) of one RGB image, e.g. `{"_mask.png": ...}`."""
        raise NotImplementedError

    # -- export ----------------------------------------------------------------------------
    def export_signatures(self, model: keras.Model, card: dict, options: ExportOptions):
        """`(signatures, serving card fields, PixelBudget)` of the SavedModel."""
        raise NotImplementedError

    def verify_export(self, loaded, model: keras.Model, serving: dict, tolerance: float):
        """Compares the reloaded SavedModel's `serving_tensor` with the model; raises."""
        raise NotImplementedError

    # -- TFLite export ---------------------------------------------------------------------
    # The lowest agreement the checked ONNX / OpenVINO exports accept by default.
    export_min_agreement = 0.999

    def export_unsupported(self, card: dict, output_format: str, model=None) -> str | None:
        """Why this task's models cannot be converted to `output_format`, or None when they can.

        The checked exports (`keras_dense.export.tflite_export`, `runtime_export`) refuse the
        model with this reason instead of writing a file that does not work.

        Args:
            card: The model card.
            output_format: "tflite", "onnx" or "openvino".
            model: The loaded model, when the answer depends on its layers.
        """
        capability = "tflite" if output_format == "tflite" else "runtime_export"
        if getattr(self.capabilities, capability):
            return None
        return f"{FORMAT_NAMES[output_format]} export is not supported for {self.name} models"

    def export_report_fields(self, model: keras.Model, card: dict) -> dict:
        """Further fields of a checked export's report (e.g. how to post-process)."""
        return {}

    def export_input_size(self, card: dict) -> tuple[int, int] | None:
        """The check's input size when the card has no `input_size` (None: ask for one)."""
        return None

    def export_inputs(self, model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
        """The converted model's inputs for a batch of normalised check images."""
        return [images]

    def export_specs(self, model: keras.Model, images: tf.TensorSpec) -> list[tf.TensorSpec]:
        """The converted model's input signature, the images' spec first."""
        return [images]

    def export_agreement(self, model: keras.Model, got: list, want: list, inputs: list) -> dict:
        """`conversion_check` over all outputs of a converted model (the first, by default).

        Args:
            model: The Keras model.
            got: The converted model's outputs, in the Keras model's flattened output order.
            want: The Keras model's outputs.
            inputs: What both were given (`export_inputs`).
        """
        return self.conversion_check(got[0], want[0])

    def conversion_check(self, got: np.ndarray, want: np.ndarray) -> dict:
        """Compares a converted model's outputs with the Keras model's on the same images.

        The default compares the argmax over the last axis: per pixel for a segmenter's
        `(N, H, W, K)` logits, per image for a classifier's `(N, K)` scores.

        Args:
            got: The converted model's outputs (its own runtime's).
            want: The Keras model's outputs, same shape.

        Returns:
            `{"agreement": fraction of equal argmaxes, "max_abs_diff": largest |got - want|,
            "compared": number of argmaxes compared}`.

        Raises:
            ValueError: The shapes differ.
        """
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        if got.shape != want.shape:
            raise ValueError(
                f"the converted model outputs {got.shape}, the Keras model {want.shape}"
            )
        same = np.argmax(got, axis=-1) == np.argmax(want, axis=-1)
        diff = np.abs(got - want)
        return {
            "agreement": float(np.mean(same)) if same.size else 1.0,
            # NaN (e.g. an uninitialised weight) must fail the check, not vanish in a max.
            "max_abs_diff": float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf"),
            "compared": int(same.size),
        }


def check_close(key: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> None:
    """Raises RuntimeError when a reloaded SavedModel's output differs from the model's."""
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    if not diff <= tolerance * scale:
        raise RuntimeError(
            f"export verification failed: the reloaded SavedModel's {key} differs from the "
            f"in-memory model by {diff:g}"
        )


def register_task(task: Task) -> Task:
    """Adds a task to the registry under `task.name`.

    Raises:
        ValueError: The name is empty or already taken.
    """
    if not task.name or task.name in _REGISTRY:
        raise ValueError(f"task name {task.name!r} is empty or registered twice")
    _REGISTRY[task.name] = task
    return task


def _load_task_modules() -> None:
    from keras_dense.tasks import TASK_MODULES

    for module in TASK_MODULES:
        importlib.import_module(module)


def task_names() -> tuple[str, ...]:
    """The registered task names."""
    _load_task_modules()
    return tuple(_REGISTRY)


def get_task(name: str) -> Task:
    """The task registered as `name`.

    Raises:
        ValueError: No such task (the message lists the known ones).
    """
    _load_task_modules()
    if name not in _REGISTRY:
        raise ValueError(f"task {name!r}: expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def task_of_builder(builder: str) -> Task | None:
    """The task whose models `builder` makes, or None."""
    _load_task_modules()
    for task in _REGISTRY.values():
        if builder in task.builders:
            return task
    return None
