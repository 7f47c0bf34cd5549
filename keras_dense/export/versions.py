"""The TF Serving folder layout `ROOT/NAME/<version>/` and atomic version writes.

TF Serving polls `ROOT/NAME` and loads the integer-named sub-folders as versions; any other
name (such as the temporary `.tmp-*` folders used here) is ignored. A version is written in a
temporary folder beside its final place and renamed when complete, so the server never sees
half a version.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class VersionExistsError(FileExistsError, ValueError):
    """The version folder exists already; versions are never overwritten."""


def check_model_name(name: str) -> str:
    """Returns `name` or raises ValueError unless it is a usable TF Serving model name."""
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise ValueError(
            f"name={name!r}: expected a model name of letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit)"
        )
    return name


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Sorted integer versions present in `model_dir` (empty if it does not exist)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(entry.name)
        for entry in os.scandir(model_dir)
        if entry.is_dir() and entry.name.isdigit()
    )


def resolve_version(model_dir: str | os.PathLike, version: int | None) -> int:
    """The version to write: `version`, or the next integer after the existing ones.

    Args:
        model_dir: `ROOT/NAME`.
        version: A positive int, or None.

    Returns:
        The version number.

    Raises:
        ValueError: `version` is not a positive int.
        VersionExistsError: The version exists already.
    """
    if version is None:
        existing = list_versions(model_dir)
        return existing[-1] + 1 if existing else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version={version!r}: expected a positive integer")
    target = os.path.join(model_dir, str(version))
    if os.path.exists(target):
        raise VersionExistsError(f"{target} exists already; versions are never overwritten")
    return version


@contextlib.contextmanager
def atomic_version_dir(model_dir: str | os.PathLike, version: int) -> Iterator[str]:
    """Yields a temporary folder that becomes `model_dir/<version>` when the block succeeds.

    The temporary folder lives in `model_dir` (same file system, so the rename is atomic) and
    is removed if the block raises.

    Raises:
        VersionExistsError: The version appeared in the meantime.
    """
    os.makedirs(model_dir, exist_ok=True)
    target = os.path.join(model_dir, str(version))
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a server may run as another user
    try:
        yield tmp
        if os.path.exists(target):
            raise VersionExistsError(f"{target} exists already; versions are never overwritten")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
