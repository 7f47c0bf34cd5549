"""The journal of a shard set's commit: what it records, how the renames run, and how a dead
writer's commit is finished or rolled back.

A shard set is `DIR/NAME-0000k-of-0000N.tfrecord` plus its manifest `DIR/NAME.json`. The writer
prepares every new file completely under a temporary name (`*.tmp-PID`, fsynced), then renames
them into place. Renames of several files are not atomic together, so before the first one it
writes the journal `DIR/NAME.commit.json` (temporary name, fsync, rename). The journal lists
each rename (source, target, and the backup name `TARGET.old.tmp-PID` of the target's old
file, if it has one), the old shards to retire (those of another shard count) and the writer's
PID and host (for messages). Then, in order: each old target to its backup and its source onto
it, the retired shards to their backups, fsync of the folder; the journal is marked
`"phase": "cleanup"` (atomically); the backups are removed, the journal last.

The rule that settles a dead writer's journal (`recover`) is deterministic:

- forward, when every new file still exists: at its temporary name, or already renamed (its
  target exists and the target's old file, if any, is in its backup: backups are removed only
  in the cleanup phase). The remaining renames are done, backups and retired shards removed.
  This is the normal case: the new files are complete before the journal exists, so the
  journal is the commit point.
- back, when a new file is gone (removed by hand or by another tool): each backup goes back
  onto its target, new files that had no old one are removed, the old set is whole again.

A recovery that is itself killed leaves the journal (it is removed last) and is redone. Who may
recover, and when, is `shard_commit`'s business (only the holder of the set's commit lock).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Sequence

from keras_dense.utils.files import (
    atomic_write_bytes,
    process_identity,
    remove_quietly,
    temporary_path,
)

JOURNAL_FORMAT = "keras_dense.commit/1"
JOURNAL_SUFFIX = ".commit.json"


def journal_path(output: str) -> str:
    """The commit journal of `DIR/NAME`: `DIR/NAME.commit.json`."""
    return f"{output}{JOURNAL_SUFFIX}"


def shard_set_glob(output: str) -> str:
    """A glob of every shard named like `DIR/NAME-0000k-of-0000N.tfrecord`, whatever N."""
    digits = "[0-9]" * 5
    return f"{glob.escape(output)}-{digits}-of-{digits}.tfrecord"


def fsync_dir(directory: str) -> None:
    """Makes the folder's renames durable (where the platform allows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def encode(content: dict) -> bytes:
    """A journal's bytes."""
    return (json.dumps(content, indent=1) + "\n").encode()


def write_journal(journal: str, content: dict) -> None:
    """Puts the complete journal in place, atomically, and makes it durable."""
    atomic_write_bytes(journal, encode(content))
    fsync_dir(os.path.dirname(os.path.abspath(journal)))


def read_journal(journal: str) -> dict | None:
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


def plan(output: str, renames: Sequence[tuple[str, str]]) -> dict:
    """The journal of renaming `(source, target)` pairs onto the set `output`, as it is now.

    Shards named like the set's that are not targets are retired.
    """

    def base(path):
        return None if path is None else os.path.basename(path)

    keep = {os.path.abspath(target) for _, target in renames}
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
    fsync_dir(directory)
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
    fsync_dir(directory)
    return restored


def apply(journal: str, content: dict) -> None:
    """Runs the renames of a journal this process has just written, then removes it.

    Raises:
        OSError: A rename failed; the previous set is back in place and the journal removed.
    """
    directory, entries, retired = _paths(journal, content)
    try:
        for source, target, backup in entries:
            if backup is not None:
                os.replace(target, backup)
            os.replace(source, target)
        for target, backup in retired:
            os.replace(target, backup)
        fsync_dir(directory)
    except BaseException:
        _roll_back(directory, entries, retired)
        os.remove(journal)
        raise
    write_journal(journal, {**content, "phase": "cleanup"})  # every file is in place
    _roll_forward(directory, entries, retired)  # only removes the backups now
    os.remove(journal)
    fsync_dir(directory)


def recover(journal: str, content: dict, gone: str) -> str:
    """Finishes or undoes a dead writer's commit and removes its journal.

    Args:
        journal: The journal's path.
        content: Its content.
        gone: Why its writer is known to be dead, for the message.

    Returns:
        What was done, in words (for a warning naming the files).

    Raises:
        OSError: A rename failed (the journal is kept, to be settled again).
    """
    directory, renames, retired = _paths(journal, content)
    lost = _forward_possible(content, renames)
    head = f"{journal}: the commit of a shard set was interrupted ({gone})"
    if lost is None:
        done = _roll_forward(directory, renames, retired)
        old = [os.path.basename(target) for target, _ in retired]
        what = f"{head}; finished it: {', '.join(map(os.path.basename, done))} are in place" + (
            f"; removed the earlier set's {', '.join(old)}" if old else ""
        )
    else:
        done = _roll_back(directory, renames, retired)
        what = (
            f"{head} and cannot be finished ({lost} is missing); rolled back to the previous "
            "set" + (f": restored {', '.join(map(os.path.basename, done))}" if done else "")
        )
    os.remove(journal)
    fsync_dir(directory)
    return what
