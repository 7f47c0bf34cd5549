"""Parsing PASCAL VOC annotation XML files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from keras_dense.data.errors import BadInputError


@dataclass
class VocObject:
    """One `<object>`: class name, VOC pixel box (1-based, inclusive) and flags."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False


@dataclass
class VocAnnotation:
    """One annotation file."""

    path: str
    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject] = field(default_factory=list)


def _number(node, tag: str, path: str, where: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise BadInputError(path, f"{where}: missing <{tag}>")
    try:
        return float(child.text)
    except ValueError:
        raise BadInputError(
            path, f"{where}: <{tag}> is {child.text!r}, expected a number"
        ) from None


def parse_voc_xml(path: str) -> VocAnnotation:
    """Parses a VOC annotation file.

    Args:
        path: The XML file.

    Returns:
        The annotation.

    Raises:
        BadInputError: The XML is malformed or lacks required fields.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise BadInputError(path, f"unreadable annotation XML ({err})") from None
    size = root.find("size")
    width = height = None
    if size is not None and size.find("width") is not None:
        width = int(_number(size, "width", path, "<size>"))
        height = int(_number(size, "height", path, "<size>"))
    filename = root.findtext("filename")
    annotation = VocAnnotation(path, filename.strip() if filename else None, width, height)
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"object #{k} ({name or 'no name'})"
        if not name:
            raise BadInputError(path, f"{where}: missing <name>")
        box = obj.find("bndbox")
        if box is None:
            raise BadInputError(path, f"{where}: missing <bndbox>")
        coords = [_number(box, t, path, where) for t in ("xmin", "ymin", "xmax", "ymax")]
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        annotation.objects.append(VocObject(name, *coords, difficult=difficult))
    return annotation
