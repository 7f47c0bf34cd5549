"""Object detection: boxes, class labels and scores per image (R-CNN, Fast and Faster R-CNN).

Records carry boxes (and optionally proposals, which Fast R-CNN needs and Faster R-CNN does
not read); the model's own `train_step` samples RoIs and computes its loss, so training only
needs the batches. Evaluation reports PASCAL VOC mAP;
serving returns padded boxes, scores and classes; `predict` draws the boxes and writes them
as JSON. Class names are object classes only: label `i + 1` is `classes[i]`, 0 background.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import keras
import numpy as np
import tensorflow as tf

from keras_dense.data import BadInputError, detection_dataset
from keras_dense.data.class_lists import object_classes
from keras_dense.data.detection_records import (
    DetectionRules,
    check_records,
    leave_out,
    refuse,
    refuse_empty,
)
from keras_dense.data.image_io import encode_png
from keras_dense.detection import proposes_regions
from keras_dense.evaluation.evaluator import evaluate_detection
from keras_dense.evaluation.html_report import detection_report_html
from keras_dense.prediction.inference import detect_objects, detect_objects_sliced
from keras_dense.prediction.palette import draw_boxes
from keras_dense.signatures.detection_signatures import FASTER_RCNN_OUTPUTS, detection_signatures
from keras_dense.signatures.memory_budget import pixel_budget, serving_bytes_per_pixel
from keras_dense.tasks.capabilities import TaskCapabilities
from keras_dense.tasks.detection_config import DetectionData
from keras_dense.tasks.export_options import BatchModeOptions, DetectorOptions, option
from keras_dense.tasks.recipe_config import Recipe, as_recipe
from keras_dense.tasks.recipe_data import (
    check_batch_fits,
    data_classes,
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
from keras_dense.utils.errors import RecipeError


def _check_proposals(report, key: str, recipe: Recipe, read: bool) -> None:
    """Refuses (or, when allowed, warns about) Fast R-CNN records without proposals.

    Args:
        report: The `check_records` report of the shards of recipe key `key`.
        key: `"data.train"` or `"data.validation"`.
        recipe: The recipe.
        read: The model reads proposals (`data.max_proposals` > 0).
    """
    data = recipe.data
    pattern = getattr(data, key.removeprefix("data."))
    missing = sum(report.without_proposals.values()) if read else report.records
    if not missing:
        return
    usable = report.records - len(report.problems)
    where = (
        "data.max_proposals = 0 reads none of their proposals"
        if not read
        else f"{missing} of {usable} records have no region proposals (image/proposal/bbox/*), "
        f"e.g. in {min(report.without_proposals)}"
    )
    consequence = (
        f"{recipe.model.builder} does not propose regions: on those images it would "
        "train on the ground-truth boxes as its only RoIs (no background RoIs), while evaluate "
        "runs selective search"
    )
    if not data.allow_missing_proposals:
        raise BadInputError(
            f"{key} = {pattern!r}",
            f"{where}; {consequence}. Add proposals (keras-dense convert voc ... --proposals "
            "selective_search), train a model that proposes its own (faster_rcnn), or set "
            "data.allow_missing_proposals = true to train so anyway",
        )
    # Library code logs (the CLI shows warnings on stderr); it does not print.
    logging.getLogger(__name__).warning(
        "warning: %s = %r: %s; %s (data.allow_missing_proposals = true)",
        key,
        pattern,
        where,
        consequence,
    )


def check_detection_data(
    recipe: Recipe | dict,
    num_classes: int | None,
    read_proposals: bool,
    instance_masks: bool,
    class_names: list[str] | None = None,
    use_difficult: bool = True,
) -> list[int]:
    """Checks every training and validation record once, before the first step.

    See `keras_dense.data.detection_records` for the rules. Bad training records stop the run
    naming the first (`data.on_error = "fail"`) or are left out with a count
    (`"skip"`); bad validation records always stop it (the validation scores must cover the
    whole set). Training shards without a box that is trained on (the pipeline leaves crowd
    boxes out, and the model difficult ones unless `use_difficult`) are refused. A Fast
    R-CNN / R-CNN model (`read_proposals`) on training or validation records without
    proposals is refused unless `data.allow_missing_proposals`.

    Args:
        recipe: The recipe (a resolved table is parsed).
        num_classes: The model's object classes (labels must be in [1, K]).
        read_proposals: The model takes the records' proposals.
        instance_masks: The model needs one instance mask per box.
        class_names: The run's object classes, compared with the records' class texts.
        use_difficult: The model trains on boxes marked difficult.

    Returns:
        The `record_key` of each training record to leave out.

    Raises:
        BadInputError: A bad record (named), no box at all, or missing proposals.
    """
    recipe = as_recipe(recipe)
    data = recipe.data
    if num_classes is None and class_names:
        num_classes = len(class_names)
    reads = read_proposals and data.max_proposals > 0
    rules = DetectionRules(
        num_classes=num_classes,
        class_names=tuple(class_names) if class_names else None,
        instance_masks=instance_masks,
        proposals=reads,
        max_boxes=data.max_boxes,
        max_proposals=data.max_proposals if reads else None,
        min_size=data.min_size,
        max_size=data.max_size,
    )
    report = check_records(data.train, rules)
    if data.on_error == "skip":
        exclude = leave_out(report, "data.train")
    else:
        refuse(
            report,
            "data.train",
            ' (data.on_error = "skip", e.g. --set data.on_error=skip, leaves bad records out)',
        )
        exclude = []
    left_out = {"crowd": "the training pipeline leaves crowd boxes out"}
    if not use_difficult:
        left_out["difficult"] = "the model does not train on difficult boxes (use_difficult)"
    refuse_empty(report, f"data.train = {data.train!r}", "there is nothing to learn", left_out)
    if read_proposals:
        _check_proposals(report, "data.train", recipe, reads)
    if data.validation:
        validation = check_records(data.validation, rules)
        refuse(
            validation,
            "data.validation",
            " (validation records are never left out: fix or remove them)",
        )
        if read_proposals:
            _check_proposals(validation, "data.validation", recipe, reads)
    return exclude


def detection_datasets(
    recipe: Recipe | dict,
    num_workers: int = 1,
    worker_index: int = 0,
    read_proposals: bool = True,
    instance_masks: bool = False,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    use_difficult: bool = True,
):
    """Training and validation datasets of a detection recipe (dict batches, no targets).

    Every record is checked first (`check_detection_data`); with `data.on_error = "skip"`
    the bad training records are filtered out of the pipeline and the epoch counts only the
    others.

    Args:
        recipe: The recipe (a resolved table is parsed).
        num_workers: Processes in the cluster (see `segmentation_datasets`).
        worker_index: This process's index in the cluster.
        read_proposals: Read the records' proposals (Fast R-CNN); False for a model that
            proposes its own (Faster R-CNN: `max_proposals` 0, records need none).
        instance_masks: Batches also hold each box's instance mask (`instance_masks`, for
            Mask R-CNN).
        num_classes: The model's object classes, for the label check (None: only >= 1).
        class_names: The run's object classes, compared with the records' class texts (None:
            not compared).
        use_difficult: The model trains on boxes marked difficult (else a training set
            whose boxes are all difficult is refused).

    Returns:
        `(train, validation, steps_per_epoch, validation_steps)`.

    Raises:
        BadInputError: A bad record, no box, or missing proposals (see `check_detection_data`).
        RecipeError: Fewer usable records than one batch.
    """
    recipe = as_recipe(recipe)
    data, training = recipe.data, recipe.training
    exclude = check_detection_data(
        recipe, num_classes, read_proposals, instance_masks, class_names, use_difficult
    )
    common = {
        "min_size": data.min_size,
        "max_size": data.max_size,
        "normalization": data.normalization_mode,
        "max_boxes": data.max_boxes,
        "max_proposals": data.max_proposals if read_proposals else 0,
        "cache": data.cache,
        "seed": recipe.seed,
    }
    if instance_masks:
        common["instance_masks"] = True
    batch = training.batch_size
    train = detection_dataset(
        worker_shards(data.train, "data.train", num_workers, worker_index),
        batch,
        training=True,
        flip=data.flip,
        shuffle_buffer=data.shuffle_buffer,
        exclude=exclude,
        **common,
    ).repeat()
    records = check_batch_fits(data.train, batch)  # also with steps_per_epoch set
    usable = records - len(exclude)
    if usable < batch:
        raise RecipeError(
            f"recipe key 'training.batch_size' = {batch} is larger than the {usable} usable "
            f"record(s) of data.train ({len(exclude)} of {records} left out as bad): an epoch "
            "would have no full batch; lower the batch size or fix the records"
        )
    steps = training.steps_per_epoch or usable // batch
    return task_datasets(
        train,
        steps,
        lambda pattern, val_batch: detection_dataset(pattern, val_batch, **common),
        recipe,
        num_workers,
        worker_index,
    )


@dataclasses.dataclass(frozen=True)
class DetectionExportOptions(DetectorOptions, BatchModeOptions):
    """A Fast / Faster R-CNN detector's export options.

    Attributes:
        max_detections: Detections per image (the padded length of the outputs).
    """

    max_detections: int = option(100, "detections per image served", type=int, minimum=1)


def detection_list(found: dict, names: list[str]) -> list[dict]:
    """The JSON-ready detections of one image (`box_yxyx` pixels, score, label, class).

    Args:
        found: `boxes`, `scores` and `labels` of the image (label `i + 1` is `names[i]`).
        names: The model card's object classes.
    """
    return [
        {
            "box_yxyx": [float(v) for v in box],
            "score": float(score),
            "label": int(label),
            "class": names[label - 1] if 0 < label <= len(names) else f"class_{label}",
        }
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"])
    ]


def verify_region_proposer(loaded, model, keys, tolerance: float) -> None:
    """Compares a reloaded `serving_tensor(images, image_shape, scale)` with the model.

    For the models that propose their own regions (Faster and Mask R-CNN), on one random
    64x80 image.

    Args:
        loaded: The reloaded SavedModel.
        model: The in-memory model (`[images, image_shape, scale] -> dict`).
        keys: The outputs compared.
        tolerance: Relative tolerance (`check_close`).

    Raises:
        RuntimeError: An output differs.
    """
    image = np.random.default_rng(0).normal(size=(1, 64, 80, 3)).astype(np.float32)
    shape = np.array([[64, 80]], np.float32)
    scale = np.ones(1, np.float32)
    got = loaded.signatures["serving_tensor"](
        images=tf.constant(image), image_shape=tf.constant(shape), scale=tf.constant(scale)
    )
    want = model([image, shape, scale], training=False)
    for key in keys:
        got_value = got[key].numpy().astype(np.float32)
        check_close(key, got_value, np.asarray(want[key], np.float32), tolerance)


# Why detectors are refused by the checked conversions (measured with keras_dense's Faster and
# Mask R-CNN, TF 2.21, tf2onnx 1.17, OpenVINO 2026.4). `{models}` names the family.
DETECTOR_EXPORT_LIMITS = {
    "tflite": "TFLite export is not supported for {models} takes a variable number of "
    "region proposals per image and runs RoI pooling and per-class NMS, which have no "
    "fixed-shape TFLite form",
    "onnx": "ONNX export is not supported for {models}: its variable number of regions is "
    "pooled in TensorFlow loops that tf2onnx 1.17 does not convert (Faster R-CNN: 'While loop "
    "couldn't find scan output index'; Mask R-CNN: the conversion ran out of memory)",
    "openvino": "OpenVINO export is not supported for {models}: it ends in "
    "CombinedNonMaxSuppression, for which OpenVINO's TensorFlow frontend has no conversion "
    "rule",
}
_SAVEDMODEL_HINT = "; export a SavedModel instead (keras-dense export --format savedmodel)"


def detector_export_limit(output_format: str, models: str) -> str:
    """Why `models` (a detector family, e.g. "detection models: Fast R-CNN") are refused."""
    return DETECTOR_EXPORT_LIMITS[output_format].format(models=models) + _SAVEDMODEL_HINT


# Worst and best validation images shown in `evaluate`'s report.html.
GALLERY_IMAGES = 4


# Dense weights above which a detector's ONNX conversion is refused (see onnx_detector_limit).
MAX_ONNX_DENSE_WEIGHTS = 60_000_000


def onnx_detector_limit(model) -> str | None:
    """Why a detector cannot go to ONNX, or None: Faster R-CNN with RoIAlign converts."""
    from keras_dense.layers.multilevel_roi_pooling import MultiLevelRoIPooling
    from keras_dense.layers.roi_pooling import RoIPooling

    if not proposes_regions(model):
        return (
            "ONNX export of detection models covers Faster R-CNN with RoIAlign; Fast R-CNN "
            "takes external proposals and pools them with RoI max pooling, whose levels are "
            "built in a TensorFlow loop that tf2onnx 1.17 does not convert"
        )
    pools = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (RoIPooling, MultiLevelRoIPooling))
    ]
    weights = sum(
        int(np.prod(layer.kernel.shape))
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Dense)
    )
    if weights > MAX_ONNX_DENSE_WEIGHTS:
        return (
            f"ONNX export of Faster R-CNN: its fc layers hold {weights / 1e6:.0f} M weights, and "
            "VGG16's 4096-unit fc6 (103 M) made tf2onnx 1.17 use over 20 GB here; build it "
            "with fc_units=1024 (as the FPN recipes do)"
        )
    if any(getattr(layer, "mode", "max") == "max" for layer in pools):
        return (
            "ONNX export of Faster R-CNN needs RoIAlign: this model pools with RoI max "
            "pooling, whose levels are built in a TensorFlow loop that tf2onnx 1.17 does not "
            "convert ('While loop couldn't find scan output index'); build it with "
            "roi_mode='align' (as fpn=True recipes do)"
        )
    return None


def _detections(outputs: dict, image_shape, model) -> list[dict]:
    """Per image, every detection `detect` would score (threshold 0, at most 100) from a
    Faster R-CNN's raw outputs."""
    from keras_dense.detection.detect import postprocess_detections, unpad_detections

    found = postprocess_detections(
        outputs["cls_score"],
        outputs["bbox_pred"],
        outputs["proposals"],
        image_shape,
        num_proposals=outputs["num_proposals"],
        score_threshold=0.0,
        box_stds=getattr(model, "box_stds", None) or (0.1, 0.1, 0.2, 0.2),
    )
    return unpad_detections(found)


def box_agreement(got: list[dict], want: list[dict], iou: float = 0.9) -> dict:
    """How well two detectors' outputs agree, image by image.

    A detection agrees when the other side has one of the same class at IoU >= `iou`; the
    agreement is the share of agreeing detections over both sides.

    Returns:
        `{"agreement", "compared" (detections on both sides), "max_abs_diff": 0.0,
        "max_box_diff": the largest coordinate difference, in pixels, between a detection
        and its best match}` (the caller measures the raw outputs' difference).
    """
    from keras_dense.detection.boxes import iou_matrix

    agreeing = compared = 0
    box_diff = 0.0
    for a, b in zip(got, want):
        boxes_a = np.asarray(a["boxes"], np.float32).reshape(-1, 4)
        boxes_b = np.asarray(b["boxes"], np.float32).reshape(-1, 4)
        compared += len(boxes_a) + len(boxes_b)
        if not len(boxes_a) or not len(boxes_b):
            continue
        overlap = np.asarray(iou_matrix(boxes_a, boxes_b)) >= iou
        same = np.asarray(a["labels"]).reshape(-1, 1) == np.asarray(b["labels"]).reshape(1, -1)
        matched = overlap & same
        agreeing += int(matched.any(1).sum() + matched.any(0).sum())
        for row, column in zip(*np.nonzero(matched)):
            box_diff = max(box_diff, float(np.max(np.abs(boxes_a[row] - boxes_b[column]))))
    return {
        # Nothing to compare proves nothing: that fails the check.
        "agreement": agreeing / compared if compared else 0.0,
        "compared": compared,
        "max_abs_diff": 0.0,
        "max_box_diff": box_diff,
    }


def check_tile_memory(options) -> None:
    """Refuses `--max-memory` without `--slice`: detection budgets batches of tiles only."""
    if options.tile_memory is not None and options.slice is None:
        raise ValueError(
            "--max-memory applies to detection with --slice (the memory of one model call "
            "over a batch of tiles); give --slice too, or leave --max-memory out"
        )


class DetectionTask(Task):
    """Object detection (see the module docstring)."""

    name = "detection"
    data_config = DetectionData
    # Records carry an instance mask per box, which the batches hold (Mask R-CNN).
    instance_masks = False
    capabilities = TaskCapabilities(
        voc_ap=True, scored_detections=True, beam_evaluation=True, tile_batches=True
    )
    export_options = DetectionExportOptions
    background_outputs = 1

    def class_names(self, names):
        return object_classes(names)

    def check_recipe(self, recipe):
        if as_recipe(recipe).data.channels != 3:
            raise RecipeError(
                f"recipe key 'data.channels': {self.name.replace('_', ' ')} needs 3-channel images"
            )

    def datasets(self, recipe, model, num_workers, worker_index):
        recipe = as_recipe(recipe)
        class_names = data_classes(recipe.data, self)
        return detection_datasets(
            recipe,
            num_workers,
            worker_index,
            read_proposals=not self.instance_masks and not proposes_regions(model),
            instance_masks=self.instance_masks,
            num_classes=recipe.model.num_classes or len(class_names),
            class_names=class_names,
            use_difficult=getattr(model, "use_difficult", True),
        )

    def compile(self, model, recipe, optimizer, num_classes):
        # The model's train_step samples RoIs and computes its own multi-task loss.
        model.compile(optimizer=optimizer, jit_compile=as_recipe(recipe).training.jit_compile)

    def card_fields(self, recipe):
        data = as_recipe(recipe).data
        return {"min_size": data.min_size, "max_size": data.max_size}

    def evaluate(self, model, card, pattern, options: EvaluateOptions):
        check_tile_memory(options)
        if options.slice is not None and options.runner == "beam":
            raise ValueError("--slice: sliced evaluation runs locally only; leave --runner out")
        if options.runner == "beam":
            from keras_dense.evaluation.beam_evaluation import evaluate_detection_beam

            return evaluate_detection_beam(
                model,
                options.model_path,
                card,
                pattern,
                options.use_07_metric,
                options.beam_options,
            )
        return evaluate_detection(
            model,
            card,
            pattern,
            options.use_07_metric,
            options.slice,
            options.overlap,
            gallery=GALLERY_IMAGES,
            merge=options.merge,
            merge_iou=options.merge_iou,
            tile_memory=options.tile_memory,
        )

    def report_lines(self, report):
        lines = [f"mAP = {report['map']:.4f} over {report['images']} images"]
        if report.get("slice"):
            sliced = report["slice"]
            lines[0] += (
                f" (sliced: {sliced['tile']} px tiles, overlap {sliced['overlap']:g}, "
                f"{sliced.get('merge', 'nms')} merge)"
            )
        lines += [f"  {name:>20}: AP {ap:.4f}" for name, ap in report["ap"].items()]
        return lines

    def evaluation_files(self, report, card, title):
        return {"report.html": detection_report_html(report, card["classes"], title).encode()}

    def predict_image(self, model, card, rgb, options: PredictOptions, plan: str):
        check_tile_memory(options)
        if options.slice:
            found = detect_objects_sliced(
                model,
                rgb,
                card,
                tile=options.slice,
                overlap=options.overlap,
                score_threshold=options.score_threshold,
                merge=options.merge,
                nms_iou=options.merge_iou,
                max_memory=options.tile_memory,
            )
        else:
            found = detect_objects(model, rgb, card, score_threshold=options.score_threshold)
        names = card["classes"]
        drawn = draw_boxes(rgb, found["boxes"], found["labels"], found["scores"], names)
        detections = detection_list(found, names)
        return {
            "_boxes.png": encode_png(drawn),
            "_detections.json": (json.dumps(detections, indent=2) + "\n").encode(),
        }

    def export_signatures(self, model, card, options: DetectionExportOptions):
        min_size, max_size = options.sizes(card)
        # The detector runs on images resized to at most max_size: only decoding grows.
        budget = pixel_budget(
            float(serving_bytes_per_pixel(3, 0)), options.max_request_memory, options.max_pixels
        )
        signatures = detection_signatures(
            model,
            card["normalization"],
            min_size=min_size,
            max_size=max_size,
            score_threshold=options.score_threshold,
            nms_iou=options.nms_iou,
            max_detections=options.max_detections,
            batch_mode=options.batch_mode,
            max_pixels=budget.max_image_pixels,
            max_request_pixels=budget.max_request_pixels,
        )
        return signatures, options.serving(card, options.max_detections), budget

    def verify_export(self, loaded, model, serving, tolerance):
        if proposes_regions(model):  # Faster R-CNN: [images, image_shape, scale] -> dict
            verify_region_proposer(loaded, model, FASTER_RCNN_OUTPUTS, tolerance)
            return
        image = np.random.default_rng(0).normal(size=(1, 64, 80, 3)).astype(np.float32)
        rois = np.array([[[4, 4, 40, 60], [10, 20, 60, 70]]], np.float32)
        got = loaded.signatures["serving_tensor"](images=tf.constant(image), rois=tf.constant(rois))
        want = model([image, rois], training=False)
        for key, value in zip(("cls_score", "bbox_pred"), want):
            check_close(key, got[key].numpy(), np.asarray(value, np.float32), tolerance)

    # Box agreement of a checked ONNX export: Keras's detections matched at IoU >= 0.9.
    export_min_agreement = 0.99

    def export_unsupported(self, card, output_format, model=None):
        if output_format == "onnx" and model is not None:
            reason = onnx_detector_limit(model)
            return None if reason is None else reason + _SAVEDMODEL_HINT
        if output_format == "tflite":
            return detector_export_limit(output_format, "detection models: Fast R-CNN")
        return detector_export_limit(output_format, "detection models (Fast and Faster R-CNN)")

    def export_input_size(self, card):
        side = card.get("min_size")
        return None if side is None else (int(side), int(side))

    def export_inputs(self, model, images):
        count, height, width = images.shape[:3]
        shape = np.tile(np.array([[height, width]], np.float32), (count, 1))
        return [images, shape, np.ones(count, np.float32)]

    def export_specs(self, model, images):
        return [
            images,
            tf.TensorSpec((None, 2), tf.float32, name="image_shape"),
            tf.TensorSpec((None,), tf.float32, name="scale"),
        ]

    def export_agreement(self, model, got, want, inputs):
        names = sorted(model.output)  # the flattened order of the output dict
        got = dict(zip(names, got))
        want = dict(zip(names, want))
        # Every scored detection (threshold 0, up to 100 per image): an image without
        # confident detections still compares boxes and classes.
        return box_agreement(
            _detections(got, inputs[1], model), _detections(want, inputs[1], model)
        )

    def export_report_fields(self, model, card):
        return {
            "postprocess": {
                "function": "keras_dense.detection.detect.postprocess_detections",
                "box_stds": list(getattr(model, "box_stds", (0.1, 0.1, 0.2, 0.2))),
                "score_threshold": 0.05,
                "nms_iou": 0.3,
                "max_detections": 100,
                "inputs": "images: normalised float32 (card's normalization), resized so that "
                "the shorter side is min_size and the longer at most max_size (a square at "
                "the default size: export with --dynamic for other shapes); image_shape: "
                "float32 (N, 2) valid height and width; scale: float32 (N,) the resize factor",
                "boxes": "yxyx in the pixels of `images`: divide by `scale` for the original's",
            }
        }


register_task(DetectionTask())
