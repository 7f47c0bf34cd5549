"""An exclusive lock on a run folder, so that two trainings never write into one folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def run_lock(folder: str) -> Iterator[str]:
    """Holds an exclusive `flock` on `folder/.lock` (with this PID in it) while the block runs.

    The lock belongs to the open file, so it goes away with the process however that ends
    (even `kill -9`): a stale `.lock` file never blocks a later run.

    Args:
        folder: The run folder (created when missing).

    Yields:
        The lock file's path.

    Raises:
        RunLockedError: Another process holds the lock; the message names it and its PID.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"{folder}: another training (PID {holder}) is writing this run folder; wait for "
            "it to finish, or train into another --output"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
