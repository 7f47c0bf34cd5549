"""Committing a shard set so that a crash, even a SIGKILL, never leaves it torn or lost.

The renames of a commit are journalled (`shard_journal`: `DIR/NAME.commit.json`, and the rule
that finishes or rolls back a dead writer's commit). This module decides who commits and who
recovers, and when the set's debris may go.

- A writer holds an exclusive `flock` on `DIR/NAME.commit.lock` (`utils.file_lock.FileLock`)
  for its whole commit: from before its journal is written until after it is removed. Writers
  to one name take turns; one waits up to `COMMIT_WAIT_S` for another, then fails
  (`CommitBusyError`) naming it.
- The kernel drops that lock when its holder ends, however it ends. So a journal whose lock
  nobody holds is a dead writer's, whatever PID and host it records (a process in another PID
  namespace, a container restarted under another host name): whoever meets it takes the lock
  and settles it (`settle`: `write_dataset` to the same name, and every reader through
  `tfrecord_files.resolve_files` / `check_files`), with a `UserWarning` naming the files.
- A journal whose lock is held is a live writer's and is never touched: readers and writers
  wait up to `COMMIT_WAIT_S` for it, then fail naming the journal, the lock and the PID and host
  the journal records (those are for messages only).
- Where the file system has no `flock` (`file_lock.LockUnsupportedError`: some FUSE or SMB
  mounts, non-POSIX systems), liveness falls back on the PID, host and start time recorded in
  the journal (`utils.files.identity_alive`), writers take turns by creating the journal
  exclusively, and recoveries are not serialised. That fallback cannot see other hosts or PID
  namespaces: another host's journal counts as alive until it is settled from that host.

Debris: every temporary file is `TARGET.tmp-PID`, the backup of a replaced file
`TARGET.old.tmp-PID`. A backup whose target is missing is the only copy of that file, so
`prepare` (before a conversion) puts a dead process's such backup back onto its target, with a
warning; it deletes nothing. The set's other debris of dead processes is removed by `commit`
only after the new set has landed.

A new folder plus an atomic pointer swap would also work, but the shard names are the interface
(users and other tools glob `DIR/NAME-*.tfrecord`), and every reader would have to follow the
pointer; the journal keeps the files where they are.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence

from keras_dense.data.shard_journal import (
    JOURNAL_SUFFIX,
    apply,
    encode,
    fsync_dir,
    journal_path,
    plan,
    read_journal,
    recover,
    shard_set_glob,
    write_journal,
)
from keras_dense.utils.file_lock import FileLock, LockUnsupportedError
from keras_dense.utils.files import (
    identity_alive,
    pid_alive,
    process_identity,
    remove_quietly,
    temporary_path,
    write_durably,
)

LOCK_SUFFIX = ".commit.lock"
COMMIT_WAIT_S = 30.0
_POLL_S = 0.05
_DEBRIS = re.compile(r"^(?P<target>.+?)(?P<old>\.old)?\.tmp-(?P<pid>\d+)$")
# Without flock only: journals this process is committing, one commit at a time.
_ACTIVE: set[str] = set()
_COMMITTING = threading.Lock()


class CommitBusyError(RuntimeError):
    """A live process is committing the same shard set (names the journal and the PID)."""


def lock_path(output: str) -> str:
    """The commit lock of `DIR/NAME`: `DIR/NAME.commit.lock` (present only during a commit)."""
    return f"{output}{LOCK_SUFFIX}"


def _output_of(journal: str) -> str:
    return journal[: -len(JOURNAL_SUFFIX)] if journal.endswith(JOURNAL_SUFFIX) else journal


def _note() -> str:
    me = process_identity()
    return f"PID {me['pid']} on {me['host']}"


def _who(content: dict | None) -> str:
    return f"PID {content.get('pid')} on {content.get('host')}" if content else "an unknown process"


def _read_quietly(journal: str) -> dict | None:
    try:
        return read_journal(journal)
    except ValueError:
        return None


def _settle_held(journal: str, lock: str) -> None:
    """Settles the journal of a dead writer; the caller holds the set's lock."""
    try:
        content = read_journal(journal)
    except ValueError as err:  # journals are written atomically under the lock: damaged
        remove_quietly(journal)
        warnings.warn(
            f"{journal}: unreadable commit journal ({err}) removed; the shard set is checked "
            "against its manifest",
            stacklevel=3,
        )
        return
    if content is not None:
        gone = f"its writer, {_who(content)}, is gone: nobody holds {lock}"
        warnings.warn(recover(journal, content, gone), stacklevel=3)


def _busy_message(journal: str, lock: FileLock) -> str:
    content = _read_quietly(journal)
    named = f"its journal {journal} names {_who(content)}" if content else lock.note()
    return (
        f"a live process holds {lock.path}: it is committing this shard set ({named}), and has "
        f"been for over {COMMIT_WAIT_S:g} s; wait for it to finish, then run this again (the "
        "lock goes away with that process however it ends: if it hangs, stop it)"
    )


def settle(journal: str, busy_error: Callable[[str], Exception], wait: bool = True) -> bool:
    """Makes sure no unfinished commit is left at `journal`.

    A dead writer's commit (nobody holds the set's lock) is finished or rolled back, with a
    `UserWarning` saying which; a live writer's is waited for (up to `COMMIT_WAIT_S`) but never
    touched.

    Args:
        journal: `DIR/NAME.commit.json`.
        busy_error: Builds the exception raised when a live commit outlasts the wait.
        wait: Wait for a live commit; False returns at once, leaving it.

    Returns:
        Whether no journal is left.

    Raises:
        The `busy_error` exception; OSError when a recovery's renames fail, or the lock file
        cannot be created (a read-only folder).
    """
    deadline = time.monotonic() + COMMIT_WAIT_S
    lock = FileLock(lock_path(_output_of(journal)))
    while os.path.lexists(journal):
        try:
            taken = lock.try_acquire(_note())
        except LockUnsupportedError:
            return _settle_unlocked(journal, busy_error, wait, deadline)
        if taken:
            try:
                _settle_held(journal, lock.path)
            finally:
                lock.release()
            return True
        if not wait:
            return False
        if time.monotonic() >= deadline:
            raise busy_error(_busy_message(journal, lock))
        time.sleep(_POLL_S)
    return True


def commit(output: str, renames: Sequence[tuple[str, str]]) -> None:
    """Renames complete temporary files onto the shard set `output`, all or nothing.

    Shards named like the set's (`NAME-*-of-*.tfrecord`) that are not targets are retired
    (removed) in the same commit. A failure (an exception) rolls back at once; a kill is
    settled by whoever next reads or writes the set (see the module docstring). Once the new
    set is in place, the set's temporaries and backups of dead processes are removed.

    Args:
        output: `DIR/NAME`.
        renames: `(complete temporary source, target)` pairs, in order (the manifest last).

    Raises:
        CommitBusyError: Another live process holds the set's lock for too long.
        OSError: A rename failed (the previous set is back in place).
    """
    journal = journal_path(output)
    lock = FileLock(lock_path(output))
    try:
        taken = lock.acquire(COMMIT_WAIT_S, _note(), _POLL_S)
    except LockUnsupportedError:
        _commit_unlocked(output, renames)
        return
    if not taken:
        raise CommitBusyError(_busy_message(journal, lock))
    try:
        _settle_held(journal, lock.path)
        content = plan(output, renames)
        write_journal(journal, content)
        apply(journal, content)
        _remove_debris(output)
    finally:
        lock.release()


def prepare(output: str) -> None:
    """Before a conversion to `output`: settles a dead writer's unfinished commit, and puts
    back every dead process's backup whose target is missing (the only copy of that file),
    with a warning naming both. Deletes nothing; does nothing while a live process commits.

    Raises:
        OSError: A recovery or restore failed.
    """
    journal = journal_path(output)
    lock = FileLock(lock_path(output))
    try:
        if not lock.try_acquire(_note()):
            return  # a live commit: its backups are its own
    except LockUnsupportedError:
        if settle(journal, CommitBusyError, wait=False):
            _restore_backups(output, holding=False)
        return
    try:
        _settle_held(journal, lock.path)
        _restore_backups(output, holding=True)
    finally:
        lock.release()


def _debris(output: str):
    """`(path, target, is_backup, pid)` of the temporaries and backups of the set's files."""
    names = [shard_set_glob(output), glob.escape(output) + ".json"]
    patterns = [n + s for n in names for s in (".tmp-*", ".old.tmp-*")]
    patterns.append(glob.escape(journal_path(output)) + ".tmp-*")
    for path in sorted({p for pattern in patterns for p in glob.glob(pattern)}):
        match = _DEBRIS.match(path)
        if match:
            yield path, match.group("target"), bool(match.group("old")), int(match.group("pid"))


def _restore_backups(output: str, holding: bool) -> None:
    """Puts dead processes' backups whose target is missing back onto it. Holding the lock,
    no backup of this set belongs to a live commit, whatever its PID says."""
    for path, target, backup, pid in _debris(output):
        if not backup or os.path.lexists(target) or (not holding and pid_alive(pid)):
            continue
        os.replace(path, target)
        fsync_dir(os.path.dirname(os.path.abspath(target)))
        warnings.warn(
            f"{path}: the backup of {target}, left by process {pid} (gone) while it replaced "
            f"that file; {target} was missing, so this was its only copy: restored it onto "
            f"{target}",
            stacklevel=3,
        )


def _remove_debris(output: str) -> None:
    """After a commit landed: removes the set's temporaries of dead processes, and their
    backups whose target exists (a backup whose target is missing is kept: the only copy)."""
    for path, target, backup, pid in _debris(output):
        if pid_alive(pid) or (backup and not os.path.lexists(target)):
            continue
        remove_quietly(path)


# ------------------------------------------------------------------ without flock (fallback)


def _alive(journal: str, content: dict) -> bool:
    if content.get("pid") == os.getpid() and content.get("host") == process_identity()["host"]:
        return os.path.abspath(journal) in _ACTIVE  # else an orphan of this very process
    return identity_alive(content)


def _settle_unlocked(
    journal: str, busy_error: Callable[[str], Exception], wait: bool, deadline: float
) -> bool:
    """`settle` judging the writer by the PID, host and start time its journal records."""
    unreadable_since = None
    while True:
        try:
            content = read_journal(journal)
        except ValueError as err:
            # Being written right now (exclusive create, then write), or damaged: wait a
            # moment, then drop it. Renames begin only after the journal is complete.
            unreadable_since = unreadable_since or time.monotonic()
            if time.monotonic() - unreadable_since < 1.0:
                time.sleep(_POLL_S)
                continue
            remove_quietly(journal)
            warnings.warn(
                f"{journal}: unreadable commit journal ({err}) removed; the shard set is "
                "checked against its manifest",
                stacklevel=3,
            )
            return True
        if content is None:
            return True
        if not _alive(journal, content):
            gone = f"its writer, {_who(content)}, is gone (no file locks here: judged by PID)"
            warnings.warn(recover(journal, content, gone), stacklevel=3)
            continue
        if not wait:
            return False
        if time.monotonic() >= deadline:
            raise busy_error(
                f"{_who(content)} has been committing this shard set for over "
                f"{COMMIT_WAIT_S:g} s ({journal}); wait for it to finish. This file system has "
                "no locks, so a writer on another host or container cannot be seen from here: "
                "if that one is gone, read or write the set once on that host"
            )
        time.sleep(_POLL_S)


def _create_exclusive(journal: str, content: dict) -> bool:
    """Puts the complete journal in place unless one exists; False when one does."""
    data = encode(content)
    tmp = temporary_path(journal)
    try:
        with open(tmp, "wb") as f:
            write_durably(f, data)
        try:
            os.link(tmp, journal)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            try:
                fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                write_durably(f, data)
    finally:
        remove_quietly(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(journal)))
    return True


def _commit_unlocked(output: str, renames: Sequence[tuple[str, str]]) -> None:
    """`commit` where the file system has no `flock`: writers take turns on the journal."""
    journal = journal_path(output)
    key = os.path.abspath(journal)
    with _COMMITTING:
        while True:
            content = plan(output, renames)
            _ACTIVE.add(key)  # before the journal exists: this process's readers wait for it
            if _create_exclusive(journal, content):
                break
            _ACTIVE.discard(key)  # another's journal (or an orphan of ours): settle it first
            _settle_unlocked(journal, CommitBusyError, True, time.monotonic() + COMMIT_WAIT_S)
        try:
            again = plan(output, renames)
            if again != content:  # the set changed between planning and taking the journal
                write_journal(journal, again)
                content = again
            apply(journal, content)
            _remove_debris(output)
        finally:
            _ACTIVE.discard(key)
