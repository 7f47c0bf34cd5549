"""COCO box and mask average precision through pycocotools (the official COCO evaluation).

Detections and ground truth are passed per image as NumPy arrays and turned into in-memory
COCO data sets: boxes `[ymin, xmin, ymax, xmax]` in continuous pixels become COCO's
`[x, y, width, height]`; masks are run-length encoded with `pycocotools.mask`. The reported
numbers are COCOeval's twelve summary statistics (AP averaged over IoU 0.50:0.05:0.95,
AP at 0.5 and 0.75, by object size, and the average recalls), for `"bbox"` and, where masks
are given, `"segm"`. Ground-truth areas (the small / medium / large ranges) are the mask
areas when masks are given, as in COCO's own annotations, else the box areas.

pycocotools is an optional dependency (the `coco` extra); it is imported when an evaluation
runs, with a clear error when it is missing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

# COCOeval.stats, in order.
SUMMARY_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:  # pragma: no cover - optional dependency
        raise ImportError(
            "COCO box / mask AP needs pycocotools: pip install 'keras-dense[coco]'"
        ) from None
    return COCO, COCOeval, mask_utils


def _xywh(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack(
        [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1
    )


def _encode(mask_utils, masks) -> list[dict]:
    """RLEs of (n, H, W) masks (bool, or probabilities cut at 0.5)."""
    masks = np.asarray(masks)
    if masks.dtype != bool:
        masks = masks >= 0.5
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _check_image(index: int, entry: dict, what: str, need_masks: bool) -> int:
    count = len(np.asarray(entry["labels"]).reshape(-1))
    boxes = np.asarray(entry["boxes"]).reshape(-1, 4)
    if len(boxes) != count:
        raise ValueError(f"{what}[{index}]: {len(boxes)} boxes but {count} labels")
    if need_masks:
        if "masks" not in entry:
            raise ValueError(f"{what}[{index}]: no 'masks' (needed for the mask AP)")
        masks = np.asarray(entry["masks"])
        if masks.ndim != 3 or masks.shape[0] != count:
            raise ValueError(
                f"{what}[{index}]: masks {masks.shape}, expected ({count}, height, width)"
            )
    return count


def coco_metrics(
    detections: Sequence[dict],
    ground_truths: Sequence[dict],
    iou_types: Sequence[str] = ("bbox", "segm"),
) -> dict[str, dict[str, float]]:
    """COCO box (`"bbox"`) and mask (`"segm"`) AP of per-image detections.

    Args:
        detections: One dict per image with `"boxes"` (n, 4) yxyx continuous pixels,
            `"scores"` (n,), `"labels"` (n,) class ids and, for `"segm"`, `"masks"`
            (n, H, W) bool or probabilities (cut at 0.5) in image coordinates.
        ground_truths: One dict per image (same order) with `"boxes"` (m, 4), `"labels"`
            (m,), for `"segm"` `"masks"` (m, H, W), and optionally `"crowd"` (m,) bool
            (crowd regions are matched without counting, as in COCO).
        iou_types: `"bbox"` and / or `"segm"`.

    Returns:
        `{iou_type: {key: value}}` with the keys of `SUMMARY_KEYS`; NaN where COCOeval has
        no value (-1), e.g. without any ground truth.

    Raises:
        ValueError: The lists differ in length, an entry is inconsistent or lacks masks, or
            an IoU type is unknown.
        ImportError: pycocotools is not installed.
    """
    unknown = sorted(set(iou_types) - {"bbox", "segm"})
    if unknown:
        raise ValueError(f"iou_types: unknown {unknown}, expected 'bbox' and / or 'segm'")
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"detections and ground_truths: expected one entry per image in both, got "
            f"{len(detections)} and {len(ground_truths)}"
        )
    COCO, COCOeval, mask_utils = _pycocotools()
    results = {}
    for iou_type in iou_types:
        segm = iou_type == "segm"
        images, annotations, found = [], [], []
        classes = set()
        for index, (det, gt) in enumerate(zip(detections, ground_truths)):
            count = _check_image(index, gt, "ground_truths", segm)
            _check_image(index, det, "detections", segm)
            image = {"id": index + 1}
            labels = np.asarray(gt["labels"]).reshape(-1).astype(int)
            boxes = _xywh(gt["boxes"])
            crowd = np.asarray(gt.get("crowd", np.zeros(count, bool))).reshape(-1).astype(bool)
            rles = None
            if "masks" in gt and np.asarray(gt["masks"]).ndim == 3:
                image["height"], image["width"] = np.asarray(gt["masks"]).shape[1:]
                rles = _encode(mask_utils, gt["masks"])
            images.append(image)
            for j in range(count):
                area = float(mask_utils.area(rles[j])) if rles else float(boxes[j, 2] * boxes[j, 3])
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": int(labels[j]),
                    "bbox": boxes[j].tolist(),
                    "area": area,
                    "iscrowd": int(crowd[j]),
                }
                if segm:
                    ann["segmentation"] = rles[j]
                annotations.append(ann)
                classes.add(int(labels[j]))
            det_labels = np.asarray(det["labels"]).reshape(-1).astype(int)
            det_scores = np.asarray(det["scores"], np.float64).reshape(-1)
            det_rles = _encode(mask_utils, det["masks"]) if segm else None
            det_boxes = _xywh(det["boxes"])
            for j in range(len(det_labels)):
                result = {
                    "image_id": index + 1,
                    "category_id": int(det_labels[j]),
                    "score": float(det_scores[j]),
                }
                if segm:
                    result["segmentation"] = det_rles[j]
                else:
                    result["bbox"] = det_boxes[j].tolist()
                found.append(result)
                classes.add(int(det_labels[j]))
        results[iou_type] = _evaluate(
            COCO, COCOeval, images, annotations, found, sorted(classes), iou_type
        )
    return results


def _evaluate(COCO, COCOeval, images, annotations, found, classes, iou_type) -> dict:
    if not annotations:
        return {key: float("nan") for key in SUMMARY_KEYS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in classes],
        }
        truth.createIndex()
        predicted = truth.loadRes(found) if found else COCO()
        if not found:
            predicted.dataset = {"images": images, "annotations": [], "categories": []}
            predicted.createIndex()
        evaluator = COCOeval(truth, predicted, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        key: (float(value) if value >= 0 else float("nan"))
        for key, value in zip(SUMMARY_KEYS, evaluator.stats)
    }
