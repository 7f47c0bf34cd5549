"""Evaluating an instance segmenter (Mask R-CNN) on TFRecord shards with instance masks."""

from __future__ import annotations

import numpy as np

from keras_dense.data import BadInputError, read_examples
from keras_dense.data.class_lists import check_card_classes, object_classes
from keras_dense.data.detection_records import check_evaluation_records
from keras_dense.detection.sliced import slice_settings
from keras_dense.evaluation.coco_map import coco_metrics
from keras_dense.evaluation.voc_map import named_results, voc_detection_map
from keras_dense.prediction.instances import segment_instances, segment_instances_sliced
from keras_dense.utils.progress import Progress


def instance_ground_truth(example: dict, record: str) -> dict:
    """Boxes (pixels), labels, instance masks and crowd flags of one `read_examples` record.

    Raises:
        BadInputError: The record has boxes but no instance masks.
    """
    height, width = example["image"].shape[:2]
    size = np.array([height, width, height, width], np.float32)
    boxes = example.get("boxes", np.zeros((0, 4), np.float32)) * size
    labels = example.get("labels", np.zeros(0, np.int64))
    masks = example.get("instance_masks", np.zeros((0, height, width), np.uint8))
    if len(labels) and len(masks) != len(labels):
        raise BadInputError(
            record,
            f"has {len(labels)} boxes but {len(masks)} instance masks (image/object/mask); "
            "instance segmentation needs one mask per box (convert with instance masks)",
        )
    crowd = example.get("is_crowd", np.zeros(len(labels), bool))
    return {"boxes": boxes, "labels": labels, "masks": masks.astype(bool), "crowd": crowd}


def evaluate_instances(
    model,
    card: dict,
    pattern: str,
    use_07_metric: bool = False,
    progress: bool = False,
    total: int = 0,
    slice_size: int | None = None,
    overlap: float = 0.2,
    merge: str = "nms",
    merge_iou: float = 0.5,
) -> dict:
    """COCO box and mask AP and VOC mAP at IoU 0.5 of a Mask R-CNN model.

    Every record matching `pattern` is segmented at its full size (`segment_instances`,
    every detection the model keeps, score threshold 0), then compared with its boxes and
    instance masks: COCOeval's summary for boxes and masks (`coco_metrics`) and the VOC
    devkit's box mAP at 0.5 (crowd boxes count as VOC "difficult": neither hit nor miss).

    Args:
        model: The Mask R-CNN model.
        card: Its model card.
        pattern: Glob pattern of shards with boxes and instance masks.
        use_07_metric: VOC2007 11-point AP for the VOC number.
        progress: Draw a progress bar on stderr (on a terminal only).
        total: Number of records, for the progress bar.
        slice_size: Segment every image on tiles of this many pixels
            (`segment_instances_sliced`), or None for whole images.
        overlap: Fraction of a tile shared by adjacent tiles (with `slice_size`).
        merge: How the tiles' detections merge (`detect_sliced`'s `merge`).
        merge_iou: The merge's IoU (`detect_sliced`'s `nms_iou`).

    Returns:
        `{"box_ap", "mask_ap", "box_ap50", "mask_ap50", "box_ap75", "mask_ap75", "voc_map",
        "voc_ap" (class name -> AP), "coco" ({"bbox": ..., "segm": ...}), "images"}`.

    Raises:
        BadInputError: A record is unusable (e.g. lacks instance masks, or has labels outside
            the card's classes), its classes differ from the card, or the shards hold no
            record or no box (`detection_records.check_evaluation_records`).
    """
    check_instance_data(card, pattern)
    detections, truths = [], []
    bar = Progress(total, "evaluating", progress)
    for example in read_examples(pattern):
        found, truth = example_instances(
            model, card, pattern, example, slice_size, overlap, merge, merge_iou
        )
        detections.append(found)
        truths.append(truth)
        bar.update()
    bar.close()
    report = instance_report(card, detections, truths, use_07_metric)
    if slice_size is not None:
        report["slice"] = slice_settings(slice_size, overlap, merge, merge_iou)
    return report


def check_instance_data(card: dict, pattern: str) -> None:
    """The checks `evaluate_instances` makes before any record is scored (see there)."""
    check_card_classes(pattern, card, object_classes)
    check_evaluation_records(
        pattern,
        card["classes"],
        card.get("min_size", 800),
        card.get("max_size", 1333),
        instance_masks=True,
    )


def example_instances(
    model,
    card: dict,
    pattern: str,
    example: dict,
    slice_size: int | None = None,
    overlap: float = 0.2,
    merge: str = "nms",
    merge_iou: float = 0.5,
) -> tuple[dict, dict]:
    """One record's instances (every detection kept, threshold 0; sliced with `slice_size`)
    and its ground truth."""
    record = f"record {example.get('source_id', '')!r} in {pattern}"
    truth = instance_ground_truth(example, record)
    if slice_size is None:
        return segment_instances(model, example["image"], card, score_threshold=0.0), truth
    found = segment_instances_sliced(
        model,
        example["image"],
        card,
        slice_size,
        overlap,
        score_threshold=0.0,
        nms_iou=merge_iou,
        merge=merge,
    )
    return found, truth


def instance_report(card: dict, detections: list, truths: list, use_07_metric: bool) -> dict:
    """`evaluate_instances`'s report from detections and truths in record order."""
    coco = coco_metrics(detections, truths)
    voc = voc_detection_map(
        detections,
        [{"boxes": t["boxes"], "labels": t["labels"], "difficult": t["crowd"]} for t in truths],
        use_07_metric=use_07_metric,
        curves=True,
    )
    voc_ap, curves = named_results(voc, card["classes"])
    return {
        "box_ap": coco["bbox"]["AP"],
        "mask_ap": coco["segm"]["AP"],
        "box_ap50": coco["bbox"]["AP50"],
        "mask_ap50": coco["segm"]["AP50"],
        "box_ap75": coco["bbox"]["AP75"],
        "mask_ap75": coco["segm"]["AP75"],
        "voc_map": float(voc["map"]),
        "voc_ap": voc_ap,
        "coco": coco,
        "images": len(truths),
        "_curves": curves,  # for report.html only ("_" keys stay out of metrics.json)
    }
