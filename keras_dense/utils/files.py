"""Writing files so that a crash never leaves a half-written file where a complete one belongs.

Every temporary file is named `TARGET.tmp-PID`, so a later run can tell the debris of a dead
process (removed by `remove_stale_temporaries`) from the work of a live one (kept).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re

_TMP_SUFFIX = re.compile(r"\.tmp-(\d+)$")


def temporary_path(path: str) -> str:
    """The temporary name `PATH.tmp-PID` under which `path` is written before its rename."""
    return f"{path}.tmp-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(pattern: str) -> list[str]:
    """Removes `*.tmp-PID` files matching a glob whose writing process is dead.

    Args:
        pattern: A glob of temporary files, e.g. `DIR/NAME-*.tmp-*`.

    Returns:
        The files removed.
    """
    removed = []
    for path in glob.glob(pattern):
        match = _TMP_SUFFIX.search(path)
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


def remove_quietly(path: str) -> None:
    """Removes a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename.

    On any failure (disk full, interrupt) the temporary file is removed and `path` keeps its
    old content, if it had one.

    Args:
        path: The target file.
        data: Its complete content.
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
