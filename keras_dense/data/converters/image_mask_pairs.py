"""Matching a folder of images with a folder of masks by file stem (pairs, instances)."""

from __future__ import annotations

import os

import numpy as np

from keras_dense.data.classes import read_split_file
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import list_images
from keras_dense.data.storage import is_file, is_folder, join


def file_stem(path: str) -> str:
    """The file name without folder and extension: the record's `source_id`."""
    return os.path.splitext(os.path.basename(path))[0]


def refuse_duplicate_stems(
    image_files: list[str], names: str = "its mask and its source_id"
) -> None:
    """Two images with one stem (`a.png`, `a.jpg`) would share one mask and one source_id.

    Args:
        image_files: The image paths.
        names: What the stem names, for the message.

    Raises:
        BadInputError: Naming the first clash.
    """
    by_stem: dict[str, list[str]] = {}
    for path in image_files:
        by_stem.setdefault(file_stem(path), []).append(path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        stem, paths = next(iter(sorted(clashes.items())))
        more = f" (and {len(clashes) - 1} more stems)" if len(clashes) > 1 else ""
        raise BadInputError(
            paths[0],
            f"images {' and '.join(paths)} share the stem {stem!r}{more}: each image needs "
            f"its own stem, which names {names}; rename or remove one",
        )


def pair_images_with_masks(
    images: str, masks: str, mask_suffix: str = "", split_file: str | None = None
) -> tuple[list[tuple[str, str]], list[dict]]:
    """Pairs `images/STEM.ext` with `masks/STEM{mask_suffix}.png`.

    Args:
        images: Folder of images.
        masks: Folder of masks.
        mask_suffix: Suffix after the stem in mask names.
        split_file: Optional file of stems to keep (first column of each line), in its order.

    Returns:
        `(pairs, skipped)`: `(image, mask)` paths in order, and `{"input", "reason"}` entries
        for split-file stems without an image and images without a mask.

    Raises:
        BadInputError: A folder is missing or holds no image, or two images share a stem.
    """
    for folder, flag in ((images, "--images"), (masks, "--masks")):
        if not is_folder(folder):
            raise BadInputError(folder, f"{flag}: no such folder")
    image_files = list_images(images)
    if not image_files:
        raise BadInputError(
            images,
            "empty input folder: no image files (.jpg, .jpeg, .png, .bmp, .tif, .ppm, .webp)",
        )
    refuse_duplicate_stems(image_files)
    skipped: list[dict] = []
    if split_file is not None:
        wanted = read_split_file(split_file)
        by_stem = {file_stem(p): p for p in image_files}
        skipped += [
            {
                "input": f"{split_file}:{s}",
                "reason": f"listed in the split file but no image {s}.* in {images}",
            }
            for s in wanted
            if s not in by_stem
        ]
        image_files = [by_stem[s] for s in wanted if s in by_stem]
    pairs = []
    for path in image_files:
        mask_path = join(masks, file_stem(path) + mask_suffix + ".png")
        if is_file(mask_path):
            pairs.append((path, mask_path))
        else:
            skipped.append(
                {"input": path, "reason": f"image without an annotation: expected mask {mask_path}"}
            )
    return pairs, skipped


def values_present(mask: np.ndarray) -> np.ndarray:
    """(256,) bool: which values an 8-bit mask holds (a bincount, cheaper than `np.unique`)."""
    return np.bincount(mask.ravel(), minlength=256).astype(bool)


def only_background_and_ignore(present: np.ndarray, ignore_label: int) -> bool:
    """Whether a mask holds the ignore label and otherwise at most background (0).

    Args:
        present: `values_present` of the mask.
        ignore_label: The ignore value.
    """
    others = present.copy()
    others[0] = others[ignore_label] = False
    return bool(present[ignore_label]) and not others.any()


def refuse_ignore_only_set(ignore_only: list[str], num_masks: int, ignore_label: int) -> None:
    """Refuses a mask set in which no mask holds a class: only background and ignore.

    A binary mask set saved as 0/255 has its objects at 255, the ignore label: they would be
    left out of training and scoring without a word. One such mask among masks holding
    classes is a tile with no object (a no-data border, a void outline) and is converted.

    Args:
        ignore_only: The masks of only 0 and the ignore label, in input order (not empty).
        num_masks: The number of masks read.
        ignore_label: The ignore value.

    Raises:
        BadInputError: Naming the first mask, a few others and the `--remap` that makes the
            objects a class.
    """
    names = ", ".join(os.path.basename(p) for p in ignore_only[:3])
    more = f" and {len(ignore_only) - 3} more" if len(ignore_only) > 3 else ""
    raise BadInputError(
        ignore_only[0],
        f"no mask holds a class id other than 0: {len(ignore_only)} of the {num_masks} masks "
        f"hold only 0 and the ignore label {ignore_label} (after --remap) ({names}{more}), "
        f"so nothing would be learnt from them. The objects of a binary mask set saved as "
        f"0/{ignore_label} are at the ignore label: --remap {ignore_label}:1 makes them class 1",
    )
