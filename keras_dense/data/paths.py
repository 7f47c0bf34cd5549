"""File paths named inside annotation files, kept inside the folder they belong to."""

from __future__ import annotations

import os

from keras_dense.data.errors import BadInputError


def path_inside(folder: str, relative: str, where: str, flag: str = "--root") -> str:
    """`folder/relative`, refusing absolute paths and `..` that would leave `folder`.

    Args:
        folder: The folder the annotation's files must be in.
        relative: The file name the annotation gives.
        where: The annotation (file, record), for the message.
        flag: The option that named `folder`, for the message.

    Returns:
        The joined path.

    Raises:
        BadInputError: The name is absolute or leaves `folder`.
    """
    # Lexical: `..` and absolute names are refused, symbolic links inside the folder are not.
    base = os.path.normpath(os.path.abspath(folder))
    path = os.path.normpath(os.path.join(base, relative))
    if os.path.isabs(relative) or os.path.commonpath([base, path]) != base:
        raise BadInputError(
            where,
            f"file name {relative!r} points outside {flag} {folder}: expected a name inside it",
        )
    return os.path.join(folder, relative)
