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

A classes file (`STEM,INSTANCE_ID,CLASS` lines, `*` wildcards, the most specific line wins:
see `keras_dense.data.converters.instance_classes`) gives the class list: every class it names,
in order of first appearance, whatever the `--split-file` holds, so every split of one file has
the same list; box label = index + 1 (the manifest's `box_label_offset` is 1, as for COCO and
VOC detection). Every line must label at least one instance of the images in `--images` (of
any split: a line for another split's image is used): a line whose stem or id matches nothing
there (a typo), or whose instances all have a more specific line, is an error naming the file
and line (`--on-error skip`: listed in the manifest's `skipped`; its class stays in the list).
Each mask is decoded once: the check keeps what it decodes (up to `DECODED_MASKS_BUDGET`
bytes) for the conversion.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_dense.data.converters.image_mask_pairs import file_stem, pair_images_with_masks
from keras_dense.data.converters.instance_classes import (
    BACKGROUND,
    WILDCARD,
    class_of,
    class_table,
    read_instance_class_lines,
    unused_class_lines,
)
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import encode_png, read_image_file, read_mask_file
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset

# Bytes of decoded masks the classes-file check keeps for the conversion (beyond: decoded again).
DECODED_MASKS_BUDGET = 256 << 20


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


class DecodedMasks:
    """Masks decoded by the classes-file check, kept for the conversion up to a byte budget.

    Args:
        budget: Most bytes kept at once; a mask beyond it is decoded again when converted.
    """

    def __init__(self, budget: int = DECODED_MASKS_BUDGET):
        self.budget = budget
        self._kept: dict[str, np.ndarray] = {}
        self._size = 0
        self._lock = threading.Lock()

    def keep(self, path: str, ids: np.ndarray) -> None:
        """Keeps the decoded mask of `path` if the budget allows."""
        with self._lock:
            if self._size + ids.nbytes <= self.budget:
                self._kept[path] = ids
                self._size += ids.nbytes

    def take(self, path: str) -> np.ndarray | None:
        """The kept mask of `path` (then forgotten), or None."""
        with self._lock:
            ids = self._kept.pop(path, None)
            self._size -= 0 if ids is None else ids.nbytes
            return ids


def instance_counts(
    pairs: Sequence[tuple[str, str]], workers: int, decoded: DecodedMasks, keep: set[str]
) -> dict[str, int | None]:
    """Largest instance id of each mask, by image stem (None: unreadable, named when its pair
    is converted); the masks in `keep` are kept in `decoded`."""

    def count(pair):
        try:
            ids = read_mask_file(pair[1])
        except BadInputError:
            return file_stem(pair[0]), None
        if pair[1] in keep:
            decoded.keep(pair[1], ids)
        return file_stem(pair[0]), int(ids.max(initial=0))

    with ThreadPoolExecutor(max(int(workers), 1)) as pool:
        return dict(pool.map(count, pairs))


def read_instance_ids(
    mask_path: str,
    image_shape: tuple[int, int],
    max_instances: int,
    ids: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Reads and checks one instance-id mask.

    Args:
        mask_path: The PNG (single-channel or palette).
        image_shape: The image's (H, W).
        max_instances: Largest number of instances allowed.
        ids: The mask already decoded (`read_mask_file`), or None to read it.

    Returns:
        `(ids, n)`: the (H, W) uint8 ids and the number of instances.

    Raises:
        BadInputError: Naming the mask: a size other than the image's, more than
            `max_instances` instances, or an id in 1..max id without pixels.
    """
    ids = read_mask_file(mask_path) if ids is None else ids
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
    runner: str = "local",
    beam_options: Sequence[str] = (),
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
        runner: `"local"` (threads) or `"beam"` (an Apache Beam pipeline writing the same
            shards; see `keras_dense.data.beam_writer`).
        beam_options: `KEY=VALUE` Beam pipeline options (`--beam-option`).
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
    decoded = DecodedMasks()
    if classes_file is not None:
        # Lines are judged against every image of the folder: one file serves every split.
        every = (
            pairs if split_file is None else pair_images_with_masks(images, masks, mask_suffix)[0]
        )
        counts = instance_counts(every, workers, decoded, keep={mask for _, mask in pairs})
        unused = unused_class_lines(lines, counts)
        if unused and on_error == "fail":
            line, reason = unused[0]
            more = f" ({len(unused) - 1} more unused lines)" if len(unused) > 1 else ""
            raise BadInputError(line.where, reason + more)
        skipped = [{"input": line.where, "reason": reason} for line, reason in unused] + skipped
        names, table = class_table(lines)

    def make(pair: tuple[str, str]) -> Record:
        image_path, mask_path = pair
        stem = file_stem(image_path)
        image = read_image_file(image_path)
        height, width = image.rgb.shape[:2]
        ids, num = read_instance_ids(
            mask_path, (height, width), max_instances, decoded.take(mask_path)
        )
        labels, texts = [], []
        for k in range(1, num + 1):
            name = class_of(table, stem, k)
            if name is None:
                # Only partial '*' lines can exist here: a '*,*' line covers every instance.
                wildcards = sorted(f"{s},{i}" for s, i in table if WILDCARD in (s, i))
                have = f"; its '*' lines ({', '.join(wildcards)}) do not cover it" * bool(wildcards)
                raise BadInputError(
                    mask_path,
                    f"no class for instance {k} of {stem!r} in --classes-file {classes_file}"
                    f"{have} (add a line {stem},{k},CLASS, {stem},*,CLASS, *,{k},CLASS or "
                    "*,*,CLASS)",
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
        runner=runner,
        beam_options=beam_options,
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
