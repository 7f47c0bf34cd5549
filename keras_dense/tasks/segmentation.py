"""Semantic segmentation: one class id per pixel.

Models map `(B, H, W, C)` images to `(B, H', W', K)` logits (H' = H except for valid-padding
U-Nets). Training uses `keras_dense.data.segmentation_dataset` with the masked cross-entropy
and confusion-matrix metrics; evaluation reports per-class IoU, mean IoU, pixel accuracy and
frequency-weighted IoU with a confusion-matrix image; serving returns class maps at each
image's size; `predict` writes a colour mask and an overlay.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_dense.crf import dense_crf
from keras_dense.crf.card_parameters import card_crf_parameters
from keras_dense.data import segmentation_dataset
from keras_dense.data.device_augment import device_stage
from keras_dense.data.image_io import encode_png
from keras_dense.data.segmentation_records import check_segmentation_masks
from keras_dense.evaluation.confusion_image import confusion_matrix_image
from keras_dense.evaluation.evaluator import evaluate_segmentation
from keras_dense.evaluation.html_report import segmentation_report_html
from keras_dense.losses import build_loss, median_frequency_weights
from keras_dense.metrics import build_metrics
from keras_dense.prediction.inference import (
    plan_prediction,
    segment,
    segment_probabilities,
    softmax,
    tta_probabilities,
)
from keras_dense.prediction.palette import colorize, overlay
from keras_dense.signatures.geometry import InputGeometry, segmenter_geometry
from keras_dense.signatures.memory_budget import measure_bytes_per_pixel, pixel_budget
from keras_dense.signatures.segmentation_signatures import segmentation_signatures
from keras_dense.tasks.capabilities import TaskCapabilities
from keras_dense.tasks.export_options import BatchModeOptions, option
from keras_dense.tasks.recipe_config import Recipe, as_recipe
from keras_dense.tasks.recipe_data import (
    check_batch_fits,
    run_num_classes,
    task_datasets,
    worker_shards,
)
from keras_dense.tasks.segmentation_config import SEGMENTATION_METRICS, SegmentationData
from keras_dense.tasks.task import (
    CompileResult,
    EvaluateOptions,
    PredictOptions,
    Task,
    check_close,
    register_task,
)
from keras_dense.utils.errors import RecipeError
from keras_dense.utils.output_probe import model_output_size
from keras_dense.utils.tta import TestTimeAugmentation


def crop_masks_to_output(
    dataset: tf.data.Dataset, input_size, output_size, ignore_label: int, fit_input: bool
) -> tf.data.Dataset:
    """Adapts `(images, masks)` batches to a model whose output is smaller than its input.

    Valid-padding models (the paper's U-Net) predict the centre `output_size` of an
    `input_size` tile, so the masks are centre-cropped by the margin. With `fit_input`
    (evaluation batches, which keep each image's size), images and masks are first
    centre-cropped or padded to `input_size` (mask padding = `ignore_label`).

    Args:
        dataset: Batches `(images (B, H, W, C), masks (B, H, W))`.
        input_size: `(h, w)` the model is fed.
        output_size: `(h', w')` the model predicts for that input.
        ignore_label: The mask padding value.
        fit_input: Crop or pad every batch to `input_size` first.

    Returns:
        The adapted dataset.
    """
    top = (input_size[0] - output_size[0]) // 2
    left = (input_size[1] - output_size[1]) // 2

    def adapt(images, masks):
        if fit_input:
            images = tf.image.resize_with_crop_or_pad(images, *input_size)
            shifted = masks[..., None] - ignore_label  # padding zeros become ignore_label
            masks = tf.image.resize_with_crop_or_pad(shifted, *input_size)[..., 0] + ignore_label
        masks = masks[:, top : top + output_size[0], left : left + output_size[1]]
        return images, masks

    return dataset.map(adapt, num_parallel_calls=tf.data.AUTOTUNE)


def segmentation_datasets(
    recipe: Recipe | dict,
    output_size=None,
    num_workers: int = 1,
    worker_index: int = 0,
    num_classes: int | None = None,
):
    """Training and validation datasets of a segmentation recipe.

    Args:
        recipe: The recipe (a resolved table is parsed).
        output_size: The model's output `(h, w)` for a training crop, when it differs from the
            crop (valid padding); None for same-size models.
        num_workers: Processes in the cluster; with several, each reads its share of the
            shards and validation runs a fixed number of steps on a repeated dataset (every
            worker must run the same steps).
        worker_index: This process's index in the cluster.
        num_classes: The model's classes: a record with mask labels outside them (other than
            the ignore label) stops training, naming the record and its shard.

    Returns:
        `(train, validation, steps_per_epoch, validation_steps)`; validation is None when the
        recipe has none, validation_steps None for one exact pass.
    """
    recipe = as_recipe(recipe)
    data, training = recipe.data, recipe.training
    crop = data.crop_size
    common = {
        "normalization": data.normalization_mode,
        "ignore_label": data.ignore_label,
        "channels": data.channels,
        "cache": data.cache,
        "seed": recipe.seed,
        "num_classes": num_classes,
    }
    batch = training.batch_size
    train = segmentation_dataset(
        worker_shards(data.train, "data.train", num_workers, worker_index),
        batch,
        crop_size=crop,
        training=True,
        scale_range=data.scale_range,
        flip=data.flip,
        photometric=data.photometric,
        shuffle_buffer=data.shuffle_buffer,
        augment_on=data.augment_on,
        **common,
    ).repeat()
    # With augment_on = "device" the masks are cropped after the stage (`train_batch_stage`).
    if output_size is not None and data.augment_on == "host":
        train = crop_masks_to_output(train, crop, output_size, data.ignore_label, False)
    records = check_batch_fits(data.train, batch)  # also with steps_per_epoch set
    steps = training.steps_per_epoch or records // batch

    def make_validation(pattern, val_batch):
        validation = segmentation_dataset(pattern, val_batch, **common)
        if output_size is not None:
            validation = crop_masks_to_output(
                validation, crop, output_size, data.ignore_label, True
            )
        return validation

    return task_datasets(train, steps, make_validation, recipe, num_workers, worker_index)


def check_segmentation_data(data: SegmentationData) -> None:
    """Checks the class masks of every training and validation record once, before training.

    A mask that `tf.io.decode_png` would read silently wrong (palette, 1/2/4-bit or 16-bit
    PNG, see `keras_dense.data.mask_png`) or a missing mask stops the run, naming the shard,
    record, source_id and field (`keras_dense.data.segmentation_records`; cached per shard).
    `data.on_error = "skip"` does not apply: the segmentation pipeline reads every record of
    its shards and has no cheap way to leave one out, so bad records are refused either way.

    Args:
        data: The recipe's `[data]`.

    Raises:
        BadInputError: A record with a missing or unusable class mask (named).
    """
    note = ""
    if data.on_error == "skip":
        note = (
            ' (data.on_error = "skip" does not apply to segmentation records: the pipeline '
            "cannot leave a record out; fix or re-convert them)"
        )
    check_segmentation_masks(data.train, "data.train", note)
    if data.validation:
        check_segmentation_masks(data.validation, "data.validation", note)


@dataclasses.dataclass(frozen=True)
class SegmentationExportOptions(BatchModeOptions):
    """A segmenter's export options.

    Attributes:
        tta: Test-time augmentation baked into the serving signatures (flip and scales,
            `keras_dense.signatures.segmentation_signatures`); the measured bytes per pixel
            are multiplied by `tta.pixel_factor`.
    """

    tta: TestTimeAugmentation = option(
        TestTimeAugmentation(), "test-time augmentation baked into the serving signatures"
    )


def float32_logits(model: keras.Model) -> keras.Model:
    """Appends a float32 identity so a mixed-precision segmenter's logits are float32."""
    if model.outputs[0].dtype == "float32":
        return model
    logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(
        model.outputs[0]
    )
    return keras.Model(model.input, logits, name=model.name)


def _output_size(model: keras.Model, crop, channels: int):
    """The model's output size for a training crop, or None when it equals the crop."""
    size = model_output_size(model, crop[0], crop[1], channels)
    return None if size == tuple(crop) else size


# Worst and best validation images shown in `evaluate`'s report.html.
GALLERY_IMAGES = 4


class SegmentationTask(Task):
    """Semantic segmentation (see the module docstring)."""

    name = "segmentation"
    data_config = SegmentationData
    metrics = SEGMENTATION_METRICS
    best_metric = "mean_iou"
    image_summaries = True
    capabilities = TaskCapabilities(
        score_tta=True,
        crf=True,
        tiled_inference=True,
        memory_planning=True,
        tflite=True,
        runtime_export=True,
        beam_evaluation=True,
    )
    export_options = SegmentationExportOptions

    def datasets(self, recipe, model, num_workers, worker_index):
        recipe = as_recipe(recipe)
        data = recipe.data
        check_segmentation_data(data)
        output_size = _output_size(model, data.crop_size, data.channels)
        num_classes = run_num_classes(recipe, self)
        return segmentation_datasets(
            recipe, output_size, num_workers, worker_index, num_classes=num_classes
        )

    def train_batch_stage(self, recipe, model):
        data = as_recipe(recipe).data
        if data.augment_on != "device":
            return None
        crop = data.crop_size
        augment = device_stage(
            crop,
            data.scale_range,
            data.flip,
            data.photometric,
            data.normalization_mode,
            data.ignore_label,
        )
        output_size = _output_size(model, crop, data.channels)
        if output_size is None:
            return augment
        top = (crop[0] - output_size[0]) // 2
        left = (crop[1] - output_size[1]) // 2

        def augment_and_crop(batch):
            images, masks = augment(batch)
            return images, masks[:, top : top + output_size[0], left : left + output_size[1]]

        return augment_and_crop

    def finalize_model(self, model, mixed_precision):
        return float32_logits(model) if mixed_precision else model

    def class_weights(
        self, recipe: Recipe, num_classes: int
    ) -> tuple[list[float] | None, CompileResult]:
        """The recipe's `loss.class_weights` as numbers (None for unweighted) and their record.

        `"median_frequency"` is computed over the training shards' masks (see
        `keras_dense.losses.median_frequency_weights`); the weights, the rule and the absent
        classes go into the returned card fields' `loss`, and two notes describe them.

        Returns:
            `(weights, CompileResult)`; the result is empty unless the weights were computed.

        Raises:
            RecipeError: A list whose length is not the number of classes.
        """
        recipe = as_recipe(recipe)
        data = recipe.data
        weights = recipe.loss.class_weights
        if isinstance(weights, str):  # "median_frequency" (the recipe validator checks it)
            values, absent = median_frequency_weights(data.train, num_classes, data.ignore_label)
            shown = ", ".join(f"{w:.4g}" for w in values)
            notes = [f"median-frequency class weights over {data.train}: [{shown}]"]
            if absent:
                notes.append(f"  classes never present in the training masks (weight 0): {absent}")
            loss = {
                "name": recipe.loss.name,
                "class_weights": values,
                "class_weights_rule": weights,
                "classes_absent": absent,
            }
            return values, CompileResult({"loss": loss}, tuple(notes))
        if weights and len(weights) != num_classes:
            raise RecipeError(
                f"recipe key 'loss.class_weights': {len(weights)} weights for {num_classes} classes"
            )
        return [float(w) for w in weights] or None, CompileResult()

    def compile(self, model, recipe, optimizer, num_classes):
        recipe = as_recipe(recipe)
        training, ignore_label = recipe.training, recipe.data.ignore_label
        weights, result = self.class_weights(recipe, num_classes)
        model.compile(
            optimizer=optimizer,
            loss=build_loss(recipe.loss.name, ignore_label, weights),
            metrics=build_metrics(list(training.metrics), num_classes, ignore_label),
            jit_compile=training.jit_compile,
        )
        return result

    def card_fields(self, recipe):
        recipe = as_recipe(recipe)
        # The training tile; weights computed by `compile` (median frequency) replace the
        # rule (CompileResult).
        return {"input_size": list(recipe.data.crop_size), "loss": recipe.to_dict()["loss"]}

    def evaluate(self, model, card, pattern, options: EvaluateOptions):
        tta = options.tta if options.tta.enabled else None
        if options.runner == "beam":
            from keras_dense.evaluation.beam_evaluation import evaluate_segmentation_beam

            cm, scores = evaluate_segmentation_beam(
                options.model_path,
                card,
                pattern,
                crf=options.crf,
                tiled=options.tiled,
                tta=tta,
                max_memory=options.max_memory,
                beam_options=options.beam_options,
            )
        else:
            cm, scores = evaluate_segmentation(
                model,
                card,
                pattern,
                crf=options.crf,
                tiled=options.tiled,
                progress=options.progress,
                tta=tta,
                max_memory=options.max_memory,
                gallery=GALLERY_IMAGES,
            )
        # "_gallery": for report.html only (keys starting with "_" stay out of metrics.json).
        gallery = scores.pop("gallery", [])
        report = {**scores, "crf": options.crf, "confusion_matrix": cm.tolist()}
        report["_gallery"] = gallery
        if tta is not None:
            report["tta"] = tta.to_json()
        return report

    def report_lines(self, report):
        lines = [
            f"mIoU = {report['mean_iou']:.4f}, pixel accuracy = {report['pixel_accuracy']:.4f}, "
            f"frequency-weighted IoU = {report['frequency_weighted_iou']:.4f} over "
            f"{report['images']} images"
        ]
        boundary = report.get("per_class_boundary_iou") or {}
        if boundary:
            lines.append(f"boundary IoU (Cheng et al. 2021) = {report['boundary_iou']:.4f}")

        def shown(value):
            return "n/a" if value is None or value != value else f"{value:.4f}"

        for name, iou in report["per_class_iou"].items():
            line = f"  {name:>20}: IoU {shown(iou)}"
            if boundary:
                line += f", boundary IoU {shown(boundary.get(name))}"
            lines.append(line)
        return lines

    def evaluation_files(self, report, card, title):
        cm = np.asarray(report["confusion_matrix"], np.int64)
        image = confusion_matrix_image(cm, card["classes"], title=title)
        page = segmentation_report_html(report, card["classes"], image, title)
        return {"confusion_matrix.png": encode_png(image), "report.html": page.encode()}

    def plan_prediction(self, model, card, height, width, max_memory, options=None):
        tta = options.tta if options is not None else None
        return plan_prediction(model, card, height, width, max_memory, tta)

    def predict_image(self, model, card, rgb, options: PredictOptions, plan: str):
        tiled = options.tiled
        if plan == "tiled":
            if tiled is False:
                raise ValueError(
                    "the image exceeds the --max-memory budget in one pass and --tiled never "
                    "forbids tiling"
                )
            tiled = True
        if options.tta.enabled:
            scores = segment_probabilities(
                model, rgb, card, options.tta, tiled=tiled, tile_size=options.tile_size
            )
        else:
            scores = segment(model, rgb, card, tiled=tiled, tile_size=options.tile_size)
        if options.crf:
            probs = scores if options.tta.enabled else softmax(scores)
            scores = dense_crf(probs, rgb, **card_crf_parameters(card))
        classes = np.argmax(scores, axis=-1).astype(np.uint8)
        return {
            "_mask.png": encode_png(colorize(classes)),
            "_overlay.png": encode_png(overlay(rgb, classes)),
        }

    def export_signatures(self, model, card, options: SegmentationExportOptions):
        geometry = segmenter_geometry(model)
        num_classes = int(model.outputs[0].shape[-1])
        bytes_per_pixel = measure_bytes_per_pixel(model, geometry, num_classes)
        tta = options.tta if options.tta.enabled else None
        if tta is not None:
            # Every pass holds its own activations and the graph may run them at once: the
            # memory per image pixel grows with the pixels of all passes, sum(s^2) (x2 flip).
            bytes_per_pixel *= tta.pixel_factor
        budget = pixel_budget(bytes_per_pixel, options.max_request_memory, options.max_pixels)
        signatures = segmentation_signatures(
            model,
            geometry,
            card["normalization"],
            options.batch_mode,
            budget.max_image_pixels,
            budget.max_request_pixels,
            tta=tta,
        )
        serving = {"geometry": dataclasses.asdict(geometry)}
        if tta is not None:
            serving["tta"] = tta.to_json()
        return signatures, serving, budget

    def verify_export(self, loaded, model, serving, tolerance):
        geometry = InputGeometry(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in serving["geometry"].items()}
        )
        rng = np.random.default_rng(0)
        height, width = geometry.fixed_size or (geometry.input_size(37), geometry.input_size(45))
        images = rng.normal(size=(2, height, width, geometry.channels)).astype(np.float32)
        got = loaded.signatures["serving_tensor"](images=tf.constant(images))["scores"]
        want = np.asarray(model(images, training=False), np.float32)
        check_close("scores", got.numpy(), want, tolerance)
        if "tta" in serving and geometry.fixed_size is None and geometry.margin == 0:
            tta = TestTimeAugmentation(serving["tta"]["flip"], tuple(serving["tta"]["scales"]))
            got = loaded.signatures["serving_tensor"](images=tf.constant(images[:1]))
            want = tta_probabilities(model, images[0], {}, tta, tiled=False)
            check_close("probabilities", got["probabilities"].numpy()[0], want, tolerance)


register_task(SegmentationTask())
