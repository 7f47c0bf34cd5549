"""Converter for the PASCAL VOC devkit layout (segmentation or detection).

Box convention: VOC boxes are 1-based inclusive pixel indices (the devkit, LabelImg). They are
stored normalised as continuous coordinates,
`[(xmin - 1) / width, (ymin - 1) / height, xmax / width, ymax / height]`, so a box covering the
whole image is exactly [0, 0, 1, 1]. Files of tools that write continuous 0-based corners (CVAT
and Datumaro: a whole-image box is `0 0 W H`) are read with `coordinates="zero-based"`:
`[xmin / width, ymin / height, xmax / width, ymax / height]`. A 0 coordinate in a 1-based file
is refused, naming that option.

Each annotation's image is `JPEGImages/<filename>` when it exists, else the one image of the
annotation's stem (any image extension). A `<filename>` naming another image than an existing
image of the stem, several images of the stem, and two annotation files of one image are
refused (or, with `on_error="skip"`, listed).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from keras_dense.data.classes import VOC_CLASSES, read_split_file, resolve_classes
from keras_dense.data.converters.exif_note import size_mismatch
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import IMAGE_EXTENSIONS, encode_png, read_image_file, read_mask_file
from keras_dense.data.masks import check_mask
from keras_dense.data.paths import path_inside
from keras_dense.data.schema import Record
from keras_dense.data.storage import glob_files, is_file, is_folder, list_folder
from keras_dense.data.voc_xml import VocAnnotation, parse_voc_xml
from keras_dense.data.writer import write_dataset
from keras_dense.detection.proposals import selective_search

COORDINATES = ("one-based", "zero-based")


def _unknown_class(name: str, classes: list[str]) -> str:
    """The reason for a class name outside the list, pointing at a near miss of case."""
    reason = f"class {name!r} is not in the class list {classes}"
    near = [c for c in classes if c.casefold() == name.casefold()]
    if near:
        reason += f" (names are case-sensitive; the list has {near[0]!r})"
    return reason


def _outside(obj, box: str, width: int, height: int, coordinates: str) -> str | None:
    """Why a box leaves the image in the given convention, or None when it is inside."""
    if coordinates == "zero-based":
        low, convention = 0, "0-based corners, 0 <= x <= width"
    else:
        low, convention = 1, "VOC boxes are 1-based, inclusive"
    if obj.xmin >= low and obj.ymin >= low and obj.xmax <= width and obj.ymax <= height:
        return None
    reason = f"box {box} outside the {width}x{height} image ({convention})"
    if coordinates == "one-based" and 0 <= min(obj.xmin, obj.ymin) < 1:
        axis = "xmin" if obj.xmin < 1 else "ymin"
        reason += (
            f"; {axis}={min(obj.xmin, obj.ymin):g} is not a 1-based pixel index: a file "
            "written with 0-based corners (CVAT, Datumaro) converts with --coordinates zero-based"
        )
    return reason


def check_voc_boxes(
    annotation: VocAnnotation,
    width: int,
    height: int,
    classes: list[str],
    coordinates: str = "one-based",
):
    """Splits an annotation's objects into valid ones and rejected ones.

    Args:
        annotation: The parsed XML.
        width: Decoded image width.
        height: Decoded image height.
        classes: Known class names (label = index + 1).
        coordinates: `"one-based"` (VOC pixel indices, inclusive) or `"zero-based"`
            (continuous corners, as CVAT writes them).

    Returns:
        `(boxes (n,4) normalised yxyx, labels, texts, difficult, rejected)` where `rejected`
        lists `(source, reason)` for boxes outside the image, inverted, of zero area or of an
        unknown class.
    """
    boxes, labels, texts, difficult, rejected = [], [], [], [], []
    offset = 1 if coordinates == "one-based" else 0
    for k, obj in enumerate(annotation.objects):
        where = f"{annotation.path} object #{k} ({obj.name})"
        box = f"[xmin={obj.xmin:g}, ymin={obj.ymin:g}, xmax={obj.xmax:g}, ymax={obj.ymax:g}]"
        outside = _outside(obj, box, width, height, coordinates)
        if obj.name not in classes:
            rejected.append((where, _unknown_class(obj.name, classes)))
        elif obj.xmax < obj.xmin or obj.ymax < obj.ymin:
            lo, hi = ("xmin", "xmax") if obj.xmax < obj.xmin else ("ymin", "ymax")
            rejected.append(
                (
                    where,
                    f"inverted box {box}: {hi} {getattr(obj, hi):g} < {lo} {getattr(obj, lo):g}",
                )
            )
        elif obj.xmax == obj.xmin or obj.ymax == obj.ymin:
            rejected.append((where, f"box of zero area {box}"))
        elif outside is not None:
            rejected.append((where, outside))
        else:
            boxes.append(
                [
                    (obj.ymin - offset) / height,
                    (obj.xmin - offset) / width,
                    obj.ymax / height,
                    obj.xmax / width,
                ]
            )
            labels.append(classes.index(obj.name) + 1)
            texts.append(obj.name)
            difficult.append(int(obj.difficult))
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        texts,
        np.asarray(difficult, np.int64),
        rejected,
    )


def _stems(root: str, layout: _Layout, split: str | None) -> tuple[list[str], str]:
    sub = layout.split_folder
    if split is not None:
        split_path = os.path.join(root, "ImageSets", sub, f"{split}.txt")
        if not is_file(split_path):
            raise BadInputError(
                split_path, f"--split {split}: no such split file (expected ImageSets/{sub}/)"
            )
        stems = read_split_file(split_path)
        for stem in stems:
            if os.path.basename(stem) != stem or stem in (".", ".."):
                raise BadInputError(
                    split_path, f"entry {stem!r} is not a file stem (paths are not allowed)"
                )
        return stems, split_path
    folder = layout.annotation_folder
    files = sorted(glob_files(os.path.join(root, folder, "*" + layout.annotation_ext)))
    return [os.path.splitext(os.path.basename(f))[0] for f in files], os.path.join(root, folder)


def _prepare_segmentation(root, stems, names, on_error, propose, coordinates):
    """`(stems, class names, skipped, make_record)` for the segmentation layout."""
    names = names or ["background", *VOC_CLASSES]
    return stems, names, [], lambda stem: _segmentation_record(root, stem, names)


def _prepare_detection(root, stems, names, on_error, propose, coordinates):
    """`(stems, class names, skipped, make_record)` for the detection layout."""
    annotations: dict[str, VocAnnotation] = {}
    images: dict[str, str] = {}
    skipped: list[dict] = []
    by_stem = _images_by_stem(os.path.join(root, "JPEGImages"))
    for stem in stems:
        xml = os.path.join(root, "Annotations", f"{stem}.xml")
        if not is_file(xml):
            skipped.append({"input": xml, "reason": "image without an annotation"})
            continue
        try:
            annotation = parse_voc_xml(xml)
            images[stem] = _image_of(root, stem, annotation, by_stem)
        except BadInputError as err:
            skipped.append({"input": err.source, "reason": err.reason})
            continue
        annotations[stem] = annotation
    for stem, reason in _shared_images(annotations, images).items():
        skipped.append({"input": annotations.pop(stem).path, "reason": reason})
    names = names or _default_detection_classes(annotations)

    def make(stem: str) -> Record:
        annotation = annotations[stem]
        image = read_image_file(images[stem])
        height, width = image.rgb.shape[:2]
        size = (annotation.width, annotation.height)
        if annotation.width and size != (width, height):
            raise BadInputError(
                annotation.path,
                size_mismatch("<size> says", size, (height, width), image.orientation),
            )
        boxes, labels, texts, difficult, rejected = check_voc_boxes(
            annotation, width, height, names, coordinates
        )
        if rejected and on_error == "fail":
            raise BadInputError(*rejected[0])
        record = Record(
            stem,
            image.data,
            image.format,
            height,
            width,
            boxes=boxes,
            labels=labels,
            label_texts=texts,
            difficult=difficult,
            rejected=[{"input": s, "reason": r} for s, r in rejected],
            orientation=image.orientation,
        )
        if propose is not None:
            pixel = propose(image.rgb)
            record.proposals = pixel / np.array([height, width, height, width], np.float32)
        return record

    return [s for s in stems if s in annotations], names, skipped, make


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where one kind of VOC annotation lives and how its records are made."""

    split_folder: str
    annotation_folder: str
    annotation_ext: str
    ignore_label: int | None
    manifest_extra: dict
    prepare: Callable
    boxes: bool


_LAYOUTS = {
    "segmentation": _Layout(
        "Segmentation", "SegmentationClass", ".png", 255, {}, _prepare_segmentation, False
    ),
    "detection": _Layout(
        "Main", "Annotations", ".xml", None, {"box_label_offset": 1}, _prepare_detection, True
    ),
}


def convert_voc(
    root: str,
    output: str,
    task: str = "segmentation",
    split: str | None = None,
    classes: Sequence[str] | str | None = None,
    proposals: str = "none",
    num_shards: int = 1,
    on_error: str = "fail",
    workers: int = 1,
    runner: str = "local",
    beam_options: Sequence[str] = (),
    progress: bool = True,
    coordinates: str = "one-based",
) -> dict:
    """Converts a VOC devkit folder into TFRecords.

    Args:
        root: Folder holding `JPEGImages/`, `Annotations/`, `SegmentationClass/`, `ImageSets/`.
        output: `DIR/NAME` of the shards and manifest.
        task: Which annotations to read: `"segmentation"` (palette masks; 255 kept as the
            ignore label) or `"detection"` (XML boxes).
        split: Name of a split file in `ImageSets/{Segmentation,Main}/` (an error when it does
            not exist); without it, every annotation is converted.
        classes: Class names. Segmentation: id = index (default background + the VOC 20).
            Detection: label = index + 1 (default the VOC 20 when every name found is one of
            them, the sorted names when none is; a mix is refused).
        proposals: `"none"` or `"selective_search"` (OpenCV, fast mode, at most 2000 boxes).
        num_shards: Number of shards.
        on_error: `"fail"` or `"skip"`. With skip, a bad box is dropped on its own and listed.
        workers: Encoding threads.
        runner: `"local"` (threads) or `"beam"` (an Apache Beam pipeline writing the same
            shards; see `keras_dense.data.beam_writer`).
        beam_options: `KEY=VALUE` Beam pipeline options (`--beam-option`).
        progress: Show a progress bar.
        coordinates: Detection boxes: `"one-based"` (VOC pixel indices, inclusive; the devkit,
            LabelImg) or `"zero-based"` (continuous corners; CVAT, Datumaro).

    Returns:
        The manifest.

    Raises:
        BadInputError: Bad inputs (with `on_error="fail"`), or no annotation at all.
        ValueError: Bad arguments.
    """
    if task not in _LAYOUTS:
        raise ValueError(f"task={task!r}: expected one of {sorted(_LAYOUTS)}")
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates={coordinates!r}: expected one of {list(COORDINATES)}")
    if coordinates != "one-based" and not _LAYOUTS[task].boxes:
        raise ValueError(f"coordinates={coordinates!r} applies to boxes (the detection task) only")
    if proposals not in ("none", "selective_search"):
        raise ValueError(f"proposals={proposals!r}: expected 'none' or 'selective_search'")
    if not is_folder(root):
        raise BadInputError(root, "--root: no such folder")
    layout = _LAYOUTS[task]
    stems, listing = _stems(root, layout, split)
    if not stems:
        raise BadInputError(listing, f"empty input: no {task} annotations found")
    propose = selective_search if proposals == "selective_search" else None
    stems, names, skipped, make = layout.prepare(
        root, stems, resolve_classes(classes, None), on_error, propose, coordinates
    )
    return write_dataset(
        output,
        stems,
        make,
        num_shards=num_shards,
        workers=workers,
        runner=runner,
        beam_options=beam_options,
        on_error=on_error,
        classes=names,
        ignore_label=layout.ignore_label,
        task=task,
        arguments={
            "converter": "voc",
            "root": root,
            "task": task,
            "split": split,
            "classes": classes,
            "proposals": proposals,
            "num_shards": num_shards,
            "on_error": on_error,
            "coordinates": coordinates,
        },
        skipped=skipped,
        progress=progress,
        extra=layout.manifest_extra,
    )


def _segmentation_record(root: str, stem: str, names: list[str]) -> Record:
    image_path = os.path.join(root, "JPEGImages", f"{stem}.jpg")
    mask_path = os.path.join(root, "SegmentationClass", f"{stem}.png")
    if not is_file(mask_path):
        raise BadInputError(image_path, f"image without an annotation: expected {mask_path}")
    if not is_file(image_path):
        raise BadInputError(mask_path, f"annotation without an image: expected {image_path}")
    image = read_image_file(image_path)
    mask = read_mask_file(mask_path)
    check_mask(mask, image.rgb.shape[:2], len(names), 255, mask_path)
    height, width = image.rgb.shape[:2]
    return Record(
        stem,
        image.data,
        image.format,
        height,
        width,
        mask_png=encode_png(mask),
        orientation=image.orientation,
    )


def _default_detection_classes(annotations: dict[str, VocAnnotation]) -> list[str]:
    """The VOC 20 when every name found is a VOC class, the sorted names when none is.

    A mix (say 19 VOC names and `"persn"`) is a typo or a different data set: guessing either
    list would shift every label id, so it is refused.
    """
    found = sorted({o.name for a in annotations.values() for o in a.objects})
    _refuse_case_variants(annotations, found)
    outside = [n for n in found if n not in VOC_CLASSES]
    if not outside:
        return list(VOC_CLASSES)
    if len(outside) == len(found):
        return found
    where = next(a.path for a in annotations.values() for o in a.objects if o.name == outside[0])
    raise BadInputError(
        where,
        f"class name(s) {outside} are not among the VOC 20 classes, while "
        f"{[n for n in found if n in VOC_CLASSES]} are: give the class list explicitly with "
        f"--classes (e.g. --classes {','.join(found)}) so that label ids do not depend on a guess",
    )


def _refuse_case_variants(annotations: dict[str, VocAnnotation], found: list[str]) -> None:
    """Names that differ only in case (`RBC`, `rbc`) would become two classes of one thing."""
    by_key: dict[str, list[str]] = {}
    for name in found:
        by_key.setdefault(name.casefold(), []).append(name)
    variants = next((v for v in by_key.values() if len(v) > 1), None)
    if variants is None:
        return
    first, second = variants[:2]
    files = {
        n: next(a.path for a in annotations.values() for o in a.objects if o.name == n)
        for n in (first, second)
    }
    raise BadInputError(
        files[second],
        f"class names {first!r} ({files[first]}) and {second!r} (this file) differ only in "
        "case: the class list would hold both as two classes. Correct the annotations, or "
        "give the class list with --classes (names are case-sensitive)",
    )


def _images_by_stem(folder: str) -> dict[str, list[str]]:
    """The image files of `folder` (any image extension, any case) by stem, listed once."""
    by_stem: dict[str, list[str]] = {}
    names = sorted(list_folder(folder)) if is_folder(folder) else []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            by_stem.setdefault(stem, []).append(os.path.join(folder, name))
    return by_stem


def _image_of(
    root: str, stem: str, annotation: VocAnnotation, by_stem: dict[str, list[str]]
) -> str:
    """The image file of an annotation: `JPEGImages/<filename>`, else the image of STEM.

    Raises:
        BadInputError: No image; `<filename>` names an image while another image has the
            annotation's stem; or several images have the stem and `<filename>` names none.
    """
    folder = os.path.join(root, "JPEGImages")
    of_stem = by_stem.get(stem, [])
    if annotation.filename:
        named = os.path.normpath(path_inside(folder, annotation.filename, annotation.path))
        if is_file(named):
            others = [p for p in of_stem if os.path.normpath(p) != named]
            if others:
                raise BadInputError(
                    annotation.path,
                    f"<filename> names {named}, while {others[0]} has this annotation's stem: "
                    "which image was annotated is a guess; correct <filename> or move one image",
                )
            return named
    if len(of_stem) == 1:
        return of_stem[0]
    if of_stem:
        raise BadInputError(
            annotation.path,
            f"images {' and '.join(of_stem)} share this annotation's stem and <filename> "
            f"({annotation.filename!r}) names none of them: keep one",
        )
    expected = os.path.join(folder, annotation.filename or f"{stem}.jpg")
    raise BadInputError(annotation.path, f"annotation without an image: expected {expected}")


def _shared_images(annotations: dict[str, VocAnnotation], images: dict[str, str]) -> dict:
    """`{stem: reason}` for the annotation files that share their image with another."""
    by_image: dict[str, list[str]] = {}
    for stem in annotations:
        by_image.setdefault(os.path.realpath(images[stem]), []).append(stem)
    shared = {}
    for stems in by_image.values():
        for stem in stems if len(stems) > 1 else ():
            other = next(s for s in stems if s != stem)
            shared[stem] = (
                f"it and {annotations[other].path} both annotate {images[stem]}: one image "
                "needs one annotation file; remove or correct one"
            )
    return shared
