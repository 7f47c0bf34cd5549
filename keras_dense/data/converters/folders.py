"""Converter for one sub-folder of images per class (the ImageNet / Keras
`image_dataset_from_directory` layout): image-level labels only.

`ROOT/CLASS_NAME/*.jpg|png|...`: the class names are the sub-folder names, sorted; every image
gets the one label of its folder as `image/class/label` (1-based, as box labels: the label of
`classes[i]` is `i + 1`). The manifest's class list has no "background" (these records have
no masks). Files directly in `ROOT` and hidden folders are ignored, as Keras does.
"""

from __future__ import annotations

import os

import numpy as np

from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import list_images, read_image_file
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset


def class_folders(root: str) -> list[str]:
    """The sorted, non-hidden sub-folder names of `root`.

    Raises:
        BadInputError: `root` is not a folder or has no sub-folder.
    """
    if not os.path.isdir(root):
        raise BadInputError(root, "--root: no such folder")
    names = sorted(
        name
        for name in os.listdir(root)
        if not name.startswith(".") and os.path.isdir(os.path.join(root, name))
    )
    if not names:
        raise BadInputError(
            root, "no class sub-folders: expected ROOT/CLASS_NAME/image files, one per class"
        )
    return names


def convert_folders(
    root: str,
    output: str,
    num_shards: int = 1,
    on_error: str = "fail",
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Converts a folder of class sub-folders into TFRecords with image-level labels.

    Args:
        root: Folder holding one sub-folder of images per class.
        output: `DIR/NAME` of the shards and manifest.
        num_shards: Number of shards.
        on_error: `"fail"` stops at the first bad image or empty class folder; `"skip"`
            lists them in the manifest.
        workers: Encoding threads.
        progress: Show a progress bar.

    Returns:
        The manifest (`classes` = the sorted folder names, `task` = "classification").

    Raises:
        BadInputError: A missing root, no class folder, or (with `on_error="fail"`) a bad
            image or an empty class folder; or no usable image at all.
        ValueError: Bad arguments.
    """
    names = class_folders(root)
    items: list[tuple[str, int]] = []
    skipped: list[dict] = []
    for label, name in enumerate(names, start=1):
        files = list_images(os.path.join(root, name))
        if not files:
            skipped.append(
                {
                    "input": os.path.join(root, name),
                    "reason": "empty class folder: no image files (.jpg, .jpeg, .png, .bmp, "
                    ".tif, .ppm, .webp)",
                }
            )
        items += [(path, label) for path in files]

    def make(item: tuple[str, int]) -> Record:
        path, label = item
        image = read_image_file(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        return Record(
            source_id=f"{names[label - 1]}/{stem}",
            image_bytes=image.data,
            image_format=image.format,
            height=image.rgb.shape[0],
            width=image.rgb.shape[1],
            channels=3,
            orientation=image.orientation,
            image_labels=np.array([label], np.int64),
        )

    return write_dataset(
        output,
        items,
        make,
        item_name=lambda item: item[0],
        num_shards=num_shards,
        workers=workers,
        on_error=on_error,
        classes=names,
        ignore_label=None,
        task="classification",
        arguments={
            "converter": "folders",
            "root": os.path.abspath(root),
            "num_shards": num_shards,
            "on_error": on_error,
        },
        skipped=skipped,
        extra={
            "images_per_class": {
                n: sum(1 for _, lb in items if lb == i + 1) for i, n in enumerate(names)
            }
        },
        progress=progress,
    )
