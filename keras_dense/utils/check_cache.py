"""Remembering a finished check of a local file until the file changes.

A check that reads a whole file (every record of a shard) is remembered in
`$KERAS_DENSE_CACHE/NAME/` (default `~/.cache/keras_dense/NAME/`), one small JSON file per
checked file and parameters. An entry is used only while everything it was made from still
holds: the check's version, the file's absolute path, size and modification time (ns), and
the check's parameters. The parameters are compared as they are stored, after a JSON round
trip (a tuple reads back as a list), so an entry made with tuples matches again. The stat is
taken before the file is read, so a file changed during its check is read again next time.

Entries are written under a temporary name (`utils.files.temporary_path`) and renamed into
place; a cache that cannot be read or written (read-only, full) only costs a new check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from keras_dense.utils.files import temporary_path


def cache_root() -> str:
    """`$KERAS_DENSE_CACHE`, or `~/.cache/keras_dense`."""
    return os.environ.get("KERAS_DENSE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_dense"
    )


def _as_stored(value):
    """`value` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True))


class CheckCache:
    """The remembered results of one kind of check.

    Args:
        name: The folder under `cache_root()`.
        version: The check's version: entries of another version are ignored (raise it when
            the check changes what it accepts).
    """

    def __init__(self, name: str, version: int):
        self.name = name
        self.version = version

    def folder(self) -> str:
        """Where the entries are (read from the environment at each call)."""
        return os.path.join(cache_root(), self.name)

    def key(self, path: str, params: dict) -> dict:
        """What an entry for `path` checked with `params` must match; stat the file now.

        Args:
            path: A local file.
            params: The check's parameters, JSON-serialisable.

        Returns:
            The key, to pass to `load` and, after the check, to `store`.

        Raises:
            OSError: The file cannot be stat'ed.
        """
        stat = os.stat(path)
        return {
            "version": self.version,
            "path": os.path.abspath(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "params": _as_stored(params),
        }

    def _entry_path(self, key: dict) -> str:
        name = json.dumps([key["path"], key["params"]], sort_keys=True)
        return os.path.join(self.folder(), hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")

    def load(self, key: dict) -> dict | None:
        """The remembered result for `key`, or None when there is none for the file as it is."""
        try:
            with open(self._entry_path(key)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        result = entry.get("result")
        return result if isinstance(result, dict) else None

    def store(self, key: dict, result: dict) -> None:
        """Remembers `result` (JSON-serialisable) for `key`; failures are not errors."""
        target = self._entry_path(key)
        tmp = temporary_path(target)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"key": key, "result": result}, f)
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
