"""Committing a shard set so that a crash, even a SIGKILL, never leaves it torn.

A shard set is `DIR/NAME-0000k-of-0000N.tfrecord` plus its manifest `DIR/NAME.json`. The writer
prepares every new file completely under a temporary name (`*.tmp-PID`, fsynced); `commit`
then renames them into place. Renames of several files are not atomic together: a process
killed between two of them would leave the old manifest with some new shards, or shards that
no manifest lists, with backups nothing restores.

So the commit is journalled, like a database's write-ahead log. Before the first rename it
writes `DIR/NAME.commit.json` (under a temporary name, fsynced, then hard-linked into place,
which fails if another commit of the same name holds it, so concurrent writers take turns).
The journal lists each rename (source, target, and the backup name `TARGET.old.tmp-PID` of
the target's old file, if it has one), the old shards to retire (those of another shard count)
and the writer (`utils.files.process_identity`). Then, in order: each old target to its
backup and its source onto it, the retired shards to their backups, fsync of the folder; the
journal is marked `"phase": "cleanup"` (atomically); the backups are removed, the journal
last.

Whoever next meets the journal of a dead writer (`write_dataset` to the same name, and every
reader through `tfrecord_files.resolve_files` / `check_files`) settles it with `settle`, under
an exclusive lock, and says what it did in a `UserWarning` naming the files. The rule is
deterministic:

- forward, when every new file still exists: at its temporary name, or already renamed (its
  target exists and the target's old file, if any, is in its backup: backups are removed only
  in the cleanup phase). The remaining renames are done, backups and retired shards removed.
  This is the normal case: the new files are complete before the journal exists, so the
  journal is the commit point.
- back, when a new file is gone (removed by hand or by another tool): each backup goes back
  onto its target, new files that had no old one are removed, the old set is whole again.

A recovery that is itself killed leaves the journal (it is removed last) and is redone.

A journal whose writer is alive is never touched: others wait up to `COMMIT_WAIT_S` for it to
go, then fail naming it and the PID. A journal written on another host counts as alive.

A new folder plus an atomic pointer swap would also work, but the shard names are the interface
(users and other tools glob `DIR/NAME-*.tfrecord`), and every reader would have to follow the
pointer; the journal keeps the files where they are.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence

from keras_dense.utils.files import (
    identity_alive,
    process_identity,
    remove_quietly,
    temporary_path,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: recoveries are not serialised
    fcntl = None

JOURNAL_FORMAT = "keras_dense.commit/1"
JOURNAL_SUFFIX = ".commit.json"
COMMIT_WAIT_S = 30.0
_POLL_S = 0.05
_ACTIVE: set[str] = set()  # journals this process is committing right now
_COMMITTING = threading.Lock()  # one commit at a time per process keeps `_ACTIVE` exact


class CommitBusyError(RuntimeError):
    """A live process is committing the same shard set (names the journal and the PID)."""


def journal_path(output: str) -> str:
    """The commit journal of `DIR/NAME`: `DIR/NAME.commit.json`."""
    return f"{output}{JOURNAL_SUFFIX}"


def shard_set_glob(output: str) -> str:
    """A glob of every shard named like `DIR/NAME-0000k-of-0000N.tfrecord`, whatever N."""
    digits = "[0-9]" * 5
    return f"{glob.escape(output)}-{digits}-of-{digits}.tfrecord"


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _encode(content: dict) -> bytes:
    return (json.dumps(content, indent=1) + "\n").encode()


def _create_exclusive(journal: str, content: dict) -> bool:
    """Puts the complete journal in place unless one exists; False when one does."""
    data = _encode(content)
    tmp = temporary_path(journal)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    finally:
        remove_quietly(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(journal)))
    return True


def _replace_journal(journal: str, content: dict) -> None:
    """Rewrites a journal this process holds (atomic: temporary name, fsync, rename)."""
    tmp = temporary_path(journal)
    try:
        with open(tmp, "wb") as f:
            f.write(_encode(content))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, journal)
    finally:
        remove_quietly(tmp)


def _read(journal: str) -> dict | None:
    """The journal's content; None when it is gone. Raises ValueError when unreadable."""
    try:
        with open(journal, "rb") as f:
            content = json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(str(err)) from None
    if not isinstance(content, dict) or content.get("format") != JOURNAL_FORMAT:
        raise ValueError(f"not a {JOURNAL_FORMAT} journal")
    return content


def _alive(journal: str, content: dict) -> bool:
    if content.get("pid") == os.getpid() and content.get("host") == process_identity()["host"]:
        return os.path.abspath(journal) in _ACTIVE  # else an orphan of this very process
    return identity_alive(content)


def _paths(journal: str, content: dict):
    directory = os.path.dirname(os.path.abspath(journal))

    def at(name):
        return None if name is None else os.path.join(directory, os.path.basename(name))

    renames = [
        (at(e["source"]), at(e["target"]), at(e.get("backup"))) for e in content.get("renames", [])
    ]
    retired = [(at(e["target"]), at(e["backup"])) for e in content.get("retired", [])]
    return directory, renames, retired


def _forward_possible(content: dict, renames) -> str | None:
    """None when every new file still exists; else the first one that is gone."""
    if content.get("phase") == "cleanup":
        return None  # every rename was done
    for source, target, backup in renames:
        if os.path.exists(source):
            continue
        if os.path.exists(target) and (backup is None or os.path.exists(backup)):
            continue  # renamed already
        return source
    return None


def _roll_forward(directory: str, renames, retired) -> list[str]:
    for source, target, _ in renames:
        if os.path.exists(source):
            os.replace(source, target)
    for target, _ in retired:
        remove_quietly(target)
    _fsync_dir(directory)
    for _, _, backup in renames:
        if backup is not None:
            remove_quietly(backup)
    for _, backup in retired:
        remove_quietly(backup)
    return [target for _, target, _ in renames]


def _roll_back(directory: str, renames, retired) -> list[str]:
    restored = []
    for source, target, backup in reversed(renames):
        if backup is not None and os.path.exists(backup):
            os.replace(backup, target)
            restored.append(target)
        elif backup is None and not os.path.exists(source):
            remove_quietly(target)  # a new file where there was none before
        remove_quietly(source)
    for target, backup in retired:
        if os.path.exists(backup):
            os.replace(backup, target)
            restored.append(target)
    _fsync_dir(directory)
    return restored


def _recover(journal: str, content: dict) -> str:
    """Finishes or undoes a dead writer's commit; returns what was done, in words."""
    directory, renames, retired = _paths(journal, content)
    lost = _forward_possible(content, renames)
    who = f"PID {content.get('pid')} on {content.get('host')}"
    if lost is None:
        done = _roll_forward(directory, renames, retired)
        gone = [os.path.basename(target) for target, _ in retired]
        what = (
            f"{journal}: the commit of a shard set was interrupted ({who} is gone); "
            f"finished it: {', '.join(map(os.path.basename, done))} are in place"
            + (f"; removed the earlier set's {', '.join(gone)}" if gone else "")
        )
    else:
        done = _roll_back(directory, renames, retired)
        what = (
            f"{journal}: the commit of a shard set was interrupted ({who} is gone) and "
            f"cannot be finished ({lost} is missing); rolled back to the previous set"
            + (f": restored {', '.join(map(os.path.basename, done))}" if done else "")
        )
    os.remove(journal)
    _fsync_dir(directory)
    return what


@contextlib.contextmanager
def _locked(journal: str):
    """An exclusive lock on the journal file (serialises recoveries); yields False if it is
    gone or was replaced meanwhile."""
    try:
        fd = os.open(journal, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(journal))
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(fd)


def settle(journal: str, busy_error: Callable[[str], Exception], wait: bool = True) -> bool:
    """Makes sure no unfinished commit is left at `journal`.

    A dead writer's commit is finished or rolled back (`UserWarning` saying which); a live
    writer's is waited for (up to `COMMIT_WAIT_S`) but never touched.

    Args:
        journal: `DIR/NAME.commit.json`.
        busy_error: Builds the exception raised when a live commit outlasts the wait.
        wait: Wait for a live commit; False returns at once, leaving it.

    Returns:
        Whether no journal is left.

    Raises:
        The `busy_error` exception; OSError when a recovery's renames fail.
    """
    deadline = time.monotonic() + COMMIT_WAIT_S
    unreadable_since = None
    while True:
        try:
            content = _read(journal)
        except ValueError as err:
            # Being written right now (no hard links), or damaged: wait a moment, then drop it.
            # Renames begin only after the journal is complete, so none had begun.
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
            with _locked(journal) as still_there:
                if still_there:
                    content = _read(journal)
                    if content is not None and not _alive(journal, content):
                        warnings.warn(_recover(journal, content), stacklevel=3)
            continue
        if not wait:
            return False
        if time.monotonic() >= deadline:
            raise busy_error(
                f"PID {content.get('pid')} on {content.get('host')} has been committing this "
                f"shard set for over {COMMIT_WAIT_S:g} s ({journal}); wait for it to finish"
            )
        time.sleep(_POLL_S)


def _busy(message: str) -> Exception:
    return CommitBusyError(message)


def commit(output: str, renames: Sequence[tuple[str, str]]) -> None:
    """Renames complete temporary files onto the shard set `output`, all or nothing.

    Shards named like the set's (`NAME-*-of-*.tfrecord`) that are not targets are retired
    (removed) in the same commit. A failure (an exception) rolls back at once; a kill is
    settled by whoever next reads or writes the set (see the module docstring).

    Args:
        output: `DIR/NAME`.
        renames: `(complete temporary source, target)` pairs, in order (the manifest last).

    Raises:
        CommitBusyError: Another live process holds the set's journal for too long.
        OSError: A rename failed (the previous set is back in place).
    """
    journal = journal_path(output)
    directory = os.path.dirname(os.path.abspath(output))
    keep = {os.path.abspath(target) for _, target in renames}

    def plan() -> dict:
        def base(path):
            return None if path is None else os.path.basename(path)

        existing = sorted(glob.glob(shard_set_glob(output)))
        retired = [p for p in existing if os.path.abspath(p) not in keep]
        return {
            "format": JOURNAL_FORMAT,
            **process_identity(),
            "renames": [
                {
                    "source": base(source),
                    "target": base(target),
                    "backup": base(temporary_path(target + ".old"))
                    if os.path.lexists(target)
                    else None,
                }
                for source, target in renames
            ],
            "retired": [
                {"target": base(p), "backup": base(temporary_path(p + ".old"))} for p in retired
            ],
        }

    key = os.path.abspath(journal)
    with _COMMITTING:
        while True:
            content = plan()
            _ACTIVE.add(key)  # before the journal exists: this process's readers wait for it
            if _create_exclusive(journal, content):
                break
            _ACTIVE.discard(key)  # another's journal (or an orphan of ours): settle it first
            settle(journal, _busy)
        try:
            _commit_holding(journal, directory, content, plan())
        finally:
            _ACTIVE.discard(key)


def _commit_holding(journal: str, directory: str, content: dict, again: dict) -> None:
    """The renames, once the journal is ours; `again` is the plan made after taking it."""
    if again != content:  # the set changed between planning and taking the journal
        _replace_journal(journal, again)
        content = again
    _, entries, retired = _paths(journal, content)
    try:
        for source, target, backup in entries:
            if backup is not None:
                os.replace(target, backup)
            os.replace(source, target)
        for target, backup in retired:
            os.replace(target, backup)
        _fsync_dir(directory)
    except BaseException:
        _roll_back(directory, entries, retired)
        os.remove(journal)
        raise
    _replace_journal(journal, {**content, "phase": "cleanup"})  # every file is in place
    _roll_forward(directory, entries, retired)  # only removes the backups now
    os.remove(journal)
    _fsync_dir(directory)
