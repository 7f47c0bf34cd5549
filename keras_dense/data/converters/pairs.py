"""Converter for a folder of images and a folder of label masks matched by file stem."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_dense.data.classes import resolve_classes
from keras_dense.data.converters.exif_note import size_mismatch
from keras_dense.data.converters.image_mask_pairs import (
    file_stem,
    pair_images_with_masks,
    refuse_ignore_only,
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
    progress: bool = True,
) -> dict:
    """Converts image/mask pairs into segmentation TFRecords.

    The mask of `images/NAME.ext` is `masks/NAME{mask_suffix}.png`. Masks are single-channel
    (1 to 16-bit grey) or palette PNGs of class ids; `remap` is applied before the checks. A
    mask of only 0 and the ignore label (a binary mask saved as 0/255) is refused: it labels no
    class.

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
        progress: Show a progress bar.

    Returns:
        The manifest.

    Raises:
        BadInputError: Bad or missing inputs (with `on_error="fail"`), or an empty folder.
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

    def make(pair: tuple[str, str]) -> Record:
        image_path, mask_path = pair
        image = read_image_file(image_path)
        mask = table[read_mask_file(mask_path)]
        refuse_ignore_only(mask, ignore_label, mask_path)
        image_labels = None
        if class_from_prefix:
            found = np.unique(mask)
            extra = found[(found != 0) & (found != 1) & (found != ignore_label)]
            if extra.size:
                raise BadInputError(
                    mask_path,
                    f"--class-from-prefix: expected a binary mask (0 background, 1 object, "
                    f"{ignore_label} ignore) after --remap, found the values "
                    f"{extra.tolist()[:10]}",
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

    if names is None:
        names = _infer_class_names(pairs, table, ignore_label)
    if ignore_label < len(names):
        raise ValueError(
            f"ignore_label={ignore_label}: the mask value of class {names[ignore_label]!r}; "
            f"the ignore label must not be a class id (0..{len(names) - 1}): use --remap or "
            "another --ignore-label"
        )
    return write_dataset(
        output,
        pairs,
        make,
        item_name=lambda p: p[0],
        num_shards=num_shards,
        workers=workers,
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
        extra={"classes_inferred": num_classes is None},
    )


def _infer_class_names(pairs, table: np.ndarray, ignore_label: int) -> list[str]:
    """`class_0 ... class_K` where K is the largest non-ignore id in any readable mask."""
    largest = 0
    for _, mask_path in pairs:
        try:
            values = np.unique(table[read_mask_file(mask_path)])
        except BadInputError:
            continue  # reported (or skipped) when the pair itself is converted
        values = values[values != ignore_label]
        if values.size:
            largest = max(largest, int(values.max()))
    return [f"class_{i}" for i in range(largest + 1)]
