"""Writing files so that a crash never leaves a half-written file where a complete one belongs.

Every temporary file is named `TARGET.tmp-PID` (a backup of a replaced file `TARGET.old.tmp-PID`),
so a later run can tell the debris of a dead process (removed by `remove_stale_temporaries`)
from the work of a live one (kept). A PID is only seen within its PID namespace: a process of
another container looks dead. Where that matters (deciding that a writer is gone and taking
over its work) hold a lock instead (`utils.file_lock`).

Files that name their writer (a commit journal) record `process_identity()`: the PID, the host
and the process's start time, for messages, and for `identity_alive` where no file lock is
available.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
from typing import BinaryIO

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


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """`(state, start time in clock ticks since boot)` of a process, from `/proc`; else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """When a process started (clock ticks since boot, Linux `/proc`), or None where unknown.

    With the PID it names one process for good: a PID reused later has another start time.
    """
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_identity() -> dict:
    """This process as `{"pid", "host", "start"}`, to record in files that others check."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": process_start_time(pid)}


def identity_alive(identity: dict) -> bool:
    """Whether the process a `process_identity` record names may still be running.

    A record from another host is assumed alive (its processes cannot be seen from here). On
    this host the PID must exist, not be a zombie, and, where both are known, have the
    recorded start time (otherwise the PID was reused by another process). A best guess: a
    process of another PID namespace looks dead; prefer a held `utils.file_lock.FileLock`.
    """
    if identity.get("host") not in (None, socket.gethostname()):
        return True
    pid = identity.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    recorded = identity.get("start")
    return state != "Z" and (recorded is None or recorded == start)


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


def write_durably(file: BinaryIO, data: bytes) -> None:
    """Writes `data` to an open binary file and forces it to disk (flush, then fsync)."""
    file.write(data)
    file.flush()
    os.fsync(file.fileno())


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
            write_durably(f, data)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
