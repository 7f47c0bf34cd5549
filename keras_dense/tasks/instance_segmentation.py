"""Instance segmentation: a box, a class, a score and a mask per object (Mask R-CNN).

Records carry boxes and one instance mask per box (`image/object/mask`; `keras-dense
convert shapes`, `convert coco` and `convert instances` write them). Training batches are
`detection_dataset(..., instance_masks=True)`; the model's own `train_step` samples RoIs and
computes the RPN, box and mask losses. Evaluation reports COCO box and mask AP
(pycocotools, averaged over IoU 0.50:0.05:0.95, plus AP50 and AP75) and PASCAL VOC box mAP at
IoU 0.5. `predict` draws every instance in its own colour with its box and writes the
detections as JSON. Serving returns the Object Detection API's `detection_boxes`,
`detection_scores`, `detection_classes`, `num_detections` and `detection_masks` (at each
image's size). Class names are object classes: label `i + 1` is `classes[i]`, 0 background.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from keras_dense.data.image_io import encode_png
from keras_dense.data.tfrecord_files import count_records
from keras_dense.evaluation.html_report import detection_report_html
from keras_dense.evaluation.instance_evaluation import evaluate_instances
from keras_dense.prediction.instances import segment_instances, segment_instances_sliced
from keras_dense.prediction.palette import draw_instances
from keras_dense.signatures.instance_signatures import TENSOR_OUTPUTS, instance_signatures
from keras_dense.signatures.memory_budget import pixel_budget, serving_bytes_per_pixel
from keras_dense.tasks.detection import (
    DetectionTask,
    detection_list,
    detector_export_limit,
    verify_region_proposer,
)
from keras_dense.tasks.export_options import DetectorOptions
from keras_dense.tasks.task import EvaluateOptions, PredictOptions, register_task


@dataclasses.dataclass(frozen=True)
class InstanceSegmentationExportOptions(DetectorOptions):
    """A Mask R-CNN's export options (the detections per image are fixed by its graph)."""


class InstanceSegmentationTask(DetectionTask):
    """Instance segmentation (see the module docstring): a `DetectionTask` whose models also
    segment each box; it overrides only what differs (records with instance masks, COCO
    evaluation, the instance outputs and signatures)."""

    name = "instance_segmentation"
    instance_masks = True  # `datasets`: batches with masks, no proposals read
    # Sliced masks run one tile per model call: no --max-memory batches.
    capabilities = dataclasses.replace(DetectionTask.capabilities, tile_batches=False)
    export_options = InstanceSegmentationExportOptions

    def evaluate(self, model, card, pattern, options: EvaluateOptions):
        if options.slice is not None and options.runner == "beam":
            raise ValueError("--slice: sliced evaluation runs locally only; leave --runner out")
        if options.runner == "beam":
            from keras_dense.evaluation.beam_evaluation import evaluate_instances_beam

            return evaluate_instances_beam(
                options.model_path, card, pattern, options.use_07_metric, options.beam_options
            )
        total = count_records(pattern) if options.progress else 0
        return evaluate_instances(
            model,
            card,
            pattern,
            options.use_07_metric,
            progress=options.progress,
            total=total,
            slice_size=options.slice,
            overlap=options.overlap,
            merge=options.merge,
            merge_iou=options.merge_iou,
        )

    def report_lines(self, report):
        lines = [
            f"mask AP = {report['mask_ap']:.4f}, box AP = {report['box_ap']:.4f} "
            f"(COCO, IoU 0.50:0.95) over {report['images']} images",
            f"mask AP50 = {report['mask_ap50']:.4f}, box AP50 = {report['box_ap50']:.4f}, "
            f"VOC box mAP@0.5 = {report['voc_map']:.4f}",
        ]
        if report.get("slice"):
            sliced = report["slice"]
            lines[0] += (
                f" (sliced: {sliced['tile']} px tiles, overlap {sliced['overlap']:g}, "
                f"{sliced['merge']} merge)"
            )
        lines += [f"  {name:>20}: VOC AP {ap:.4f}" for name, ap in report["voc_ap"].items()]
        return lines

    def evaluation_files(self, report, card, title):
        # The detection page over the VOC box scores (COCO's mask and box AP head it).
        page = {
            "map": report["voc_map"],
            "ap": report["voc_ap"],
            "images": report["images"],
            "data": report.get("data", ""),
            "_curves": report.get("_curves"),
        }
        headline = (
            f"COCO mask AP <b>{report['mask_ap']:.4f}</b>, box AP <b>{report['box_ap']:.4f}</b>; "
            "VOC box "
        )
        return {
            "report.html": detection_report_html(page, card["classes"], title, headline).encode()
        }

    def predict_image(self, model, card, rgb, options: PredictOptions, plan: str):
        if options.slice:
            found = segment_instances_sliced(
                model,
                rgb,
                card,
                tile=options.slice,
                overlap=options.overlap,
                score_threshold=options.score_threshold,
                nms_iou=options.merge_iou,
                merge=options.merge,
            )
        else:
            found = segment_instances(model, rgb, card, score_threshold=options.score_threshold)
        names = card["classes"]
        drawn = draw_instances(
            rgb, found["masks"], found["boxes"], found["labels"], found["scores"], names
        )
        instances = [
            {**detection, "mask_pixels": int(np.count_nonzero(mask))}
            for detection, mask in zip(detection_list(found, names), found["masks"])
        ]
        # One PNG of instance ids (0 background, i + 1 the i-th detection, later on top).
        ids = np.zeros(rgb.shape[:2], np.uint16)
        for index, mask in enumerate(found["masks"]):
            ids[mask] = index + 1
        return {
            "_instances.png": encode_png(drawn),
            "_instance_ids.png": encode_png(ids),
            "_instances.json": (json.dumps(instances, indent=2) + "\n").encode(),
        }

    def export_signatures(self, model, card, options: InstanceSegmentationExportOptions):
        # Thresholds apply to the in-graph detection step; the number of detections per
        # image is fixed by the model's graph (its builder's max_detections).
        model.set_detection_options(
            score_threshold=options.score_threshold, nms_iou=options.nms_iou
        )
        max_detections = model.max_detections
        # The model runs on images resized to at most max_size; what grows with the request
        # is the decoded image and the pasted masks: per detection a float32 and a uint8
        # plane, twice (the pasted masks and the padded output).
        per_pixel = serving_bytes_per_pixel(3, 0) + 2 * 5 * max_detections
        budget = pixel_budget(float(per_pixel), options.max_request_memory, options.max_pixels)
        min_size, max_size = options.sizes(card)
        signatures = instance_signatures(
            model,
            card["normalization"],
            min_size=min_size,
            max_size=max_size,
            max_pixels=budget.max_image_pixels,
            max_request_pixels=budget.max_request_pixels,
        )
        return signatures, options.serving(card, max_detections), budget

    def verify_export(self, loaded, model, serving, tolerance):
        verify_region_proposer(loaded, model, TENSOR_OUTPUTS, tolerance)

    def export_unsupported(self, card, output_format, model=None):
        if output_format == "tflite":
            return detector_export_limit(output_format, "instance segmentation models: Mask R-CNN")
        return detector_export_limit(output_format, "instance segmentation models (Mask R-CNN)")


register_task(InstanceSegmentationTask())
