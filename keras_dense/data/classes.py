"""Class-name lists given on the command line or in a file."""

from __future__ import annotations

from collections.abc import Sequence

from keras_dense.data.errors import BadInputError
from keras_dense.data.storage import is_file, read_bytes

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def read_text(path: str, what: str) -> str:
    """The text of a UTF-8 file (a byte-order mark, as Excel and Notepad write, ignored).

    Args:
        path: The file.
        what: What the file is, for the message (e.g. "--classes-file").

    Raises:
        BadInputError: The file is not UTF-8 (naming it and the line; a ValueError).
    """
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInputError(
            f"{what} {path}",
            f"not UTF-8 text (byte {data[err.start]:#04x} at line {line}); save it as UTF-8",
        ) from None


def read_text_lines(path: str, what: str) -> list[str]:
    """The lines of a UTF-8 text file (see `read_text`).

    Raises:
        BadInputError: The file is not UTF-8 (naming it and the line; a ValueError).
    """
    return read_text(path, what).splitlines()


def resolve_classes(
    classes: Sequence[str] | str | None, classes_file: str | None
) -> list[str] | None:
    """Returns the class names from `--classes a,b,c` or `--classes-file F` (one per line).

    Args:
        classes: A comma-separated string or a sequence of names, or None.
        classes_file: A text file with one class name per line, or None.

    Returns:
        The names, or None when neither is given.

    Raises:
        ValueError: Both are given, a name repeats, the list is empty, or the file is not
            UTF-8.
        FileNotFoundError: The classes file does not exist.
    """
    if classes is not None and classes_file is not None:
        raise ValueError("give either --classes or --classes-file, not both")
    if classes_file is not None:
        if not is_file(classes_file):
            raise FileNotFoundError(f"--classes-file {classes_file}: no such file")
        names = [
            line.strip() for line in read_text_lines(classes_file, "--classes-file") if line.strip()
        ]
    elif classes is not None:
        names = classes.split(",") if isinstance(classes, str) else list(classes)
        names = [n.strip() for n in names if n.strip()]
    else:
        return None
    if not names:
        raise ValueError("the class list is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class names repeat: {duplicates}")
    return names


def read_split_file(path: str) -> list[str]:
    """Reads a split file: the first whitespace-separated token of each non-empty line.

    Args:
        path: The file (VOC `ImageSets` style; extra columns, as in Oxford Pets, are ignored).

    Returns:
        The stems, in file order, without duplicates.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: It is not UTF-8.
    """
    if not is_file(path):
        raise FileNotFoundError(f"split file {path}: no such file")
    stems = []
    for line in read_text_lines(path, "split file"):
        if line.strip() and not line.lstrip().startswith("#"):
            stems.append(line.split()[0])
    return list(dict.fromkeys(stems))
