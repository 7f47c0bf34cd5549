"""The TF Serving folder layout `ROOT/NAME/<version>/` and atomic version writes.

TF Serving polls `ROOT/NAME` and loads the integer-named sub-folders as versions; any other
name (such as the temporary `.tmp-*` folders used here) is ignored. A version is written in a
temporary folder beside its final place and renamed when complete, so the server never sees
half a version. Two exports that chose the same next number both succeed: the rename of the
second fails on the first's folder, and it takes the next free number.

The last check of a new version (`before_commit`: does it serve the model the folder serves?)
and its rename happen under an exclusive lock on `NAME/.export.lock`
(`keras_dense.utils.file_lock`), so no other export's version can land between them. The lock
is held for a moment (no model is built or saved under it) and goes away with its holder,
even when that process is killed; a folder on a file system without file locks is committed
without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator

from keras_dense.utils.file_lock import FileLock, LockUnsupportedError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The lock file of a model folder (hidden: TF Serving and serving-config ignore it).
LOCK_NAME = ".export.lock"
# How long a commit waits for another export's commit (which holds the lock for a moment).
LOCK_WAIT_S = 120.0


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


@dataclasses.dataclass
class PendingVersion:
    """A version being written by `atomic_version_dir`.

    Attributes:
        path: The temporary folder to write the SavedModel into.
        version: The version it becomes; final once the `with` block has ended (another
            export may take the planned number meanwhile, see `atomic_version_dir`).
    """

    path: str
    version: int


@contextlib.contextmanager
def folder_lock(model_dir: str) -> Iterator[None]:
    """Holds the exclusive lock of a model folder (`LOCK_NAME`), waiting up to `LOCK_WAIT_S`.

    Raises:
        RuntimeError: Another export held it all that time (its PID and host are named).
    """
    lock = FileLock(os.path.join(model_dir, LOCK_NAME))
    try:
        taken = lock.acquire(LOCK_WAIT_S, f"export, pid {os.getpid()} on {socket.gethostname()}")
    except LockUnsupportedError:
        taken = None
    if taken is None:  # no file locks here: nothing to hold
        yield
        return
    if not taken:
        raise RuntimeError(
            f"{lock.path}: another export ({lock.note() or 'unknown process'}) has been "
            f"committing a version for over {LOCK_WAIT_S:g} s; try again when it has finished"
        )
    try:
        yield
    finally:
        lock.release()


def _commit(
    tmp: str,
    model_dir: str,
    version: int,
    take_next: bool,
    before_commit: Callable[[int], None] | None,
) -> int:
    """Renames `tmp` to `model_dir/<version>`, or with `take_next` to the next free number,
    holding the folder's lock across `before_commit` and the rename."""
    with folder_lock(model_dir):
        while True:
            target = os.path.join(model_dir, str(version))
            if before_commit is not None:
                before_commit(version)
            if not os.path.exists(target):
                try:
                    os.rename(tmp, target)  # atomic; fails if another writer's folder is there
                    return version
                except OSError:
                    if not os.path.exists(target):
                        raise
            if not take_next:
                raise VersionExistsError(f"{target} exists already; versions are never overwritten")
            version = max([version, *list_versions(model_dir)]) + 1


@contextlib.contextmanager
def atomic_version_dir(
    model_dir: str | os.PathLike,
    version: int,
    take_next: bool = False,
    before_commit: Callable[[int], None] | None = None,
) -> Iterator[PendingVersion]:
    """Yields a temporary folder that becomes `model_dir/<version>` when the block succeeds.

    The temporary folder lives in `model_dir` (same file system, so the rename is atomic) and
    is removed if the block raises.

    Args:
        model_dir: `ROOT/NAME`.
        version: The planned version.
        take_next: When another writer took `version` meanwhile (two exports at once), take
            the next free number instead of failing (for versions chosen automatically).
        before_commit: Called with the version about to be committed, right before the
            rename and under the folder's lock (no other version lands in between); it may
            raise to refuse (e.g. a version that appeared meanwhile serves another model).

    Yields:
        The `PendingVersion`; its `version` is final after the block.

    Raises:
        VersionExistsError: The version appeared in the meantime (without `take_next`).
    """
    model_dir = os.fspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a server may run as another user
    pending = PendingVersion(tmp, version)
    try:
        yield pending
        pending.version = _commit(tmp, model_dir, version, take_next, before_commit)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
