"""Weakly supervised multi-label classification: image-level labels, localisation from maps.

Models are `keras_dense.apps.wsl_classifier`s: `(B, H, W, 3)` images to `(B, C)` logits, with
a `class_maps` layer that localises the classes. Training uses a sigmoid binary
cross-entropy on multi-hot image labels `(B, C)`.

Labels and class ids. The classes `C` are the data's class list without a leading
"background" (`keras_dense.data.class_lists.object_classes`): background is not a WSL class,
it is what no class map claims (see `keras_dense.localization.pseudo_label_masks`). Class
`c` (0-based) is, in the records:

- mask id `c + 1` when the manifest's class list starts with "background" (the shapes, VOC
  and COCO segmentation shards), else mask id `c` (the mask offset); the ignore label and
  the background id are never labels;
- box label `c + 1` (`image/object/class/label` is 1-based);
- image label `c + 1` (`image/class/label`, written by `keras-dense convert folders`, also
  1-based, 0 = background).

A record's image labels are the union of the three. Training crops a random window (area
in `[data.scale_range[0] ** 2, 1]` of the image, aspect 3/4..4/3), flips it left-right with
probability 1/2 (when `data.flip`), and resamples it to `data.crop_size` with one bilinear
`crop_and_resize`; the mask and box labels are those inside the window (a class whose pixels
or boxes all fall outside the crop is not a label of the crop); image labels are kept.
Validation during training resizes each full image to the crop size. `keras-dense evaluate`
runs every full image at its own size and reports the mAP (the main number: a 0.5 cut on
sigmoids is miscalibrated for weakly supervised scores), the accuracy at 0.5, the pointing
game at 0 px and at `EvaluateOptions.pointing_tolerance` px (default 3, for images up to
128 px; Oquab et al. use 18 px on VOC) against the masks (else the boxes) of the records,
the pointing score of the centre-point baseline (every class pointed at the image centre),
and CorLoc (`boxes_from_maps` at 0.2 of the peak against the record's boxes, or else the
boxes of each class's connected mask regions). With `--tta flip` and / or `--scales` the maps
of the pointing game and CorLoc are averaged over the flips and scales
(`keras_dense.localization.augmented_class_maps`; the mAP stays on the plain image).

Evaluation (`keras_dense.evaluation.classification_evaluation`) and serving
(`keras_dense.signatures.classification_signatures`: `scores`, `logits` and `class_maps` at
each image's size) are in their packages; this module holds the `Task` only.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from keras_dense.data.class_lists import object_classes
from keras_dense.data.classification_pipeline import classification_dataset, mask_offset
from keras_dense.data.image_io import encode_png
from keras_dense.evaluation.classification_evaluation import evaluate_classification
from keras_dense.localization import (
    check_classifier_records,
    check_finite,
    class_map_memory_problem,
    class_maps,
)
from keras_dense.signatures.classification_signatures import classification_signatures
from keras_dense.signatures.memory_budget import (
    SAFETY_FACTOR,
    activation_bytes,
    pixel_budget,
    serving_bytes_per_pixel,
)
from keras_dense.tasks.capabilities import TaskCapabilities
from keras_dense.tasks.classification_config import (
    CLASSIFICATION_METRICS,
    ClassificationData,
)
from keras_dense.tasks.export_options import ExportOptions
from keras_dense.tasks.recipe_config import as_recipe
from keras_dense.tasks.recipe_data import (
    check_batch_fits,
    run_num_classes,
    task_datasets,
    worker_shards,
)
from keras_dense.tasks.task import (
    EvaluateOptions,
    PredictOptions,
    Task,
    check_close,
    register_task,
)
from keras_dense.utils.card_fields import check_card_fields
from keras_dense.utils.errors import RecipeError
from keras_dense.utils.normalization import normalize


class ClassificationTask(Task):
    """Weakly supervised multi-label classification (see the module docstring)."""

    name = "classification"
    data_config = ClassificationData
    metrics = CLASSIFICATION_METRICS
    best_metric = "auc"
    capabilities = TaskCapabilities(
        map_tta=True,
        memory_planning=True,
        pointing_game=True,
        class_maps=True,
        runtime_export=True,
    )

    def class_names(self, names):
        return object_classes(names)

    def check_recipe(self, recipe):
        if as_recipe(recipe).data.channels != 3:
            raise RecipeError("recipe key 'data.channels': wsl_classifier needs 3-channel images")

    def datasets(self, recipe, model, num_workers, worker_index):
        recipe = as_recipe(recipe)
        data, training = recipe.data, recipe.training
        num_classes = run_num_classes(recipe, self)
        offset = mask_offset(data.train)
        for key in ("train", "validation"):
            pattern = getattr(data, key)
            if pattern:  # every record checked once, before the first step
                check_classifier_records(
                    model,
                    pattern,
                    num_classes,
                    offset,
                    data.ignore_label,
                    what=f"data.{key} = {pattern!r}",
                )
        common = {
            "num_classes": num_classes,
            "crop_size": data.crop_size,
            "normalization": data.normalization_mode,
            "offset": offset,
            "ignore_label": data.ignore_label,
            "cache": data.cache,
            "seed": recipe.seed,
        }
        batch = training.batch_size
        train = classification_dataset(
            worker_shards(data.train, "data.train", num_workers, worker_index),
            batch,
            training=True,
            min_scale=min(1.0, float(data.scale_range[0])),
            flip=data.flip,
            shuffle_buffer=data.shuffle_buffer,
            **common,
        ).repeat()
        records = check_batch_fits(data.train, batch)
        steps = training.steps_per_epoch or records // batch
        return task_datasets(
            train,
            steps,
            lambda pattern, size: classification_dataset(pattern, size, **common),
            recipe,
            num_workers,
            worker_index,
        )

    def compile(self, model, recipe, optimizer, num_classes):
        training = as_recipe(recipe).training
        metrics = {
            "auc": lambda: keras.metrics.AUC(
                multi_label=True, num_labels=num_classes, from_logits=True, name="auc"
            ),
            "accuracy_at_0_5": lambda: keras.metrics.BinaryAccuracy(
                threshold=0.0, name="accuracy_at_0_5"
            ),
        }
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[metrics[name]() for name in training.metrics],
            jit_compile=training.jit_compile,
        )

    def card_fields(self, recipe):
        # No background threshold: it depends on the trained maps, so `keras-dense
        # tune-threshold` chooses it on held-out masks and adds `background_threshold`
        # (`background_threshold_crf`); until then `pseudo-label` uses
        # DEFAULT_BACKGROUND_THRESHOLD.
        data = as_recipe(recipe).data
        return {"input_size": list(data.crop_size), "mask_offset": mask_offset(data.train)}

    def evaluate(self, model, card, pattern, options: EvaluateOptions):
        return evaluate_classification(
            model,
            card,
            pattern,
            options.pointing_tolerance,
            tta=options.tta,
            max_memory=options.max_memory,
        )

    def report_lines(self, report):
        tol = report["pointing_tolerance"]
        lines = [
            f"mAP = {report['map']:.4f} over {report['images']} images "
            f"(accuracy at 0.5 = {report['accuracy_at_0.5']:.4f})"
        ]
        excluded = report.get("ap_excluded") or []
        if excluded:
            lines.append(
                f"left out of the mAP: {len(excluded)} class(es) without a positive image: "
                f"{', '.join(excluded)}"
            )
        if report["pointing"].get("trials"):
            lines.append(
                f"pointing game: {report['pointing_0px']['accuracy']:.4f} at 0 px, "
                f"{report['pointing']['accuracy']:.4f} at {tol:g} px (centre baseline "
                f"{report['centre_baseline_0px']['accuracy']:.4f} / "
                f"{report['centre_baseline']['accuracy']:.4f})"
            )
        else:
            lines.append("pointing game: not measured (no labelled class has a mask or a box)")
        if np.isfinite(report["corloc"]["corloc"]):
            lines.append(f"CorLoc = {report['corloc']['corloc']:.4f}")
        else:
            lines.append("CorLoc: not measured (no labelled class has a mask or a box)")
        return lines

    def plan_prediction(self, model, card, height, width, max_memory, options=None):
        check_card_fields(card, int(model.outputs[0].shape[-1]))
        # The maps cannot be tiled without changing them: the image fits whole or is refused.
        problem = class_map_memory_problem(model, height, width, max_memory)
        if problem:
            raise ValueError(problem)
        return "whole"

    def predict_image(self, model, card, rgb, options: PredictOptions, plan: str):
        check_card_fields(card, int(model.outputs[0].shape[-1]))
        x = np.asarray(normalize(tf.constant(rgb[None]), card.get("normalization")))
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))[0]
        check_finite(logits, model, "scores")
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        maps = class_maps(model, x)[0]
        best = int(np.argmax(logits))
        heat = maps[..., best] - maps[..., best].min()
        heat = (255 * heat / max(float(heat.max()), 1e-12)).astype(np.uint8)
        names = list(card["classes"])
        result = [{"class": names[i], "score": float(p)} for i, p in enumerate(probabilities)]
        return {
            "_scores.json": (json.dumps(result, indent=2) + "\n").encode(),
            "_class_map.png": encode_png(heat),
        }

    def export_signatures(self, model, card, options: ExportOptions):
        num_classes = int(model.outputs[0].shape[-1])
        sizes = (64, 128)
        used = [activation_bytes(model, s, s, 3) for s in sizes]
        slope = (used[1] - used[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
        # The maps at the image size, their padded copy and the output: 3 x 4 bytes x C.
        extra = serving_bytes_per_pixel(3, 0) + 3 * 4 * num_classes
        budget = pixel_budget(
            SAFETY_FACTOR * (slope + extra), options.max_request_memory, options.max_pixels
        )
        signatures = classification_signatures(
            model, card["normalization"], budget.max_image_pixels, budget.max_request_pixels
        )
        return signatures, {"normalization": card["normalization"]}, budget

    def verify_export(self, loaded, model, serving, tolerance):
        rng = np.random.default_rng(0)
        images = rng.normal(size=(2, 48, 64, 3)).astype(np.float32)
        got = loaded.signatures["serving_tensor"](images=tf.constant(images))["scores"]
        want = np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), np.float32)
        check_close("scores", got.numpy(), want, tolerance)
        rgb = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
        served = loaded.signatures["serving_default"](image_bytes=tf.constant([encode_png(rgb)]))
        x = np.asarray(normalize(tf.constant(rgb[None]), serving.get("normalization")))
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float32)
        check_close("logits", served["logits"].numpy(), logits, tolerance)
        if tuple(served["class_maps"].shape[1:3]) != (40, 56):
            raise RuntimeError(
                "export verification failed: serving_default's class_maps are "
                f"{tuple(served['class_maps'].shape[1:3])}, expected the image size (40, 56)"
            )


register_task(ClassificationTask())
