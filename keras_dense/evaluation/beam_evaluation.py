"""`evaluate --runner beam`: segmentation, detection and instances scored on Apache Beam.

The shards are checked on the driver as the local evaluation checks them (manifest, mask
headers or boxes, the card's classes). Each worker loads the model once (`DoFn.setup`) and
decodes the records it is given.
- Segmentation: each image is predicted exactly as `evaluate_segmentation` does
  (`example_confusion`: memory plan, tiling, test-time augmentation, dense CRF) and its integer
  confusion matrix is emitted; a combine sums them. Integer sums do not depend on the order
  the workers finish in, so the scores equal the local evaluation's to the last digit.
- Detection and instance segmentation: each image's detections and ground truth
  (`example_detections`, `example_instances`) are gathered, put back in record order (shard,
  then index) and scored as locally (VOC AP; COCO box and mask AP).
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_dense.crf.card_parameters import card_crf_parameters
from keras_dense.data.beam_options import pipeline_options, require_beam
from keras_dense.data.class_lists import check_card_classes
from keras_dense.data.reader import decode_record
from keras_dense.data.segmentation_records import check_segmentation_masks
from keras_dense.data.tfrecord_files import check_files, resolve_files
from keras_dense.evaluation.boundary_iou import boundary_scores
from keras_dense.evaluation.evaluator import (
    check_detection_data,
    check_segmentation_example,
    detection_report,
    example_confusion,
    example_detections,
)
from keras_dense.evaluation.instance_evaluation import (
    check_instance_data,
    example_instances,
    instance_report,
)
from keras_dense.evaluation.segmentation_metrics import segmentation_scores
from keras_dense.utils.tta import TestTimeAugmentation


def shard_records(numbered_shard: tuple[int, str]):
    """`(shard number, shard, index, serialized record)` of every record of one shard file."""
    number, shard = numbered_shard
    for index, data in enumerate(tf.data.TFRecordDataset(shard).as_numpy_iterator()):
        yield number, shard, index, data


def _result_path(model_path: str) -> str:
    """Where the pipeline leaves its result for the driver (beside the model, shared)."""
    folder = os.path.dirname(os.path.abspath(model_path))
    return os.path.join(folder, f".evaluate-{uuid.uuid4().hex[:12]}.pickle")


def _score_records(shards: Sequence[str], score, combine, beam_options, model_path: str):
    """Runs `score` (a DoFn) over every record of `shards` and `combine` (a combining
    PTransform) over its outputs; returns the combined value."""
    beam = require_beam()
    options, runner = pipeline_options(beam_options)
    result_path = _result_path(model_path)

    def write(value):
        with tf.io.gfile.GFile(result_path, "wb") as f:
            f.write(pickle.dumps(value))

    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            _ = (
                pipeline
                | "Shards" >> beam.Create(list(enumerate(shards)))
                | "Records" >> beam.FlatMap(shard_records)
                | "Spread" >> beam.Reshuffle()
                | "Score" >> beam.ParDo(score)
                | "Combine" >> combine
                | "Write" >> beam.Map(write)
            )
        with tf.io.gfile.GFile(result_path, "rb") as f:
            return pickle.loads(f.read())  # written by this run's own pipeline
    finally:
        if tf.io.gfile.exists(result_path):
            tf.io.gfile.remove(result_path)


def _score_fn(model_path, card, pattern, crf, tiled, tta, max_memory):
    """The DoFn class scoring records (defined here so that Beam is imported lazily)."""
    beam = require_beam()

    class ScoreRecords(beam.DoFn):
        """Loads the model once per worker; yields one `(confusion, images, tiled)` per record."""

        def setup(self):
            from keras_dense.prediction.inference import load_keras_model

            self.model = load_keras_model(model_path)
            self.crf_parameters = card_crf_parameters(card) if crf else None

        def process(self, element):
            _, shard, index, data = element
            example = decode_record(data, f"{shard} record {index}")
            record = f"record {example['source_id']!r} in {pattern}"
            check_segmentation_example(card, record, example)
            score = example_confusion(
                self.model, card, record, example, self.crf_parameters, tiled, tta, max_memory
            )
            yield score.confusion, score.boundary, 1, int(score.plan_tiled)

    return ScoreRecords()


def _sum_scores(parts):
    """Sums `(confusion, boundary counts, images, tiled)` tuples (Beam's CombineGlobally
    callable)."""
    total = None
    for part in parts:
        part = tuple(np.copy(p) if isinstance(p, np.ndarray) else p for p in part)
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return total


def evaluate_segmentation_beam(
    model_path: str,
    card: dict,
    pattern: str,
    crf: bool = False,
    tiled: bool | None = None,
    tta: TestTimeAugmentation | None = None,
    max_memory: int = 0,
    beam_options: Sequence[str] = (),
) -> tuple[np.ndarray, dict]:
    """`evaluate_segmentation` on a Beam pipeline; same arguments (the model by path), result.

    Args:
        model_path: The `.keras` model each worker loads.
        card: Its model card.
        pattern: Glob pattern of TFRecord shards with masks.
        crf: Refine with the dense CRF (the card's parameters).
        tiled: Force (True) or forbid (False) overlap-tile inference; None: automatic.
        tta: Test-time augmentation, or None.
        max_memory: Bytes one image's prediction may take.
        beam_options: `KEY=VALUE` pipeline options.

    Returns:
        `(confusion matrix, scores)` as `evaluate_segmentation` returns them.
    """
    beam = require_beam()
    classes = card["classes"]
    check_card_classes(pattern, card)
    shards = resolve_files(pattern)
    check_files(shards)
    check_segmentation_masks(pattern, f"--data {pattern}")
    score = _score_fn(model_path, card, pattern, crf, tiled, tta, max_memory)
    combine = beam.CombineGlobally(_sum_scores)
    total = _score_records(shards, score, combine, beam_options, model_path)
    empty = (np.zeros((len(classes),) * 2, np.int64), np.zeros((2, len(classes)), np.int64), 0, 0)
    cm, boundary, images, tiled_images = total or empty
    result = segmentation_scores(cm, classes)
    result.update(boundary_scores(boundary, classes))
    result.update(images=images, max_memory=int(max_memory), tiled_images=tiled_images)
    return cm, result


def _detect_fn(model_path, card, pattern, instances: bool):
    """The DoFn class detecting objects (or instances) in records (Beam imported lazily)."""
    beam = require_beam()

    class DetectRecords(beam.DoFn):
        """Loads the model once per worker; yields `((shard number, index), found, truth)`."""

        def setup(self):
            from keras_dense.prediction.inference import load_keras_model

            self.model = load_keras_model(model_path)

        def process(self, element):
            number, shard, index, data = element
            example = decode_record(data, f"{shard} record {index}")
            if instances:
                found, truth = example_instances(self.model, card, pattern, example)
            else:
                found, truth = example_detections(self.model, card, example)
            yield (number, index), found, truth

    return DetectRecords()


def _gathered(shards, detect, beam_options, model_path) -> tuple[list, list]:
    """Detections and truths of every record, back in record order (shard, then index)."""
    beam = require_beam()
    gathered = _score_records(shards, detect, beam.combiners.ToList(), beam_options, model_path)
    gathered = sorted(gathered, key=lambda r: r[0])
    return [found for _, found, _ in gathered], [truth for _, _, truth in gathered]


def evaluate_instances_beam(
    model_path: str, card: dict, pattern: str, use_07_metric: bool, beam_options=()
) -> dict:
    """`evaluate_instances` (COCO box and mask AP, VOC mAP) on a Beam pipeline: same report."""
    check_instance_data(card, pattern)
    detect = _detect_fn(model_path, card, pattern, instances=True)
    detections, truths = _gathered(resolve_files(pattern), detect, beam_options, model_path)
    return instance_report(card, detections, truths, use_07_metric)


def evaluate_detection_beam(
    model, model_path: str, card: dict, pattern: str, use_07_metric: bool, beam_options=()
) -> dict:
    """`evaluate_detection` on a Beam pipeline: the same report.

    Args:
        model: The loaded model (the driver's checks ask whether it proposes regions).
        model_path: The `.keras` model each worker loads.
        card: Its model card.
        pattern: Glob pattern of TFRecord shards with boxes.
        use_07_metric: VOC2007's 11-point AP.
        beam_options: `KEY=VALUE` pipeline options.
    """
    check_detection_data(model, card, pattern)
    detect = _detect_fn(model_path, card, pattern, instances=False)
    detections, truths = _gathered(resolve_files(pattern), detect, beam_options, model_path)
    return detection_report(card, detections, truths, use_07_metric)
