"""Converter for a folder of images and a folder of instance-id masks (Penn-Fudan layout).

The mask of `images/STEM.ext` is `masks/STEM{mask_suffix}.png` (`_mask` by default, as in
the Penn-Fudan pedestrian set): a single-channel or palette PNG whose value is the instance
id of each pixel, 0 the background and 1..N the instances. Every id from 1 to the largest one
must have pixels (a gap is an error naming the id). Instance k becomes box k - 1, with

- its mask: a 0/1 PNG at the image's size under `image/object/mask`;
- its box: the tight box of its pixels, `[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]`
  divided by `(H, W, H, W)` (continuous coordinates, max exclusive, as every keras_dense
  converter and the shapes set write them);
- its class: `class_name` for every instance, or the one `classes_file` gives.

A mask of background only gives a record without boxes (an image with no object).

A classes file is a UTF-8 CSV of `STEM,INSTANCE_ID,CLASS` lines (a byte-order mark is
ignored; blank lines and `#` comments are skipped). `STEM` may be `*` (any image) and
`INSTANCE_ID` may be `*` (any instance); the most specific line wins: `STEM,ID` over `STEM,*`
over `*,ID` over `*,*`. So `*,*,person` alone labels everything, and `FudanPed00001,2,bicycle`
overrides one instance. The class list is the classes in order of their first appearance in
the file; box label = index + 1 (the manifest's `box_label_offset` is 1, as for COCO and VOC
detection). "background" is not a class (it is id 0 of the masks, and a class list starting
with it reads as a segmentation list). Every line must label at least one instance: a line
whose stem or id matches nothing (a typo), or whose instances all have a more specific line, is
an error naming the file and line (`--on-error skip`: listed in the manifest's `skipped`, and
a class named only by such lines is left out of the class list).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_dense.data.converters.image_mask_pairs import file_stem, pair_images_with_masks
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import encode_png, read_image_file, read_mask_file
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset

WILDCARD = "*"


def instance_boxes(ids: np.ndarray, num_instances: int) -> np.ndarray:
    """Tight pixel boxes of instances 1..num_instances of an instance-id map.

    Args:
        ids: (H, W) integer instance ids (0 = background).
        num_instances: Number of instances; each of 1..num_instances must have pixels.

    Returns:
        (num_instances, 4) float32 `[ymin, xmin, ymax, xmax]` in pixels, max exclusive.
    """
    height, width = ids.shape
    instances = np.arange(1, num_instances + 1)
    # Rows and columns each instance touches: one comparison over (K, H) and (K, W).
    row_hits = np.zeros((num_instances + 1, height), bool)
    col_hits = np.zeros((num_instances + 1, width), bool)
    rows, cols = np.nonzero(ids)
    values = ids[rows, cols]
    row_hits[values, rows] = True
    col_hits[values, cols] = True
    row_hits, col_hits = row_hits[instances], col_hits[instances]
    ymin = np.argmax(row_hits, axis=1)
    ymax = height - np.argmax(row_hits[:, ::-1], axis=1)
    xmin = np.argmax(col_hits, axis=1)
    xmax = width - np.argmax(col_hits[:, ::-1], axis=1)
    return np.stack([ymin, xmin, ymax, xmax], axis=1).astype(np.float32)


BACKGROUND = "background"


@dataclasses.dataclass(frozen=True)
class ClassLine:
    """One `STEM,INSTANCE_ID,CLASS` line of a classes file.

    Attributes:
        where: `FILE line N`.
        text: The line as written.
        key: `(stem, instance id)`, `"*"` wildcards kept, the id without leading zeros.
        name: The class.
    """

    where: str
    text: str
    key: tuple[str, str]
    name: str


def _decode_classes_file(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInputError(
            path,
            f"not UTF-8 text (byte {data[err.start]:#04x} at line {line}); save the classes "
            "file as UTF-8",
        ) from None


def read_instance_class_lines(path: str) -> list[ClassLine]:
    """Reads a classes file of `STEM,INSTANCE_ID,CLASS` lines (see the module docstring).

    Args:
        path: The CSV file (UTF-8; a byte-order mark is ignored).

    Returns:
        Its lines, in order.

    Raises:
        BadInputError: The file is missing or not UTF-8, a line is malformed, names the
            background (class "background" or instance id 0), or a key repeats with another
            class; the file and line are named.
    """
    if not os.path.isfile(path):
        raise BadInputError(path, "--classes-file: no such file")
    lines: list[ClassLine] = []
    given: dict[tuple[str, str], str] = {}
    reader = csv.reader(io.StringIO(_decode_classes_file(path), newline=""))
    try:
        for number, row in enumerate(reader, start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            where = f"{path} line {number}"
            fields = [v.strip() for v in row]
            if len(fields) != 3 or not all(fields):
                raise BadInputError(
                    where, f"{','.join(row)!r}: expected STEM,INSTANCE_ID,CLASS ('*' wildcards)"
                )
            stem, instance, name = fields
            if instance.isdigit() and int(instance) == 0:
                raise BadInputError(
                    where,
                    "instance id 0 is the background of the masks, not an instance: expected "
                    "an id in [1, 255] or '*'",
                )
            if instance != WILDCARD and not (instance.isdigit() and 1 <= int(instance) <= 255):
                raise BadInputError(
                    where, f"instance id {instance!r}: expected an integer in [1, 255] or '*'"
                )
            if name.lower() == BACKGROUND:
                raise BadInputError(
                    where,
                    f"class {name!r}: the background is id 0 of the masks, not a class of "
                    "instances (a detection class list starting with 'background' shifts every "
                    "label); name the objects' class",
                )
            key = (stem, instance if instance == WILDCARD else str(int(instance)))
            if given.get(key, name) != name:
                raise BadInputError(
                    where, f"{stem},{instance} is already given the class {given[key]!r}"
                )
            given[key] = name
            lines.append(ClassLine(where, ",".join(row), key, name))
    except csv.Error as err:
        raise BadInputError(f"{path} line {reader.line_num}", f"unreadable CSV ({err})") from None
    if not lines:
        raise BadInputError(path, "--classes-file: no STEM,INSTANCE_ID,CLASS line")
    return lines


def class_table(lines: Sequence[ClassLine]) -> tuple[list[str], dict[tuple[str, str], str]]:
    """`(names, table)`: the classes in order of first appearance and `{key: class}`."""
    names: list[str] = []
    table: dict[tuple[str, str], str] = {}
    for line in lines:
        table[line.key] = line.name
        if line.name not in names:
            names.append(line.name)
    return names, table


def read_instance_classes(path: str) -> tuple[list[str], dict[tuple[str, str], str]]:
    """Reads a classes file (see `read_instance_class_lines`) into `class_table`'s form.

    Returns:
        `(names, table)`: the class names in order of first appearance, and
        `{(stem, instance_id): class}` with `"*"` wildcards kept as keys.

    Raises:
        BadInputError: As `read_instance_class_lines`.
    """
    return class_table(read_instance_class_lines(path))


def _chosen_key(table, stem: str, instance: int) -> tuple[str, str] | None:
    for key in (
        (stem, str(instance)),
        (stem, WILDCARD),
        (WILDCARD, str(instance)),
        (WILDCARD, WILDCARD),
    ):
        if key in table:
            return key
    return None


def unused_class_lines(
    lines: Sequence[ClassLine], instances: dict[str, int]
) -> list[tuple[ClassLine, str]]:
    """The lines of a classes file that label no instance, each with the reason.

    Args:
        lines: The classes file's lines.
        instances: Number of instances of each image, by stem.

    Returns:
        `(line, reason)` for every line that is the chosen (most specific) line of no
        instance, in file order.
    """
    _, table = class_table(lines)
    used = {
        _chosen_key(table, stem, k)
        for stem, count in instances.items()
        for k in range(1, count + 1)
    }
    most = max(instances.values(), default=0)
    unused = []
    for line in lines:
        if line.key in used:
            continue
        stem, instance = line.key
        if stem != WILDCARD and stem not in instances:
            close = difflib.get_close_matches(stem, list(instances), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            why = f"no image with a mask has the stem {stem!r}{hint}"
        elif stem != WILDCARD and instance != WILDCARD and int(instance) > instances[stem]:
            count = instances[stem]
            why = f"{stem} has {count} instance{'s' if count != 1 else ''}"
        elif stem == WILDCARD and instance != WILDCARD and int(instance) > most:
            why = f"no image has {instance} instances (the most is {most})"
        elif stem != WILDCARD and instances[stem] == 0:
            why = f"{stem}'s mask has no instance"
        else:
            why = "every instance it matches has a more specific line"
        unused.append((line, f"{line.text!r} matches no instance: {why}; fix or remove the line"))
    return unused


def _instance_counts(pairs: Sequence[tuple[str, str]], workers: int) -> dict[str, int]:
    """Largest instance id of each readable mask, by image stem (unreadable masks: left out,
    they are named when their pair is converted)."""

    def count(pair):
        try:
            return file_stem(pair[0]), int(read_mask_file(pair[1]).max(initial=0))
        except BadInputError:
            return None

    with ThreadPoolExecutor(max(int(workers), 1)) as pool:
        return dict(found for found in pool.map(count, pairs) if found is not None)


def _class_of(table: dict[tuple[str, str], str], stem: str, instance: int) -> str | None:
    key = _chosen_key(table, stem, instance)
    return None if key is None else table[key]


def read_instance_ids(
    mask_path: str, image_shape: tuple[int, int], max_instances: int
) -> tuple[np.ndarray, int]:
    """Reads and checks one instance-id mask.

    Args:
        mask_path: The PNG (single-channel or palette).
        image_shape: The image's (H, W).
        max_instances: Largest number of instances allowed.

    Returns:
        `(ids, n)`: the (H, W) uint8 ids and the number of instances.

    Raises:
        BadInputError: Naming the mask: a size other than the image's, more than
            `max_instances` instances, or an id in 1..max id without pixels.
    """
    ids = read_mask_file(mask_path)
    if ids.shape != tuple(image_shape):
        raise BadInputError(
            mask_path,
            f"mask size {ids.shape[1]}x{ids.shape[0]} differs from its image's "
            f"{image_shape[1]}x{image_shape[0]} (width x height)",
        )
    counts = np.bincount(ids.ravel(), minlength=256)
    num = int(np.max(np.nonzero(counts)[0], initial=0))
    if num > max_instances:
        raise BadInputError(
            mask_path,
            f"{num} instances (largest id {num}) but --max-instances is {max_instances}",
        )
    empty = [k for k in range(1, num + 1) if counts[k] == 0]
    if empty:
        present = [k for k in range(1, num + 1) if counts[k]]
        raise BadInputError(
            mask_path,
            f"instance id {empty[0]} has no pixels (ids present: {present}); expected "
            f"every id 1..{num} to be an instance (0 = background)",
        )
    return ids, num


def convert_instances(
    images: str,
    masks: str,
    output: str,
    mask_suffix: str = "_mask",
    class_name: str | None = None,
    classes_file: str | None = None,
    max_instances: int = 100,
    split_file: str | None = None,
    num_shards: int = 1,
    on_error: str = "fail",
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Converts images and instance-id masks into detection TFRecords with instance masks.

    Args:
        images: Folder of images.
        masks: Folder of instance-id PNGs (`STEM{mask_suffix}.png`).
        output: `DIR/NAME` of the shards and manifest.
        mask_suffix: Suffix after the stem in mask names.
        class_name: The class of every instance (default `"object"` when no classes file).
        classes_file: A `STEM,INSTANCE_ID,CLASS` CSV (see the module docstring).
        max_instances: More instances in one mask is an error (at most 255, the uint8 ids).
        split_file: Optional file of stems to convert (first column of each line).
        num_shards: Number of shards.
        on_error: `"fail"` or `"skip"`.
        workers: Encoding threads.
        progress: Show a progress bar.

    Returns:
        The manifest (detection classes: label = index + 1).

    Raises:
        BadInputError: Bad or missing inputs (with `on_error="fail"`), or an empty folder.
        ValueError: Bad arguments.
    """
    if class_name is not None and classes_file is not None:
        raise ValueError("give either --class-name or --classes-file, not both")
    if not 1 <= max_instances <= 255:
        raise ValueError(f"max_instances={max_instances}: expected an integer in [1, 255]")
    if classes_file is not None:
        lines = read_instance_class_lines(classes_file)
    else:
        class_name = "object" if class_name is None else class_name.strip()
        if not class_name:
            raise ValueError("--class-name: expected a non-empty name")
        if class_name.lower() == BACKGROUND:
            raise ValueError(
                f"--class-name {class_name!r}: the background is id 0 of the masks, not a class "
                "of instances; name the objects' class"
            )
        names, table = [class_name], {(WILDCARD, WILDCARD): class_name}
    pairs, skipped = pair_images_with_masks(images, masks, mask_suffix, split_file)
    if classes_file is not None:
        unused = unused_class_lines(lines, _instance_counts(pairs, workers))
        if unused and on_error == "fail":
            line, reason = unused[0]
            more = f" ({len(unused) - 1} more unused lines)" if len(unused) > 1 else ""
            raise BadInputError(line.where, reason + more)
        skipped = [{"input": line.where, "reason": reason} for line, reason in unused] + skipped
        dropped = {line.where for line, _ in unused}
        names, table = class_table([line for line in lines if line.where not in dropped])

    def make(pair: tuple[str, str]) -> Record:
        image_path, mask_path = pair
        stem = file_stem(image_path)
        image = read_image_file(image_path)
        height, width = image.rgb.shape[:2]
        ids, num = read_instance_ids(mask_path, (height, width), max_instances)
        labels, texts = [], []
        for k in range(1, num + 1):
            name = _class_of(table, stem, k)
            if name is None:
                raise BadInputError(
                    mask_path,
                    f"no class for instance {k} of {stem!r} in --classes-file {classes_file} "
                    f"(add a line {stem},{k},CLASS or a '*' default)",
                )
            labels.append(names.index(name) + 1)
            texts.append(name)
        boxes = instance_boxes(ids, num) / np.float32([height, width, height, width])
        return Record(
            source_id=stem,
            image_bytes=image.data,
            image_format=image.format,
            height=height,
            width=width,
            boxes=boxes.astype(np.float32),
            labels=np.asarray(labels, np.int64),
            label_texts=texts,
            instance_masks=[encode_png((ids == k).astype(np.uint8)) for k in range(1, num + 1)],
            orientation=image.orientation,
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
        ignore_label=None,
        task="detection",
        arguments={
            "converter": "instances",
            "images": images,
            "masks": masks,
            "mask_suffix": mask_suffix,
            "class_name": class_name,
            "classes_file": classes_file,
            "max_instances": max_instances,
            "split_file": split_file,
            "num_shards": num_shards,
            "on_error": on_error,
        },
        skipped=skipped,
        progress=progress,
        extra={"box_label_offset": 1, "instance_masks": True},
    )
