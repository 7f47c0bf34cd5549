"""Converter for COCO instance annotations (boxes, instance masks, optionally semantic masks).

Category ids are mapped to contiguous labels 1..K in increasing id order. Crowd annotations
(`iscrowd=1`) are recorded with `image/object/is_crowd=1`; the input pipelines leave them out
of training targets, and in semantic masks their pixels get the ignore label.

Each object's `segmentation` (polygons, RLE or uncompressed RLE) is rasterised by pycocotools
at the image's size into its instance mask (`image/object/mask`, 0/1 PNG, in box order; crowd
objects keep theirs). Boxes are COCO's `bbox`, clipped to the image (see
`coco_segmentation.outside_margin`). A file where no annotation has a `segmentation`, or only
empty ones (`[]`, the box exports of Roboflow and CVAT), gives records without instance masks.

The file is read and checked by `coco_index.load_coco` (unique ids, resolved references;
Roboflow's super-category, used by no annotation, left out with a warning), segmentations by
`coco_segmentation` (well-formed polygons and RLEs, a mask inside its box) before pycocotools
rasterises them. `source_id` is the file name without its extension, subfolders kept.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from keras_dense.data.converters.coco_index import load_coco
from keras_dense.data.converters.coco_segmentation import (
    has_segmentation,
    mask_box_problem,
    outside_margin,
    rasterise,
)
from keras_dense.data.converters.exif_note import size_mismatch
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import encode_png, read_image_file
from keras_dense.data.schema import Record
from keras_dense.data.storage import is_file, is_folder
from keras_dense.data.writer import write_dataset


def _box_problem(bbox, label_of: dict, ann: dict, width: int, height: int) -> str | None:
    """What is wrong with an annotation's class, box or crowd flag, or None when usable."""
    if ann.get("category_id") not in label_of:
        return (
            f"field 'category_id' is {ann.get('category_id')!r}, which is not an id listed "
            f"in 'categories' {sorted(label_of)}"
        )
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        return f"field 'bbox' is {bbox!r}: expected [x, y, width, height] numbers"
    if not all(np.isfinite(bbox)):
        return f"field 'bbox' is {bbox!r}: expected finite numbers"
    x, y, w, h = bbox
    for size, name in ((w, "width"), (h, "height")):
        if size < 0:
            return f"negative {name} {size:g} in field 'bbox' {bbox} ([x, y, width, height])"
    if w == 0 or h == 0:
        return f"box of zero area {bbox}"
    mx, my = outside_margin(width), outside_margin(height)
    if x < -mx or y < -my or x + w > width + mx or y + h > height + my:
        return (
            f"box {bbox} (x,y,w,h) reaches further outside the {width}x{height} image than "
            f"the {mx:g} px (x) and {my:g} px (y) that are clipped"
        )
    if min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0):
        return f"box {bbox} (x,y,w,h) lies wholly outside the {width}x{height} image"
    crowd = ann.get("iscrowd", 0)
    if not isinstance(crowd, (int, float)) or crowd not in (0, 1):
        return f"field 'iscrowd' is {crowd!r}: expected 0 or 1"
    return None


def _image_size_problem(info: dict) -> str | None:
    """A `width` or `height` of an image entry that is not a whole number of pixels."""
    for key in ("width", "height"):
        value = info.get(key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != int(value):
            return f"field {key!r} is {value!r}: expected a whole number of pixels"
    return None


def _check_semantic(num_classes: int, ignore_label: int) -> None:
    """8-bit semantic masks hold 0 (background), labels 1..K and the ignore label."""
    if not 0 <= ignore_label <= 255:
        raise ValueError(f"ignore_label={ignore_label}: expected an integer in [0, 255]")
    if num_classes >= ignore_label:
        raise ValueError(
            f"{num_classes} categories: semantic masks hold labels 1..{num_classes}, which must "
            f"stay below the ignore label {ignore_label} (8-bit masks: a label equal to the "
            "ignore label would be ignored, one above 255 would wrap around). Leave out "
            "--semantic-masks"
        )


def convert_coco(
    annotations: str,
    images: str,
    output: str,
    semantic_masks: bool = False,
    instance_masks: bool | None = None,
    num_shards: int = 1,
    ignore_label: int = 255,
    on_error: str = "fail",
    workers: int = 1,
    runner: str = "local",
    beam_options: Sequence[str] = (),
    progress: bool = True,
) -> dict:
    """Converts a COCO instances JSON and its image folder into TFRecords.

    Args:
        annotations: The `instances_*.json` file.
        images: Folder with the images named by each entry's `file_name`.
        output: `DIR/NAME` of the shards and manifest.
        semantic_masks: Also write a semantic mask (class id per pixel, 0 background; later
            annotations paint over earlier ones; crowd regions get `ignore_label`).
        instance_masks: Write each object's mask (`image/object/mask`). None (default):
            when any annotation of the file has a non-empty `segmentation` (box exports of
            Roboflow and CVAT write `[]`); then one without it is rejected like any bad field.
        num_shards: Number of shards.
        ignore_label: Mask value of crowd regions (semantic masks; in [0, 255], above every
            label).
        on_error: `"fail"` or `"skip"`.
        workers: Encoding threads.
        runner: `"local"` (threads) or `"beam"` (an Apache Beam pipeline writing the same
            shards; see `keras_dense.data.beam_writer`).
        beam_options: `KEY=VALUE` Beam pipeline options (`--beam-option`).
        progress: Show a progress bar.

    Returns:
        The manifest (detection classes: label = index + 1; `coco_category_ids` the ids of
        the classes, `coco_categories_left_out` Roboflow's super-category when left out).

    Raises:
        BadInputError: Bad inputs (with `on_error="fail"`), an empty annotation file, or a file
            whose structure or ids are ambiguous (see `coco_index.load_coco`).
        ValueError: Semantic masks with more categories than 8-bit labels below the ignore
            label hold, or an ignore label outside [0, 255].
    """
    if not is_folder(images):
        raise BadInputError(images, "--images: no such folder")
    index = load_coco(annotations, images)
    entries = [ann for anns in index.annotations.values() for _, ann in anns]
    if instance_masks is None:
        instance_masks = any(has_segmentation(ann) for ann in entries)
    needs_masks = semantic_masks or instance_masks
    cat_ids = [c["id"] for c in index.categories]
    label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    names = [c["name"] for c in index.categories]
    if semantic_masks:
        _check_semantic(len(names), ignore_label)
    for cat in index.left_out:
        warnings.warn(
            f"{annotations}: category {cat['id']} {cat['name']!r} is {cat['reason']}: left out "
            "of the class list",
            stacklevel=2,
        )
    if not index.image_ids:
        raise BadInputError(annotations, "empty input: the file lists no images")
    skipped = list(index.rejected)
    items = []
    for image_id in index.image_ids:
        if index.annotations[image_id]:
            items.append(image_id)
        else:
            skipped.append(
                {
                    "input": os.path.join(images, index.images[image_id]["file_name"]),
                    "reason": "image without an annotation",
                }
            )
    missing_mask = "field 'segmentation' is {!r}: no segmentation, while other annotations of "
    if semantic_masks:
        missing_mask += "the file have one (semantic masks need every object's)"
    else:
        missing_mask += "the file have one: --no-instance-masks keeps the boxes only"

    def make(image_id) -> Record:
        info = index.images[image_id]
        path = os.path.join(images, info["file_name"])
        if not is_file(path):
            raise BadInputError(path, f"image {image_id!r} listed in {annotations} is missing")
        problem = _image_size_problem(info)
        if problem is not None:
            raise BadInputError(path, f"{problem} (image {image_id!r} of {annotations})")
        image = read_image_file(path)
        height, width = image.rgb.shape[:2]
        said = (info.get("width", width), info.get("height", height))
        if said != (width, height):
            raise BadInputError(
                path, size_mismatch("the JSON says", said, (height, width), image.orientation)
            )
        boxes, labels, texts, crowd, rejected, objects = [], [], [], [], [], []
        mask = np.zeros((height, width), np.uint8) if semantic_masks else None
        for name, ann in index.annotations[image_id]:
            where = f"{annotations} {name} (image {image_id})"
            bbox = ann.get("bbox")
            problem = _box_problem(bbox, label_of, ann, width, height)
            region = None
            if problem is None and needs_masks:
                if not has_segmentation(ann):
                    problem = missing_mask.format(ann.get("segmentation"))
                else:
                    try:
                        region = rasterise(ann["segmentation"], height, width)
                    except ValueError as err:
                        problem = f"field 'segmentation' is not a valid polygon or RLE: {err}"
                    else:
                        problem = mask_box_problem(region, bbox)
            if problem is not None:
                rejected.append({"input": where, "reason": problem})
                continue
            x, y, w, h = bbox
            x0, y0 = max(x, 0), max(y, 0)  # clipped to the image (`outside_margin`)
            x1, y1 = min(x + w, width), min(y + h, height)
            boxes.append([y0 / height, x0 / width, y1 / height, x1 / width])
            labels.append(label_of[ann["category_id"]])
            texts.append(names[labels[-1] - 1])
            crowd.append(int(ann.get("iscrowd", 0)))
            if mask is not None:
                mask[region] = ignore_label if crowd[-1] else labels[-1]
            if instance_masks:
                objects.append(encode_png(region.astype(np.uint8)))
        if rejected and on_error == "fail":
            raise BadInputError(rejected[0]["input"], rejected[0]["reason"])
        return Record(
            source_id=info["source_id"],
            image_bytes=image.data,
            image_format=image.format,
            height=height,
            width=width,
            mask_png=None if mask is None else encode_png(mask),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            label_texts=texts,
            is_crowd=np.asarray(crowd, np.int64),
            rejected=rejected,
            orientation=image.orientation,
            instance_masks=objects if instance_masks else None,
        )

    return write_dataset(
        output,
        items,
        make,
        num_shards=num_shards,
        workers=workers,
        runner=runner,
        beam_options=beam_options,
        on_error=on_error,
        classes=names,
        ignore_label=ignore_label if semantic_masks else None,
        task="detection+segmentation" if semantic_masks else "detection",
        arguments={
            "converter": "coco",
            "annotations": annotations,
            "images": images,
            "semantic_masks": semantic_masks,
            "instance_masks": instance_masks,
            "num_shards": num_shards,
            "on_error": on_error,
        },
        skipped=skipped,
        progress=progress,
        extra={
            "box_label_offset": 1,
            "coco_category_ids": cat_ids,
            "coco_categories_left_out": index.left_out,
            "instance_masks": instance_masks,
        },
    )
