"""`evaluate --runner beam`: segmentation scored on an Apache Beam pipeline.

The shards are checked on the driver as the local evaluation checks them (manifest, mask
headers, the card's classes). Each worker loads the model once (`DoFn.setup`), decodes and
checks the records it is given, predicts each image exactly as `evaluate_segmentation` does
(`example_confusion`: memory plan, tiling, test-time augmentation, dense CRF) and emits its
integer confusion matrix; a CombineFn sums them. Integer sums do not depend on the order the
workers finish in, so the scores equal the local evaluation's to the last digit.
"""

from __future__ import annotations

import json
import os
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
from keras_dense.evaluation.evaluator import check_segmentation_example, example_confusion
from keras_dense.evaluation.segmentation_metrics import segmentation_scores
from keras_dense.utils.tta import TestTimeAugmentation


def shard_records(shard: str):
    """`(index, serialized record)` of every record of one shard file."""
    for index, data in enumerate(tf.data.TFRecordDataset(shard).as_numpy_iterator()):
        yield shard, index, data


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
            shard, index, data = element
            example = decode_record(data, f"{shard} record {index}")
            record = f"record {example['source_id']!r} in {pattern}"
            check_segmentation_example(card, record, example)
            cm, plan_tiled = example_confusion(
                self.model, card, record, example, self.crf_parameters, tiled, tta, max_memory
            )
            yield cm, 1, int(plan_tiled)

    return ScoreRecords()


def _sum_scores(parts):
    """Sums `(confusion, images, tiled)` triples (Beam's CombineGlobally callable)."""
    total = None
    for cm, images, tiled in parts:
        total = (
            (cm.copy(), images, tiled)
            if total is None
            else (
                total[0] + cm,
                total[1] + images,
                total[2] + tiled,
            )
        )
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
    options, runner = pipeline_options(beam_options)
    result_path = os.path.join(
        os.path.dirname(os.path.abspath(model_path)), f".evaluate-{uuid.uuid4().hex[:12]}.json"
    )

    def write(total):
        cm, images, tiled_images = total or (np.zeros((len(classes),) * 2, np.int64), 0, 0)
        with tf.io.gfile.GFile(result_path, "w") as f:
            f.write(json.dumps({"cm": cm.tolist(), "images": images, "tiled": tiled_images}))

    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            _ = (
                pipeline
                | "Shards" >> beam.Create(shards)
                | "Records" >> beam.FlatMap(shard_records)
                | "Spread" >> beam.Reshuffle()
                | "Score"
                >> beam.ParDo(_score_fn(model_path, card, pattern, crf, tiled, tta, max_memory))
                | "Sum" >> beam.CombineGlobally(_sum_scores)
                | "Write" >> beam.Map(write)
            )
        with tf.io.gfile.GFile(result_path, "r") as f:
            summary = json.loads(f.read())
    finally:
        if tf.io.gfile.exists(result_path):
            tf.io.gfile.remove(result_path)
    cm = np.asarray(summary["cm"], np.int64).reshape(len(classes), len(classes))
    result = segmentation_scores(cm, classes)
    result.update(
        images=summary["images"], max_memory=int(max_memory), tiled_images=summary["tiled"]
    )
    return cm, result
