"""Object detection: boxes, class labels and scores per image (R-CNN, Fast and Faster R-CNN).

Records carry boxes (and optionally proposals, which Fast R-CNN needs and Faster R-CNN does
not read); the model's own `train_step` samples RoIs and computes its loss, so training only
needs the batches. Evaluation reports PASCAL VOC mAP;
serving returns padded boxes, scores and classes; `predict` draws the boxes and writes them
as JSON. Class names are object classes only: label `i + 1` is `classes[i]`, 0 background.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from keras_dense.data import detection_dataset
from keras_dense.data.class_lists import object_classes
from keras_dense.data.image_io import encode_png
from keras_dense.detection import proposes_regions
from keras_dense.evaluation.evaluator import evaluate_detection
from keras_dense.prediction.inference import detect_objects
from keras_dense.prediction.palette import draw_boxes
from keras_dense.signatures.detection_signatures import FASTER_RCNN_OUTPUTS, detection_signatures
from keras_dense.signatures.memory_budget import pixel_budget, serving_bytes_per_pixel
from keras_dense.tasks.recipe_data import (
    check_batch_fits,
    no_auto_shard,
    normalization_mode,
    validation_dataset,
    worker_shards,
)
from keras_dense.tasks.task import (
    EvaluateOptions,
    ExportOptions,
    PredictOptions,
    Task,
    check_close,
    register_task,
)
from keras_dense.utils.errors import RecipeError


def detection_datasets(
    recipe: dict,
    num_workers: int = 1,
    worker_index: int = 0,
    read_proposals: bool = True,
    instance_masks: bool = False,
):
    """Training and validation datasets of a detection recipe (dict batches, no targets).

    Args:
        recipe: The resolved recipe.
        num_workers: Processes in the cluster (see `segmentation_datasets`).
        worker_index: This process's index in the cluster.
        read_proposals: Read the records' proposals (Fast R-CNN); False for a model that
            proposes its own (Faster R-CNN: `max_proposals` 0, records need none).
        instance_masks: Batches also hold each box's instance mask (`instance_masks`, for
            Mask R-CNN).

    Returns:
        `(train, validation, steps_per_epoch, validation_steps)`.
    """
    data, training = recipe["data"], recipe["training"]
    common = {
        "min_size": data["min_size"],
        "max_size": data["max_size"],
        "normalization": normalization_mode(data),
        "max_boxes": data["max_boxes"],
        "max_proposals": data["max_proposals"] if read_proposals else 0,
        "cache": data["cache"],
        "seed": recipe["seed"],
    }
    if instance_masks:
        common["instance_masks"] = True
    batch = training["batch_size"]
    train = detection_dataset(
        worker_shards(data["train"], "data.train", num_workers, worker_index),
        batch,
        training=True,
        flip=data["flip"],
        shuffle_buffer=data["shuffle_buffer"],
        **common,
    ).repeat()
    records = check_batch_fits(data["train"], batch)  # also with steps_per_epoch set
    steps = training["steps_per_epoch"] or records // batch
    validation, validation_steps = validation_dataset(
        lambda pattern, val_batch: detection_dataset(pattern, val_batch, **common),
        recipe,
        num_workers,
        worker_index,
    )
    if num_workers > 1:
        train = no_auto_shard(train)
    return train, validation, steps, validation_steps


class DetectionTask(Task):
    """Object detection (see the module docstring)."""

    name = "detection"
    builders = ("fast_rcnn", "rcnn", "faster_rcnn")
    background_outputs = 1

    def class_names(self, names):
        return object_classes(names)

    def check_recipe(self, recipe):
        if recipe["data"]["channels"] != 3:
            raise RecipeError("recipe key 'data.channels': detection needs 3-channel images")

    def datasets(self, recipe, model, num_workers, worker_index):
        return detection_datasets(
            recipe, num_workers, worker_index, read_proposals=not proposes_regions(model)
        )

    def compile(self, model, recipe, optimizer, num_classes):
        # The model's train_step samples RoIs and computes its own multi-task loss.
        model.compile(optimizer=optimizer, jit_compile=recipe["training"]["jit_compile"])

    def card_fields(self, recipe):
        data = recipe["data"]
        return {"min_size": data["min_size"], "max_size": data["max_size"]}

    def evaluate(self, model, card, pattern, options: EvaluateOptions):
        if options.crf:
            raise ValueError("--crf applies to segmentation models only")
        if options.tta.enabled:
            raise ValueError("--tta and --scales apply to segmentation models only")
        return evaluate_detection(model, card, pattern, options.use_07_metric)

    def report_lines(self, report):
        lines = [f"mAP = {report['map']:.4f} over {report['images']} images"]
        lines += [f"  {name:>20}: AP {ap:.4f}" for name, ap in report["ap"].items()]
        return lines

    def predict_image(self, model, card, rgb, options: PredictOptions, plan: str):
        if options.tta.enabled:
            raise ValueError("--tta and --scales apply to segmentation models only")
        if options.crf:
            raise ValueError("--crf applies to segmentation models only")
        found = detect_objects(model, rgb, card, score_threshold=options.score_threshold)
        names = card["classes"]
        drawn = draw_boxes(rgb, found["boxes"], found["labels"], found["scores"], names)
        detections = [
            {
                "box_yxyx": [float(v) for v in box],
                "score": float(score),
                "label": int(label),
                "class": names[label - 1] if 0 < label <= len(names) else f"class_{label}",
            }
            for box, score, label in zip(found["boxes"], found["scores"], found["labels"])
        ]
        return {
            "_boxes.png": encode_png(drawn),
            "_detections.json": (json.dumps(detections, indent=2) + "\n").encode(),
        }

    def export_signatures(self, model, card, options: ExportOptions):
        if options.tta.enabled:
            raise ValueError("--tta and --scales apply to segmentation models only")
        # The detector runs on images resized to at most max_size: only decoding grows.
        budget = pixel_budget(
            float(serving_bytes_per_pixel(3, 0)), options.max_request_memory, options.max_pixels
        )
        signatures = detection_signatures(
            model,
            card["normalization"],
            min_size=options.min_size,
            max_size=options.max_size,
            score_threshold=options.score_threshold,
            nms_iou=options.nms_iou,
            max_detections=options.max_detections,
            batch_mode=options.batch_mode,
            max_pixels=budget.max_image_pixels,
            max_request_pixels=budget.max_request_pixels,
        )
        serving = {
            "min_size": options.min_size,
            "max_size": options.max_size,
            "nms_iou": options.nms_iou,
            "score_threshold": options.score_threshold,
            "max_detections": options.max_detections,
        }
        return signatures, serving, budget

    def verify_export(self, loaded, model, serving, tolerance):
        rng = np.random.default_rng(0)
        image = rng.normal(size=(1, 64, 80, 3)).astype(np.float32)
        if proposes_regions(model):  # Faster R-CNN: [images, image_shape, scale] -> dict
            shape = np.array([[64, 80]], np.float32)
            scale = np.ones(1, np.float32)
            got = loaded.signatures["serving_tensor"](
                images=tf.constant(image), image_shape=tf.constant(shape), scale=tf.constant(scale)
            )
            want = model([image, shape, scale], training=False)
            for key in FASTER_RCNN_OUTPUTS:
                check_close(
                    key,
                    got[key].numpy().astype(np.float32),
                    np.asarray(want[key], np.float32),
                    tolerance,
                )
            return
        rois = np.array([[[4, 4, 40, 60], [10, 20, 60, 70]]], np.float32)
        got = loaded.signatures["serving_tensor"](images=tf.constant(image), rois=tf.constant(rois))
        want = model([image, rois], training=False)
        for key, value in zip(("cls_score", "bbox_pred"), want):
            check_close(key, got[key].numpy(), np.asarray(value, np.float32), tolerance)

    def tflite_unsupported(self, card):
        return (
            "TFLite export is not supported for detection models: Fast R-CNN takes a variable "
            "number of region proposals per image and runs RoI pooling and per-class NMS, "
            "which have no fixed-shape TFLite form; export a SavedModel instead (keras-dense "
            "export --format savedmodel)"
        )


register_task(DetectionTask())
