"""An exclusive lock file that goes away with its holder, however it ends, and leaves no file.

A `flock` lock belongs to the open file: the kernel drops it when its process ends, even on
SIGKILL. So "the lock is held" means exactly "a live process holds it", whatever that process's
PID namespace or host name. A recorded PID cannot say as much: a process in another PID
namespace on the same machine looks dead, and one whose container was restarted under another
host name looks alive forever.

The holder removes the file before it lets go of the lock. Another process may have opened the
file just before, and then locks a file that no longer has a name; so `try_acquire` checks that
the path still names the file it locked, and tries again when it does not.

Some file systems have no `flock` (some FUSE and SMB mounts answer ENOLCK or EOPNOTSUPP;
Windows has no `fcntl`). There `try_acquire` raises `LockUnsupportedError`, and the caller falls
back on whatever else it knows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

# What `flock` answers on a file system that does not support it.
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_NOTE_BYTES = 200
_EXCLUSIVE_NOW = fcntl.LOCK_EX | fcntl.LOCK_NB if fcntl is not None else 0


class LockUnsupportedError(Exception):
    """The file system (or the platform) has no `flock`."""


def _flock(fd: int, operation: int) -> None:
    """`fcntl.flock` (one place, so tests can play a file system without locks)."""
    if fcntl is None:
        raise OSError(errno.ENOSYS, "no fcntl on this platform")
    fcntl.flock(fd, operation)


def _open(path: str) -> tuple[int, bool]:
    """The lock file, opened (created when missing); and whether this call created it."""
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), False
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        try:  # a read-only folder: a lock file that exists can still be tested
            return os.open(path, os.O_RDONLY), False
        except FileNotFoundError:
            raise err from None


class FileLock:
    """An exclusive `flock` on `path`, which exists only while someone holds it.

    Args:
        path: The lock file.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def try_acquire(self, note: str = "") -> bool:
        """Takes the lock if no one holds it, without waiting.

        Args:
            note: Written into the lock file for others' messages (e.g. the PID and host).

        Returns:
            True when taken; False when another open file (of this or another live process)
            holds it.

        Raises:
            LockUnsupportedError: The file system has no `flock`.
            OSError: The lock file cannot be created or opened.
        """
        if self._fd is not None:
            return True
        while True:
            fd, created = _open(self.path)
            try:
                _flock(fd, _EXCLUSIVE_NOW)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as err:
                os.close(fd)
                if created:
                    with contextlib.suppress(OSError):
                        os.remove(self.path)
                if err.errno in _UNSUPPORTED:
                    raise LockUnsupportedError(f"{self.path}: no file locks here ({err})") from None
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                if note:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, note.encode()[:_NOTE_BYTES], 0)
                return True
            os.close(fd)  # its holder removed it meanwhile: lock the file now at the path

    def acquire(self, wait_s: float, note: str = "", poll_s: float = 0.05) -> bool:
        """`try_acquire`, again every `poll_s` seconds for up to `wait_s` seconds.

        Returns:
            Whether the lock was taken.

        Raises:
            LockUnsupportedError: The file system has no `flock`.
            OSError: The lock file cannot be created or opened.
        """
        deadline = time.monotonic() + wait_s
        while not self.try_acquire(note):
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def note(self) -> str:
        """What the holder wrote into the lock file ("" when nothing or unreadable)."""
        try:
            with open(self.path, "rb") as f:
                return f.read(_NOTE_BYTES).decode(errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Removes the lock file, then lets go of the lock (nothing when not held)."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # gone, or a read-only folder
                os.remove(self.path)
        finally:
            os.close(self._fd)
            self._fd = None
