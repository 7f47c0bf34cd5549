"""Converter for COCO instance annotations (boxes, instance masks, optionally semantic masks).

Category ids are mapped to contiguous labels 1..K in increasing id order. Crowd annotations
(`iscrowd=1`) are recorded with `image/object/is_crowd=1`; the input pipelines leave them out
of training targets, and in semantic masks their pixels get the ignore label.

Each object's `segmentation` (polygons, RLE or uncompressed RLE) is rasterised by pycocotools
at the image's size into its instance mask (`image/object/mask`, 0/1 PNG, in box order; crowd
objects keep theirs). Boxes stay COCO's `bbox`. A file where no annotation has a
`segmentation` (box-only COCO files) gives records without instance masks.
"""

from __future__ import annotations

import os

import numpy as np

from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import encode_png, read_image_file
from keras_dense.data.paths import path_inside
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset


def _load_coco(annotations: str):
    try:
        from pycocotools.coco import COCO
    except ImportError:  # pragma: no cover - optional dependency
        raise ImportError(
            "the COCO converter needs pycocotools: pip install 'keras-dense[coco]'"
        ) from None
    if not os.path.isfile(annotations):
        raise BadInputError(annotations, "--annotations: no such file")
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(annotations)
    except (ValueError, KeyError, TypeError) as err:
        raise BadInputError(annotations, f"not a COCO instances JSON ({err})") from None


def _annotation_problem(ann: dict, label_of: dict) -> str | None:
    """What is wrong with one annotation's fields, or None when they are usable."""
    if ann.get("category_id") not in label_of:
        return (
            f"field 'category_id' is {ann.get('category_id')!r}, which is not an id listed "
            f"in 'categories' {sorted(label_of)}"
        )
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        return f"field 'bbox' is {bbox!r}: expected [x, y, width, height] numbers"
    if not all(np.isfinite(bbox)):
        return f"field 'bbox' is {bbox!r}: expected finite numbers"
    return None


def _rasterise(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) bool pixels of a COCO `segmentation` (polygons, RLE or uncompressed RLE)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict):
        rle = segmentation
        if tuple(rle.get("size", ())) != (height, width):
            raise ValueError(f"RLE size {rle.get('size')} is not the image's [{height}, {width}]")
    else:
        raise TypeError(f"expected polygons or an RLE, got {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


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
            when any annotation of the file has a `segmentation`; then one without it is
            rejected like any bad field.
        num_shards: Number of shards.
        ignore_label: Mask value of crowd regions.
        on_error: `"fail"` or `"skip"`.
        workers: Encoding threads.
        progress: Show a progress bar.

    Returns:
        The manifest (detection classes: label = index + 1).

    Raises:
        BadInputError: Bad inputs (with `on_error="fail"`) or an empty annotation file.
    """
    coco = _load_coco(annotations)
    if not os.path.isdir(images):
        raise BadInputError(images, "--images: no such folder")
    if instance_masks is None:
        instance_masks = any("segmentation" in ann for ann in coco.dataset.get("annotations", []))
    rasterise = semantic_masks or instance_masks
    cat_ids = sorted(coco.getCatIds())
    label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    names = [coco.loadCats(cid)[0]["name"] for cid in cat_ids]
    image_ids = sorted(coco.getImgIds())
    if not image_ids:
        raise BadInputError(annotations, "empty input: the file lists no images")
    skipped = []
    items = []
    for image_id in image_ids:
        info = coco.loadImgs(image_id)[0]
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            raise BadInputError(
                f"{annotations} image {image_id}",
                f"field 'file_name' is {info.get('file_name')!r}: expected the image's file name",
            )
        path_inside(images, info["file_name"], f"{annotations} image {image_id}", "--images")
        if not coco.getAnnIds(imgIds=image_id):
            skipped.append(
                {
                    "input": os.path.join(images, info["file_name"]),
                    "reason": "image without an annotation",
                }
            )
        else:
            items.append(image_id)

    def make(image_id: int) -> Record:
        info = coco.loadImgs(image_id)[0]
        path = os.path.join(images, info["file_name"])
        if not os.path.isfile(path):
            raise BadInputError(path, f"image {image_id} listed in {annotations} is missing")
        image = read_image_file(path)
        height, width = image.rgb.shape[:2]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise BadInputError(
                path,
                f"the JSON says {info['width']}x{info['height']} but the image is {width}x{height}",
            )
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        boxes, labels, texts, crowd, rejected, objects = [], [], [], [], [], []
        mask = np.zeros((height, width), np.uint8) if semantic_masks else None
        for ann in anns:
            where = f"{annotations} annotation {ann.get('id', '?')} (image {image_id})"
            problem = _annotation_problem(ann, label_of)
            if problem is not None:
                rejected.append({"input": where, "reason": problem})
                continue
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                rejected.append({"input": where, "reason": f"box of zero area {ann['bbox']}"})
                continue
            if x < 0 or y < 0 or x + w > width + 0.5 or y + h > height + 0.5:
                rejected.append(
                    {
                        "input": where,
                        "reason": f"box {ann['bbox']} (x,y,w,h) outside the {width}x{height} image",
                    }
                )
                continue
            region = None
            if rasterise:
                try:
                    region = _rasterise(ann.get("segmentation"), height, width)
                except Exception as err:  # pycocotools raises many types for bad polygons
                    rejected.append(
                        {
                            "input": where,
                            "reason": f"field 'segmentation' is not a valid polygon or RLE "
                            f"({type(err).__name__}: {err})",
                        }
                    )
                    continue
            boxes.append(
                [y / height, x / width, min(y + h, height) / height, min(x + w, width) / width]
            )
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
            source_id=os.path.splitext(os.path.basename(info["file_name"]))[0],
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
            "instance_masks": instance_masks,
        },
    )
