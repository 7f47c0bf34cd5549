"""Evaluating a saved model on TFRecord shards: segmentation scores or VOC mAP."""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from keras_dense.crf import dense_crf
from keras_dense.crf.card_parameters import card_crf_parameters
from keras_dense.data import BadInputError, read_examples
from keras_dense.data.class_lists import check_card_classes, object_classes
from keras_dense.data.detection_records import check_evaluation_records
from keras_dense.data.segmentation_records import check_segmentation_masks
from keras_dense.data.tfrecord_files import check_files, count_records, resolve_files
from keras_dense.detection.sliced import slice_settings
from keras_dense.evaluation.boundary_iou import boundary_counts, boundary_scores
from keras_dense.evaluation.gallery import Gallery
from keras_dense.evaluation.html_report import detection_strip, gallery_strip
from keras_dense.evaluation.image_detection_score import GALLERY_SCORE_THRESHOLD, image_f1
from keras_dense.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores
from keras_dense.prediction.inference import (
    DEFAULT_MAX_MEMORY,
    detect_objects,
    detect_objects_sliced,
    plan_prediction,
    segment,
    segment_probabilities,
    softmax,
)
from keras_dense.utils.progress import Progress
from keras_dense.utils.tta import TestTimeAugmentation


def checked_examples(card: dict, pattern: str):
    """Yields `(record name, example)` of every record, checking its mask against the card.

    After the shards are verified against their manifest (`check_files`), every record's
    class mask header is checked once per shard (`check_segmentation_masks`, cached): a
    palette, low-bit or 16-bit PNG, which the decoder reads silently wrong, is refused before
    any record is scored.

    Raises:
        BadInputError: A record has no mask, a mask that is not an 8-bit greyscale PNG (naming
            its shard, index and source_id), a mask of another size than its image, or
            labels outside the card's classes that are not the ignore label.
    """
    check_files(resolve_files(pattern))  # the manifest first, as read_examples checks it
    check_segmentation_masks(pattern, f"--data {pattern}")
    for example in read_examples(pattern):
        record = f"record {example['source_id']!r} in {pattern}"
        check_segmentation_example(card, record, example)
        yield record, example


def check_segmentation_example(card: dict, record: str, example: dict) -> None:
    """Raises `BadInputError` naming `record` when its mask cannot be scored against the card.

    Raises:
        BadInputError: No mask, a mask of another size than its image, or labels outside the
            card's classes that are not the ignore label.
    """
    classes = card["classes"]
    if "mask" not in example:
        raise BadInputError(record, "has no segmentation mask")
    mask = example["mask"]
    if mask.shape[:2] != example["image"].shape[:2]:
        raise BadInputError(
            record,
            f"mask {mask.shape[1]}x{mask.shape[0]} and image "
            f"{example['image'].shape[1]}x{example['image'].shape[0]} differ in size "
            "(width x height); re-convert the data",
        )
    outside = int(np.count_nonzero((mask >= len(classes)) & (mask != card["ignore_label"])))
    if outside:
        raise BadInputError(
            record,
            f"{outside} mask pixel(s) hold labels outside [0, {len(classes)}) that are not "
            f"the ignore label {card['ignore_label']}: the shards do not use the model's "
            "class list",
        )


class ImageScore(NamedTuple):
    """One image's contribution to a segmentation evaluation.

    Attributes:
        confusion: (C, C) confusion matrix.
        boundary: (2, C) boundary IoU counts (`boundary_iou.boundary_counts`).
        plan_tiled: Whether the memory plan tiled an image it was not told to tile.
        predicted: (H, W) predicted classes.
    """

    confusion: np.ndarray
    boundary: np.ndarray
    plan_tiled: bool
    predicted: np.ndarray


def _image_mean_iou(cm: np.ndarray) -> float:
    """Mean IoU of one image over the classes in its truth or prediction."""
    true_positives = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - true_positives
    present = union > 0
    return float(np.mean(true_positives[present] / union[present])) if present.any() else 1.0


def example_confusion(
    model,
    card: dict,
    record: str,
    example: dict,
    crf_parameters: dict | None,
    tiled: bool | None,
    tta: TestTimeAugmentation | None,
    max_memory: int,
) -> ImageScore:
    """One record's confusion matrix and boundary counts, predicted as `evaluate_segmentation`
    predicts it.

    Args:
        model: The segmenter.
        card: Its model card.
        record: The record's name for errors.
        example: The decoded record (`image`, `mask`).
        crf_parameters: Dense-CRF parameters (None: no CRF).
        tiled: Force (True) or forbid (False) overlap-tile inference; None: automatic.
        tta: Test-time augmentation, or None.
        max_memory: Bytes one image's prediction may take.

    Returns:
        The `ImageScore`.
    """
    classes = card["classes"]
    image_tiled = _planned_tiling(model, card, record, example["image"], max_memory, tta, tiled)
    if tta is not None and tta.enabled:
        scores = segment_probabilities(model, example["image"], card, tta, tiled=image_tiled)
    else:
        scores = segment(model, example["image"], card, tiled=image_tiled)
    if scores.shape[-1] != len(classes):
        raise ValueError(
            f"the model predicts {scores.shape[-1]} classes, its card names {len(classes)}"
        )
    if crf_parameters is not None:
        probs = scores if tta is not None and tta.enabled else softmax(scores)
        scores = dense_crf(probs, example["image"], **crf_parameters)
    predicted = np.argmax(scores, axis=-1)
    cm = confusion_matrix(example["mask"], predicted, len(classes), card["ignore_label"])
    boundary = boundary_counts(example["mask"], predicted, len(classes), card["ignore_label"])
    return ImageScore(cm, boundary, image_tiled is True and tiled is not True, predicted)


def evaluate_segmentation(
    model,
    card: dict,
    pattern: str,
    crf: bool = False,
    tiled: bool | None = None,
    progress: bool = False,
    tta: TestTimeAugmentation | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    gallery: int = 0,
) -> tuple[np.ndarray, dict]:
    """Confusion matrix and scores of a segmenter over every record matching `pattern`.

    Each image is predicted at its full size (tile by tile with `tiled`, or automatically for
    large images and valid-padding models), optionally refined by the dense CRF, and
    compared with its mask, skipping the card's ignore label. Before an image is predicted,
    its memory is planned as `predict` plans it (`keras_dense.prediction.inference.
    plan_prediction`, with the test-time augmentation): an image whose single pass would
    exceed `max_memory` is predicted tile by tile, and one that does not fit even tiled stops
    the evaluation, naming the record.

    Args:
        model: The segmenter.
        card: Its model card.
        pattern: Glob pattern of TFRecord shards with masks.
        crf: Refine the softmax with `keras_dense.crf.dense_crf` before the argmax, with
            the parameters of the card's `"crf"` (see `keras_dense.crf.card_parameters`;
            DeepLab's defaults for those it does not set).
        tiled: Force (True) or forbid (False) overlap-tile inference; None: automatic.
        progress: Draw a progress bar on stderr (on a terminal only).
        tta: Test-time augmentation: the argmax (or the CRF) takes the softmax averaged over
            its flips and scales (`keras_dense.prediction.inference.segment_probabilities`);
            None or disabled: the plain prediction.
        max_memory: Bytes one image's prediction may take (`--max-memory`).
        gallery: Keep this many worst and best images (by their own mean IoU) as gallery
            strips for the HTML report, under the scores' `"gallery"` (0: none).

    Returns:
        `(confusion matrix, scores)`, scores as in `segmentation_scores` plus `boundary_iou`
        and `per_class_boundary_iou` (`boundary_iou.boundary_scores`), `images`,
        `max_memory` and `tiled_images` (the images the memory plan had tiled).

    Raises:
        ValueError: A record has no mask, or the model's class count differs from the card.
        BadInputError: An image does not fit `max_memory` even tile by tile, or needs tiling
            while `tiled` is False.
    """
    classes = card["classes"]
    check_card_classes(pattern, card)
    cm = np.zeros((len(classes), len(classes)), np.int64)
    boundary = np.zeros((2, len(classes)), np.int64)
    count = 0
    crf_parameters = card_crf_parameters(card) if crf else None
    bar = Progress(count_records(pattern) if progress else 0, "evaluating", progress)
    tiled_images = 0
    kept = Gallery(gallery)
    for record, example in checked_examples(card, pattern):
        score = example_confusion(
            model, card, record, example, crf_parameters, tiled, tta, max_memory
        )
        cm += score.confusion
        boundary += score.boundary
        tiled_images += int(score.plan_tiled)
        kept.add(
            record,
            _image_mean_iou(score.confusion),
            lambda e=example, s=score: gallery_strip(
                e["image"], e["mask"], s.predicted, card["ignore_label"]
            ),
        )
        count += 1
        bar.update()
    bar.close()
    result = segmentation_scores(cm, classes)
    result.update(boundary_scores(boundary, classes))
    result.update(images=count, max_memory=int(max_memory), tiled_images=tiled_images)
    if gallery:
        result["gallery"] = kept.items()
    return cm, result


def _planned_tiling(model, card: dict, record: str, image, max_memory, tta, tiled):
    """`tiled` for one image after its memory plan: True when one pass does not fit.

    Raises:
        BadInputError: The image does not fit even tiled, or needs tiling that `tiled`
            (False) forbids; the record is named.
    """
    height, width = image.shape[:2]
    try:
        plan = plan_prediction(model, card, height, width, max_memory, tta)
    except ValueError as err:
        raise BadInputError(record, str(err)) from None
    if plan != "tiled":
        return tiled
    if tiled is False:
        raise BadInputError(
            record, "exceeds the --max-memory budget in one pass and tiling is turned off"
        )
    return True


def evaluate_detection(
    model,
    card: dict,
    pattern: str,
    use_07_metric: bool = False,
    slice_size: int | None = None,
    overlap: float = 0.2,
    gallery: int = 0,
    merge: str = "nms",
    merge_iou: float = 0.5,
    tile_memory: int | None = None,
) -> dict:
    """VOC mean average precision of a Fast or Faster R-CNN model over the matching records.

    Fast R-CNN uses the proposals stored in the records (images without any get selective
    search); Faster R-CNN proposes its own. With `slice_size`, every image goes through
    sliced detection (`keras_dense.prediction.inference.detect_objects_sliced`; Fast R-CNN
    then runs selective search per tile, the stored proposals being those of whole images).

    Args:
        model: The Fast R-CNN model.
        card: Its model card.
        pattern: Glob pattern of TFRecord shards with boxes.
        use_07_metric: VOC2007's 11-point AP instead of the area under the curve.
        slice_size: Tile size of sliced detection, or None for whole images.
        overlap: Fraction of a tile shared by adjacent tiles (with `slice_size`).
        gallery: Keep this many worst and best images by their own F1
            (`image_detection_score.image_f1`) as strips for the HTML report, under
            `"_gallery"` (0: none).
        merge: How sliced detections are merged (`detect_sliced`'s `merge`).
        merge_iou: The merge's IoU (`detect_sliced`'s `nms_iou`).
        tile_memory: With `slice_size`, the memory of one model call over a batch of tiles
            (`detect_objects_sliced`'s `max_memory`; None: one tile per call).

    Returns:
        `{"map", "ap" (class name -> AP), "images", "_curves"}` (`detection_report`), and
        `"_gallery"` with `gallery`.

    Raises:
        BadInputError: A record is unusable or has labels outside the card's classes, or the
            shards hold no record or no box (`detection_records.check_evaluation_records`).
    """
    check_detection_data(model, card, pattern)
    detections, truths = [], []
    kept = Gallery(gallery)
    for example in read_examples(pattern):
        found, truth = example_detections(
            model, card, example, slice_size, overlap, merge, merge_iou, tile_memory
        )
        detections.append(found)
        truths.append(truth)
        kept.add(
            f"record {example['source_id']!r}",
            image_f1(found, truth),
            lambda e=example, f=found, t=truth: detection_strip(
                e["image"], t, f, card["classes"], GALLERY_SCORE_THRESHOLD
            ),
        )
    report = detection_report(card, detections, truths, use_07_metric)
    if gallery:
        report["_gallery"] = kept.items()
        report["_gallery_threshold"] = GALLERY_SCORE_THRESHOLD
    if slice_size is not None:
        report["slice"] = slice_settings(slice_size, overlap, merge, merge_iou)
    return report


def check_detection_data(model, card: dict, pattern: str) -> None:
    """The checks `evaluate_detection` makes before any record is scored (see there)."""
    from keras_dense.detection import proposes_regions

    check_card_classes(pattern, card, object_classes)
    reads_proposals = not proposes_regions(model)
    report = check_evaluation_records(
        pattern,
        card["classes"],
        card.get("min_size", 600),
        card.get("max_size", 1000),
        proposals=reads_proposals,
    )
    missing = sum(report.without_proposals.values())
    if reads_proposals and missing:
        print(
            f"note: {missing} of {report.records} records of {pattern} have no region "
            "proposals: selective search proposes regions for them",
            file=sys.stderr,
        )


def example_detections(
    model,
    card: dict,
    example: dict,
    slice_size: int | None = None,
    overlap: float = 0.2,
    merge: str = "nms",
    merge_iou: float = 0.5,
    tile_memory: int | None = None,
) -> tuple[dict, dict]:
    """One record's detections (sliced with `slice_size`) and ground truth, in image pixels."""
    height, width = example["image"].shape[:2]
    size = np.array([height, width, height, width], np.float32)
    if slice_size is not None:
        found = detect_objects_sliced(
            model,
            example["image"],
            card,
            slice_size,
            overlap,
            nms_iou=merge_iou,
            merge=merge,
            max_memory=tile_memory,
        )
    else:
        proposals = example.get("proposals")
        proposals = proposals * size if proposals is not None and len(proposals) else None
        found = detect_objects(model, example["image"], card, proposals)
    truth = {
        "boxes": example.get("boxes", np.zeros((0, 4), np.float32)) * size,
        "labels": example.get("labels", np.zeros(0, np.int64)),
        "difficult": example.get("difficult", np.zeros(0, bool)),
    }
    return found, truth


def detection_report(card: dict, detections: list, truths: list, use_07_metric: bool) -> dict:
    """`{"map", "ap" (class name -> AP), "images", "_curves" (class name -> precision-recall
    curve)}` of detections and truths in record order."""
    from keras_dense.evaluation.voc_map import named_results, voc_detection_map

    result = voc_detection_map(detections, truths, use_07_metric=use_07_metric, curves=True)
    ap, curves = named_results(result, card["classes"])
    return {
        "map": float(result["map"]),
        "ap": ap,
        "images": len(truths),
        "_curves": curves,  # for report.html only ("_" keys stay out of metrics.json)
    }
