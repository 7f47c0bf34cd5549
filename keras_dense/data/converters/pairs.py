"""Converter for a folder of images and a folder of label masks matched by file stem."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from keras_dense.data.classes import resolve_classes
from keras_dense.data.converters.exif_note import size_mismatch
from keras_dense.data.converters.image_mask_pairs import (
    file_stem,
    only_background_and_ignore,
    pair_images_with_masks,
    refuse_ignore_only_set,
    values_present,
)
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import encode_png, read_image_file, read_mask_file
from keras_dense.data.masks import check_mask, parse_remap, remap_lookup
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset


def prefix_class(stem: str) -> str | None:
    """The class named by a file stem's prefix, Oxford-IIIT Pet style: `Bengal_12` -> `Bengal`.

    Returns:
        The stem up to its last underscore, or None when it has no non-empty prefix.
    """
    head, sep, _ = stem.rpartition("_")
    return head if sep and head else None


def convert_pairs(
    images: str,
    masks: str,
    output: str,
    num_shards: int = 1,
    classes: Sequence[str] | str | None = None,
    classes_file: str | None = None,
    remap: Sequence[str] | None = None,
    ignore_label: int = 255,
    mask_suffix: str = "",
    split_file: str | None = None,
    class_from_prefix: bool = False,
    on_error: str = "fail",
    workers: int = 1,
    runner: str = "local",
    beam_options: Sequence[str] = (),
    progress: bool = True,
) -> dict:
    """Converts image/mask pairs into segmentation TFRecords.

    The mask of `images/NAME.ext` is `masks/NAME{mask_suffix}.png`. Masks are single-channel
    (1 to 16-bit grey) or palette PNGs of class ids; `remap` is applied before the checks. A set
    in which no mask holds a class id other than 0, only 0 and the ignore label (binary masks
    saved as 0/255), is refused: it labels no class. Masks of only 0 and the ignore label in a
    set with classes (tiles with no object and a no-data border) are converted, counted in the
    manifest's `masks_only_background_and_ignore` and named in a warning.

    With `class_from_prefix`, each image's class is named by its file name up to the last
    underscore (`Bengal_12.jpg` -> `Bengal`, the Oxford-IIIT Pet convention), the masks must
    be binary after `remap` (0 background, 1 object, or the ignore label), and the class list
    is `background` then the prefixes in sorted order: the object pixels of an image get its
    class's id and the record's `image/class/label` is that id (an image-level label for the
    classification task; e.g. the breed of a pet, with the trimap for evaluation).

    Args:
        images: Folder of images.
        masks: Folder of masks.
        output: `DIR/NAME` of the shards and manifest.
        num_shards: Number of shards.
        classes: Class names (`"a,b,c"` or a list); index = class id. Without classes (or a
            classes file) the names become `class_0 ... class_K` with K the largest id found,
            and values are not checked against a class list.
        classes_file: File with one class name per line.
        remap: `SRC:DST` pairs, e.g. `11:255` (void → ignore) or `255:1` (binarise).
        ignore_label: The ignore value kept in masks, in [0, 255] and not a class id.
        mask_suffix: Suffix after the stem in mask names (e.g. `_mask`).
        split_file: Optional file of stems to convert (first column of each line).
        class_from_prefix: Class per image from its file-name prefix (see above); not with
            `classes` / `classes_file`.
        on_error: `"fail"` or `"skip"`.
        workers: Encoding threads.
        runner: `"local"` (threads) or `"beam"` (an Apache Beam pipeline writing the same
            shards; see `keras_dense.data.beam_writer`).
        beam_options: `KEY=VALUE` Beam pipeline options (`--beam-option`).
        progress: Show a progress bar.

    Returns:
        The manifest.

    Raises:
        BadInputError: Bad or missing inputs (with `on_error="fail"`), an empty folder, or a
            set in which no mask holds a class.
        ValueError: Bad arguments (an ignore label outside [0, 255] or equal to a class id).
    """
    if not 0 <= ignore_label <= 255:
        raise ValueError(
            f"ignore_label={ignore_label}: expected an integer in [0, 255] (masks are 8-bit)"
        )
    if class_from_prefix and (classes is not None or classes_file is not None):
        raise ValueError(
            "class_from_prefix names the classes from the file names: do not also give "
            "classes or classes_file"
        )
    names = resolve_classes(classes, classes_file)
    mapping = parse_remap(remap)
    table = remap_lookup(mapping)
    pairs, skipped = pair_images_with_masks(images, masks, mask_suffix, split_file)
    prefix_ids: dict[str, int] = {}
    if class_from_prefix:
        for path, _ in pairs:
            if prefix_class(file_stem(path)) is None:
                raise BadInputError(
                    path,
                    "--class-from-prefix: the file name has no class prefix (expected "
                    "CLASS_ID.ext, e.g. Bengal_12.jpg)",
                )
        prefixes = sorted({prefix_class(file_stem(path)) for path, _ in pairs})
        prefix_ids = {name: i for i, name in enumerate(prefixes, start=1)}
        names = ["background", *prefixes]
    num_classes = len(names) if names is not None else None
    if names is not None:
        _refuse_ignore_label_of_a_class(names, ignore_label)
    # Masks are read until one holds a class (every one when the classes are inferred).
    scan = _scan_masks(pairs, table, ignore_label, 2 if class_from_prefix else num_classes)
    if names is None:
        names = [f"class_{i}" for i in range(scan.largest + 1)]
        _refuse_ignore_label_of_a_class(names, ignore_label)
    if not scan.found_class and scan.ignore_only:
        refuse_ignore_only_set(scan.ignore_only, scan.num_read, ignore_label)
    # Filled while the records are made; the writer reads `extra` once all are written.
    extra = {"classes_inferred": num_classes is None, "masks_only_background_and_ignore": 0}
    no_object: list[str] = []
    lock = threading.Lock()

    def make(pair: tuple[str, str]) -> Record:
        image_path, mask_path = pair
        image = read_image_file(image_path)
        mask = table[read_mask_file(mask_path)]
        present = values_present(mask)
        image_labels = None
        if class_from_prefix:
            found = np.flatnonzero(present)
            unexpected = found[(found != 0) & (found != 1) & (found != ignore_label)]
            if unexpected.size:
                raise BadInputError(
                    mask_path,
                    f"--class-from-prefix: expected a binary mask (0 background, 1 object, "
                    f"{ignore_label} ignore) after --remap, found the values "
                    f"{unexpected.tolist()[:10]}",
                )
            class_id = prefix_ids[prefix_class(file_stem(image_path))]
            mask = np.where(mask == 1, class_id, mask).astype(mask.dtype)
            image_labels = np.asarray([class_id], np.int64)
        shape = image.rgb.shape[:2]
        if mask.shape != shape and mask.shape == shape[::-1] and image.orientation >= 5:
            said = (mask.shape[1], mask.shape[0])
            raise BadInputError(
                mask_path, size_mismatch("the mask is", said, shape, image.orientation)
            )
        check_mask(mask, shape, num_classes, ignore_label, mask_path)
        if only_background_and_ignore(present, ignore_label):
            with lock:
                extra["masks_only_background_and_ignore"] += 1
                no_object.append(mask_path)
        return Record(
            source_id=file_stem(image_path),
            image_bytes=image.data,
            image_format=image.format,
            height=image.rgb.shape[0],
            width=image.rgb.shape[1],
            channels=3,
            mask_png=encode_png(mask),
            orientation=image.orientation,
            image_labels=image_labels,
        )

    manifest = write_dataset(
        output,
        pairs,
        make,
        item_name=lambda p: p[0],
        num_shards=num_shards,
        workers=workers,
        runner=runner,
        beam_options=beam_options,
        on_error=on_error,
        classes=names,
        ignore_label=ignore_label,
        task="segmentation",
        arguments={
            "converter": "pairs",
            "images": images,
            "masks": masks,
            "num_shards": num_shards,
            "classes": classes,
            "classes_file": classes_file,
            "remap": list(remap or []),
            "ignore_label": ignore_label,
            "mask_suffix": mask_suffix,
            "split_file": split_file,
            "class_from_prefix": bool(class_from_prefix),
            "on_error": on_error,
        },
        skipped=skipped,
        progress=progress,
        extra=extra,
    )
    if no_object:
        listed = ", ".join(os.path.basename(p) for p in sorted(no_object)[:3])
        more = f" and {len(no_object) - 3} more" if len(no_object) > 3 else ""
        warnings.warn(
            f"{masks}: {len(no_object)} of the {manifest['num_images']} masks hold only 0 and "
            f"the ignore label {ignore_label}, no object ({listed}{more}): converted, their "
            f"{ignore_label} pixels ignored (manifest: masks_only_background_and_ignore). If "
            f"{ignore_label} marks objects, use --remap {ignore_label}:1",
            stacklevel=2,
        )
    return manifest


def _refuse_ignore_label_of_a_class(names: Sequence[str], ignore_label: int) -> None:
    """The ignore label must not be a class id."""
    if ignore_label < len(names):
        raise ValueError(
            f"ignore_label={ignore_label}: the mask value of class {names[ignore_label]!r}; "
            f"the ignore label must not be a class id (0..{len(names) - 1}): use --remap or "
            "another --ignore-label"
        )


@dataclass
class _MaskScan:
    """What `_scan_masks` found.

    Attributes:
        found_class: Some mask holds a class id other than 0.
        largest: The largest non-ignore value of the masks read.
        ignore_only: The masks read that hold only 0 and the ignore label.
        num_read: The number of readable masks read.
    """

    found_class: bool = False
    largest: int = 0
    ignore_only: list[str] = field(default_factory=list)
    num_read: int = 0


def _scan_masks(pairs, table: np.ndarray, ignore_label: int, num_ids: int | None) -> _MaskScan:
    """Reads the masks (after `table`) until one holds a class id, or all with `num_ids` None.

    A set with classes usually stops at its first mask, so the masks are decoded about once;
    every mask is read only when the class list is inferred (its largest id is needed) or when
    no mask holds a class (the set is then refused).

    Args:
        pairs: `(image, mask)` paths.
        table: The `--remap` lookup table.
        ignore_label: The ignore value.
        num_ids: Class ids are 1..num_ids-1; None: every value but 0 and the ignore label,
            and every mask is read.

    Returns:
        The scan. Unreadable masks are passed over: they are reported (or skipped) when their
        pair is converted.
    """
    scan = _MaskScan()
    for _, mask_path in pairs:
        try:
            present = values_present(table[read_mask_file(mask_path)])
        except BadInputError:
            continue
        scan.num_read += 1
        if only_background_and_ignore(present, ignore_label):
            scan.ignore_only.append(mask_path)
        present[ignore_label] = False
        ids = np.flatnonzero(present)
        scan.largest = max(scan.largest, int(ids.max()) if ids.size else 0)
        scan.found_class |= bool(((ids > 0) & (ids < (num_ids or 256))).any())
        if scan.found_class and num_ids is not None:
            break
    return scan
