"""Converter for one sub-folder of images per class (the ImageNet / Keras
`image_dataset_from_directory` layout): image-level labels only.

`ROOT/CLASS_NAME/*.jpg|png|...`: the class names are the sub-folder names, sorted; every image
gets the one label of its folder as `image/class/label` (1-based, as box labels: the label of
`classes[i]` is `i + 1`) and the source_id `CLASS_NAME/STEM`. Files directly in `ROOT` and
hidden files and folders are ignored, as Keras does, and so are the files and folders that
operating systems and file managers leave beside images (`OS_METADATA`: `Thumbs.db`,
`desktop.ini`, `__MACOSX/`, ...), wherever they are.

A class folder named "background" (any case) is refused, naming the way out: rename it (e.g.
`no_object`) to keep its images as a class of their own, or move it out of `ROOT`. Its name,
not its images, is the problem: this project reads a class list starting with "background" as
a segmentation list whose id 0 is no class (`keras_dense.data.class_lists.object_classes`), and
sorted folder names put it first whenever the other names sort after it (`background/`,
`person/`): the classifier would then have the one class "person", learnt from the background
images (label 1), while the person images' label 2 would fall outside it. Wherever it sorts,
`pseudo-label` masks would name both id 0 and that class "background".

Everything else under a class folder is converted or named: a folder inside it
(`cat/sub/x.png`) and a file that is not an image this converter reads (`cat/x.gif`) stop the
conversion (`--on-error skip`: listed in the manifest's `skipped`); two images of one stem in
one class folder (`dog/a.png`, `dog/a.jpg`, one source_id) are refused, as by the pairs
converter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from keras_dense.data.converters.image_mask_pairs import refuse_duplicate_stems
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import IMAGE_EXTENSIONS, list_images, read_image_file
from keras_dense.data.schema import Record
from keras_dense.data.storage import is_folder, list_folder
from keras_dense.data.writer import write_dataset

# Names (compared in lower case) of what operating systems and file managers write beside
# images, ignored as hidden files are: Windows Explorer's thumbnail caches and folder settings,
# the Windows recycle bin and volume data, macOS Finder's custom-icon file and Archive
# Utility's resource-fork folder (hidden files, `.DS_Store` and `._*` included, are ignored
# anyway), and the thumbnail folders of Synology and QNAP NAS indexers.
OS_METADATA = frozenset(
    {
        "thumbs.db",
        "ehthumbs.db",
        "ehthumbs_vista.db",
        "desktop.ini",
        "$recycle.bin",
        "system volume information",
        "icon\r",
        "__macosx",
        "@eadir",
        "@__thumb",
    }
)


def ignored(name: str) -> bool:
    """Whether a file or folder name is hidden or OS metadata (`OS_METADATA`)."""
    return name.startswith(".") or name.lower() in OS_METADATA


def class_folders(root: str) -> list[str]:
    """The sorted sub-folder names of `root`, hidden ones and OS metadata left out.

    Raises:
        BadInputError: `root` is not a folder or has no sub-folder, or a folder is named
            "background" (see the module docstring).
    """
    if not is_folder(root):
        raise BadInputError(root, "--root: no such folder")
    names = sorted(
        name
        for name in list_folder(root)
        if not ignored(name) and is_folder(os.path.join(root, name))
    )
    if not names:
        raise BadInputError(
            root, "no class sub-folders: expected ROOT/CLASS_NAME/image files, one per class"
        )
    for name in names:
        if name.lower() == "background":
            raise BadInputError(
                os.path.join(root, name),
                f"class folder {name!r}: a class list starting with 'background' reads as a "
                "segmentation list whose id 0 is no class (the classifier would drop it and "
                "shift every label), and pseudo-label masks call id 0 'background'; rename the "
                "folder (e.g. 'no_object') to keep its images as a class of their own, or move "
                "it out of --root to leave them out",
            )
    return names


def unconverted_entries(folder: str) -> list[dict]:
    """What a class folder holds besides its images, each with the reason it is not converted.

    Args:
        folder: A class folder.

    Returns:
        `{"input", "reason"}` for every sub-folder (with its file count) and every file
        without an image extension, hidden ones and OS metadata (`ignored`) left out.
    """
    name = os.path.basename(folder)
    found = []
    for entry in sorted(list_folder(folder)):
        path = os.path.join(folder, entry)
        if ignored(entry):
            continue
        if is_folder(path):
            count = sum(not ignored(f) for _, _, files in os.walk(path) for f in files)
            found.append(
                {
                    "input": path,
                    "reason": f"a folder inside the class folder {name!r} ({count} file"
                    f"{'s' if count != 1 else ''}): not converted; images go directly in "
                    "ROOT/CLASS_NAME/ (move them up, or make the folder a class of its own)",
                }
            )
        elif not entry.lower().endswith(IMAGE_EXTENSIONS):
            found.append(
                {
                    "input": path,
                    "reason": "not an image file this converter reads (expected one of "
                    f"{', '.join(IMAGE_EXTENSIONS)}): not converted",
                }
            )
    return found


def convert_folders(
    root: str,
    output: str,
    num_shards: int = 1,
    on_error: str = "fail",
    workers: int = 1,
    runner: str = "local",
    beam_options: Sequence[str] = (),
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
        runner: `"local"` (threads) or `"beam"` (an Apache Beam pipeline writing the same
            shards; see `keras_dense.data.beam_writer`).
        beam_options: `KEY=VALUE` Beam pipeline options (`--beam-option`).
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
        refuse_duplicate_stems(files, f"its source_id {name}/STEM")
        skipped += unconverted_entries(os.path.join(root, name))
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
        runner=runner,
        beam_options=beam_options,
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
