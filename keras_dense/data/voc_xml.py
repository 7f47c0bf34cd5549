"""Parsing PASCAL VOC annotation XML files."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from keras_dense.data.errors import BadInputError
from keras_dense.data.storage import read_bytes


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
    if child is None or child.text is None or not child.text.strip():
        raise BadInputError(path, f"{where}: missing <{tag}>")
    try:
        value = float(child.text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadInputError(path, f"{where}: <{tag}> is {child.text!r}, expected a finite number")
    return value


def _pixels(node, tag: str, path: str) -> int:
    """A `<size>` entry: a whole number of pixels (`40` or `40.0`)."""
    value = _number(node, tag, path, "<size>")
    if value != int(value):
        text = node.findtext(tag)
        raise BadInputError(path, f"<size>: <{tag}> is {text!r}, expected a whole number of pixels")
    return int(value)


# `<difficult>` as tools write it: VOC and LabelImg 0/1, some exporters true/false or 1.0;
# CVAT writes "Unspecified"-style placeholders for unset attributes.
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"", "0", "0.0", "false", "no", "unspecified"}


def _flag(obj, tag: str, path: str, where: str) -> bool:
    text = (obj.findtext(tag) or "").strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise BadInputError(
        path, f"{where}: <{tag}> is {text!r}, expected 0 or 1 (also true/false, Unspecified)"
    )


def _why(path: str, err: Exception) -> str:
    """The parser's message, or what is really wrong: text that is not UTF-8 (ANSI, Latin-1)
    without an `encoding` declaration, which the parser reports as an "invalid token"."""
    if not isinstance(err, ET.ParseError):
        return str(err)
    data = read_bytes(path)
    if b"encoding=" in data[:200]:
        return str(err)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data[: bad.start].count(b"\n") + 1
        return (
            f"not UTF-8: byte {data[bad.start]:#04x} at line {line}, and no encoding "
            "declaration; save it as UTF-8"
        )
    return str(err)


def parse_voc_xml(path: str) -> VocAnnotation:
    """Parses a VOC annotation file.

    Args:
        path: The XML file.

    Returns:
        The annotation.

    Raises:
        BadInputError: The XML is malformed, of another layout, or lacks required fields, or a
            number is not finite, a size not whole, a `<difficult>` flag not 0/1.
    """
    try:
        root = ET.fromstring(read_bytes(path))
    except (ET.ParseError, OSError) as err:
        raise BadInputError(path, f"unreadable annotation XML ({_why(path, err)})") from None
    if root.tag != "annotation":
        raise BadInputError(
            path,
            f"the root element is <{root.tag}>, expected a VOC <annotation> (one file per "
            "image; CVAT's 'for images' XML and other layouts are not VOC)",
        )
    size = root.find("size")
    width = height = None
    if size is not None and size.find("width") is not None:
        width = _pixels(size, "width", path)
        height = _pixels(size, "height", path)
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
        difficult = _flag(obj, "difficult", path, where)
        annotation.objects.append(VocObject(name, *coords, difficult=difficult))
    return annotation
