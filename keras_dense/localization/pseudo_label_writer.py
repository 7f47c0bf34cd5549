"""Writes segmentation shards whose masks are a classifier's pseudo-labels."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_dense.data.classification_pipeline import (
    decode_optional_mask,
    mask_offset,
    record_labels,
)
from keras_dense.data.decode import decode_image
from keras_dense.data.image_io import encode_png, sniff_format
from keras_dense.data.records_dataset import records_dataset
from keras_dense.data.schema import Record, parse_serialized
from keras_dense.data.tfrecord_files import resolve_files
from keras_dense.data.writer import refuse_overlap, write_dataset
from keras_dense.localization.card_keys import DEFAULT_BACKGROUND_THRESHOLD
from keras_dense.localization.maps import class_maps
from keras_dense.localization.pseudo_labels import (
    check_threshold,
    crf_pseudo_label_masks,
    pseudo_label_masks,
    pseudo_label_probabilities,
)
from keras_dense.localization.record_checks import check_classifier_records
from keras_dense.utils.normalization import normalize


class _StreamedRecords:
    """The serialized records of shards, read while iterated; their count known beforehand."""

    def __init__(self, pattern, count: int):
        self.pattern = pattern
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return records_dataset(self.pattern, False).as_numpy_iterator()


def write_pseudo_labels(
    model: keras.Model,
    pattern,
    output: str,
    classes,
    normalization: str | None,
    threshold: float = DEFAULT_BACKGROUND_THRESHOLD,
    crf: bool = False,
    crf_parameters: dict | None = None,
    provenance: dict | None = None,
    ignore_label: int = 255,
    num_shards: int = 1,
    progress: bool = True,
    max_memory: int | None = None,
) -> dict:
    """Writes segmentation shards whose masks are a classifier's pseudo-labels.

    Every record of `pattern` is read (any shards the classification task reads: its image
    labels come from its mask, boxes or `image/class/label`), its class maps computed at the
    image's size, and `pseudo_label_masks` (or, with `crf`, `crf_pseudo_label_masks`) written
    as its mask beside the original encoded image. The class list is background + `classes`.

    Args:
        model: A `keras_dense.apps.wsl_classifier`.
        pattern: Input shards.
        output: `DIR/NAME` of the new shards (`keras_dense.data.writer.write_dataset`).
        classes: The classifier's class names (without background).
        normalization: The classifier's input normalisation.
        threshold: Background threshold (fraction of each labelled class's peak).
        crf: Refine with the dense CRF.
        crf_parameters: `dense_crf` keyword arguments (None: DeepLab's defaults).
        provenance: Stored in the manifest's `arguments` (model path, data pattern, ...).
        ignore_label: The input masks' ignore label (when deriving labels from masks).
        num_shards: Output shards.
        progress: Show a progress bar.
        max_memory: Bytes one image's class maps may take (None: not checked).

    Every record is checked first (`check_classifier_records`), and the records are then read
    as they are written (never all held in memory).

    Returns:
        The manifest.

    Raises:
        keras_dense.data.BadInputError: A bad record (named), no records, or an image over
            `max_memory`.
        ValueError: The output would write onto an input shard.
    """
    threshold = check_threshold(threshold)
    inputs = resolve_files(pattern)
    refuse_overlap(output, num_shards, inputs)  # before reading: never onto its own input
    classes = list(classes)
    offset = mask_offset(pattern)
    report = check_classifier_records(model, pattern, classes, offset, ignore_label, max_memory)
    serialized = _StreamedRecords(pattern, report.records)

    def make(item) -> Record:
        parsed = parse_serialized(tf.constant(item))
        image = decode_image(parsed["image_bytes"], 3)
        height, width = int(image.shape[0]), int(image.shape[1])
        mask = decode_optional_mask(parsed)
        labels = record_labels(
            parsed, mask, height, width, len(classes), offset, ignore_label
        ).numpy()[None]
        rgb = image.numpy()[None]
        maps = class_maps(model, np.asarray(normalize(tf.constant(rgb), normalization)))
        if crf:
            probabilities = pseudo_label_probabilities(maps, labels, threshold)
            pseudo = crf_pseudo_label_masks(probabilities, rgb, labels, **(crf_parameters or {}))
        else:
            pseudo = pseudo_label_masks(maps, labels, threshold)
        data = parsed["image_bytes"].numpy()
        return Record(
            source_id=parsed["source_id"].numpy().decode(),
            image_bytes=data,
            image_format=sniff_format(data) or "jpeg",
            height=height,
            width=width,
            mask_png=encode_png(pseudo[0]),
        )

    return write_dataset(
        output,
        serialized,
        make,
        item_name=lambda item: "record",
        num_shards=num_shards,
        classes=["background", *classes],
        ignore_label=255,
        task="segmentation",
        arguments={
            "pseudo_label": {
                **(provenance or {}),
                "data": pattern if isinstance(pattern, str) else list(pattern),
                "background_threshold": threshold,
                "crf": bool(crf),
                "crf_parameters": dict(crf_parameters or {}) if crf else None,
            }
        },
        progress=progress,
        read_from=inputs,
    )
