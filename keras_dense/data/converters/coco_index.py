"""Reading a COCO instances JSON into a checked index: unique ids, resolved references.

pycocotools' index keeps the last of two entries with one id, so a duplicated image, annotation
or category id silently replaces another (an image's boxes land on another image, a class's
boxes get another name). Here every id is unique or the file is refused, naming the entries;
an annotation whose image is not listed is named, not dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os

from keras_dense.data.classes import read_text
from keras_dense.data.errors import BadInputError
from keras_dense.data.paths import path_inside
from keras_dense.data.storage import is_file


@dataclasses.dataclass
class CocoIndex:
    """The usable content of a COCO instances JSON.

    Attributes:
        categories: The categories of the class list, by increasing id (label = index + 1).
        left_out: Categories left out of the class list (Roboflow's super-category), each
            `{"id", "name", "reason"}`.
        images: Image entries by id, each with `"file_name"` and `"source_id"` (the file name
            without its extension, subfolders kept) added.
        image_ids: The image ids in increasing order.
        annotations: By image id, `(name, annotation)` pairs in file order, where `name` is
            `"annotation ID"` (or `"annotations[i]"` without an id).
        rejected: `{"input", "reason"}` of annotations that belong to no listed image.
    """

    categories: list[dict]
    left_out: list[dict]
    images: dict
    image_ids: list
    annotations: dict
    rejected: list[dict]


def _kind(value) -> str:
    return {int: "an int", str: "a str"}.get(type(value), f"a {type(value).__name__}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value) -> bool:
    return _is_int(value) or (isinstance(value, str) and bool(value))


def _entries(data: dict, key: str, path: str, required: bool) -> list[dict]:
    """The list `data[key]`, every entry an object."""
    if key not in data:
        if required:
            raise BadInputError(path, f"no {key!r} list: not a COCO instances JSON")
        return []
    entries = data[key]
    if not isinstance(entries, list):
        raise BadInputError(path, f"{key!r} is {_kind(entries)}, expected a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadInputError(f"{path} {key}[{i}]", f"is {_kind(entry)}, expected an object")
    return entries


def _read(path: str) -> dict:
    if not is_file(path):
        raise BadInputError(path, "--annotations: no such file")
    text = read_text(path, "--annotations")  # a UTF-8 byte-order mark is ignored
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(path, f"not JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadInputError(
            path,
            f"the top level is {_kind(data)}, expected an object with 'images', 'annotations' "
            "and 'categories' (a COCO instances JSON)",
        )
    return data


def _categories(entries: list[dict], path: str) -> list[dict]:
    by_id: dict = {}
    by_name: dict = {}
    for i, cat in enumerate(entries):
        where = f"{path} categories[{i}]"
        cid, name = cat.get("id"), cat.get("name")
        if not _is_int(cid):
            raise BadInputError(where, f"field 'id' is {cid!r}: expected an integer")
        if not isinstance(name, str) or not name.strip():
            raise BadInputError(where, f"field 'name' is {name!r}: expected the class name")
        if cid in by_id:
            raise BadInputError(
                where, f"category id {cid} is also categories[{by_id[cid]}]'s: ids must be unique"
            )
        key = name.strip().casefold()
        if key in by_name:
            j = by_name[key]
            raise BadInputError(
                where,
                f"category name {name!r} is also categories[{j}]'s ({entries[j]['name']!r}): "
                "class names must differ (not only in case or spaces)",
            )
        by_id[cid], by_name[key] = i, i
    return sorted(entries, key=lambda c: c["id"])


def _images(entries: list[dict], path: str, folder: str) -> dict:
    images: dict = {}
    where_of: dict = {}
    by_file: dict = {}
    by_source: dict = {}
    for i, entry in enumerate(entries):
        where = f"{path} images[{i}]"
        iid, name = entry.get("id"), entry.get("file_name")
        if not _is_id(iid):
            raise BadInputError(where, f"field 'id' is {iid!r}: expected an integer (or a string)")
        first = next(iter(images), None)
        if first is not None and type(iid) is not type(first):
            raise BadInputError(
                where,
                f"image id {iid!r} is {_kind(iid)} while {where_of[first]}'s is {_kind(first)}: "
                "annotations could not be matched to images reliably",
            )
        if iid in images:
            raise BadInputError(
                where, f"image id {iid!r} is also {where_of[iid]}'s: ids must be unique"
            )
        if not isinstance(name, str) or not name:
            raise BadInputError(
                where, f"field 'file_name' is {name!r}: expected the image's file name"
            )
        path_inside(folder, name, where, "--images")
        file = os.path.normpath(name).replace(os.sep, "/")
        if file in by_file:
            raise BadInputError(
                where, f"file {file!r} is also {by_file[file]}'s: one image has two entries"
            )
        source_id = os.path.splitext(file)[0]
        if source_id in by_source:
            other, other_file = by_source[source_id]
            raise BadInputError(
                where,
                f"files {name!r} and {other_file!r} share the source_id {source_id!r} (the file "
                f"name without its extension; {other}): rename one",
            )
        by_file[file] = f"images[{i}]"
        by_source[source_id] = (f"images[{i}]", name)
        where_of[iid] = f"images[{i}]"
        images[iid] = {**entry, "source_id": source_id}
    return images


def _attach(entries: list[dict], path: str, images: dict) -> tuple[dict, list[dict]]:
    """Annotations by image id, and those of no listed image."""
    by_image: dict = {iid: [] for iid in images}
    rejected: list[dict] = []
    seen: dict = {}
    first = next(iter(images), None)
    for i, ann in enumerate(entries):
        aid = ann.get("id")
        if aid is not None:
            if not _is_id(aid):
                raise BadInputError(
                    f"{path} annotations[{i}]", f"field 'id' is {aid!r}: expected an integer"
                )
            if aid in seen:
                raise BadInputError(
                    f"{path} annotations[{i}]",
                    f"annotation id {aid!r} is also annotations[{seen[aid]}]'s: ids must be unique",
                )
            seen[aid] = i
        name = f"annotation {aid}" if aid is not None else f"annotations[{i}]"
        if "image_id" not in ann:
            rejected.append(
                {"input": f"{path} {name}", "reason": "no field 'image_id': it names no image"}
            )
            continue
        image_id = ann["image_id"]
        if not _is_id(image_id) or image_id not in images:
            hint = ""
            if _is_id(image_id) and first is not None and type(image_id) is not type(first):
                hint = f" (the images' ids are {type(first).__name__}s, e.g. {first!r})"
            rejected.append(
                {
                    "input": f"{path} {name}",
                    "reason": f"field 'image_id' is {image_id!r}, which no image in 'images' "
                    f"has{hint}",
                }
            )
            continue
        by_image[image_id].append((name, ann))
    return by_image, rejected


def _super_categories(categories: list[dict], entries: list[dict]) -> list[dict]:
    """Roboflow's project category: the `supercategory` of others, labelling no annotation."""
    used = {ann.get("category_id") for ann in entries}
    left_out = []
    for cat in categories:
        children = [
            c["name"] for c in categories if c is not cat and c.get("supercategory") == cat["name"]
        ]
        if children and cat["id"] not in used:
            left_out.append(
                {
                    "id": cat["id"],
                    "name": cat["name"],
                    "reason": f"the super-category of {children} (Roboflow exports the project "
                    "as such a category), labelling no annotation",
                }
            )
    return left_out


def load_coco(path: str, folder: str) -> CocoIndex:
    """Reads and checks a COCO instances JSON.

    Args:
        path: The JSON file (UTF-8; a byte-order mark is ignored).
        folder: The image folder (`--images`); file names must stay inside it.

    Returns:
        The index.

    Raises:
        BadInputError: Not JSON or not a COCO instances object; an entry without a usable id,
            name or file name; two categories, images or annotations of one id; two categories
            of one name; two images of one file or one source_id; image ids of mixed types.
    """
    data = _read(path)
    categories = _categories(_entries(data, "categories", path, required=True), path)
    images = _images(_entries(data, "images", path, required=True), path, folder)
    entries = _entries(data, "annotations", path, required=False)
    by_image, rejected = _attach(entries, path, images)
    left_out = _super_categories(categories, entries)
    dropped = {c["id"] for c in left_out}
    return CocoIndex(
        categories=[c for c in categories if c["id"] not in dropped],
        left_out=left_out,
        images=images,
        image_ids=sorted(images),
        annotations=by_image,
        rejected=rejected,
    )
