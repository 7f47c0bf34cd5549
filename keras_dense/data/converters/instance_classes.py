"""The classes file of `convert instances`: `STEM,INSTANCE_ID,CLASS` lines and their matching.

A classes file is a UTF-8 CSV of `STEM,INSTANCE_ID,CLASS` lines (a byte-order mark is
ignored; blank lines and `#` comments are skipped). `STEM` may be `*` (any image) and
`INSTANCE_ID` may be `*` (any instance); the most specific line wins: `STEM,ID` over `STEM,*`
over `*,ID` over `*,*`. So `*,*,person` alone labels everything, and `FudanPed00001,2,bicycle`
overrides one instance.

The class list is every class the file names, in order of first appearance; box label =
index + 1. It depends on the file only, so every split converted with one file (`--split-file
train.txt`, then `val.txt`) gets the same list, whichever classes a split lacks. "background"
is not a class (it is id 0 of the masks, and a class list starting with it reads as a
segmentation list).

A line that labels no instance of any image in the images folder (every split's, not only the
one converted) is unused (`unused_class_lines`): a stem no image with a mask has (a typo), an
id beyond that image's instances, or instances that all have a more specific line.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import os
from collections.abc import Mapping, Sequence

from keras_dense.data.classes import read_text
from keras_dense.data.errors import BadInputError

WILDCARD = "*"
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
    reader = csv.reader(io.StringIO(read_text(path, "--classes-file"), newline=""))
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


def chosen_key(table: Mapping[tuple[str, str], str], stem: str, instance: int):
    """The most specific key of `table` that matches instance `instance` of `stem`, or None."""
    for key in (
        (stem, str(instance)),
        (stem, WILDCARD),
        (WILDCARD, str(instance)),
        (WILDCARD, WILDCARD),
    ):
        if key in table:
            return key
    return None


def class_of(table: Mapping[tuple[str, str], str], stem: str, instance: int) -> str | None:
    """The class of instance `instance` of `stem` (None: no line matches it)."""
    key = chosen_key(table, stem, instance)
    return None if key is None else table[key]


def unused_class_lines(
    lines: Sequence[ClassLine], instances: Mapping[str, int | None]
) -> list[tuple[ClassLine, str]]:
    """The lines of a classes file that label no instance, each with the reason.

    Args:
        lines: The classes file's lines.
        instances: Number of instances of every image with a mask in the images folder (all
            splits), by stem; None for a mask that could not be read (lines naming its stem
            are not judged: the mask is named when it is converted).

    Returns:
        `(line, reason)` for every line that is the chosen (most specific) line of no
        instance, in file order.
    """
    _, table = class_table(lines)
    known = {stem: count for stem, count in instances.items() if count is not None}
    used = {
        chosen_key(table, stem, k) for stem, count in known.items() for k in range(1, count + 1)
    }
    most = max(known.values(), default=0)
    unused = []
    for line in lines:
        stem, instance = line.key
        if line.key in used or (stem != WILDCARD and stem in instances and stem not in known):
            continue
        if stem != WILDCARD and stem not in instances:
            close = difflib.get_close_matches(stem, list(instances), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            why = f"no image with a mask has the stem {stem!r}{hint}"
        elif stem != WILDCARD and instance != WILDCARD and int(instance) > known[stem]:
            count = known[stem]
            why = f"{stem} has {count} instance{'s' if count != 1 else ''}"
        elif stem == WILDCARD and instance != WILDCARD and int(instance) > most:
            why = f"no image has {instance} instances (the most is {most})"
        elif stem != WILDCARD and known[stem] == 0:
            why = f"{stem}'s mask has no instance"
        else:
            why = "every instance it matches has a more specific line"
        unused.append((line, f"{line.text!r} matches no instance: {why}; fix or remove the line"))
    return unused
