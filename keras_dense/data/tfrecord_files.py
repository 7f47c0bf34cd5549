"""Finding TFRecord shards and checking them before they are read.

TensorFlow reports a damaged record as "corrupted record at N" without naming the file.
The checks here name it: `check_files` walks each shard's record framing (it seeks from
header to header) and, where the shards' manifest is present, compares SHA-256 digests.

A full check reads every byte (about 9 ms per MB), so each local shard is checked once: the
outcome is remembered in a small JSON file per shard in the verification cache
(`$KERAS_DENSE_CACHE/verified`, by default `~/.cache/keras_dense/verified`), keyed by the
shard's absolute path, size and modification time (ns). A shard that is rewritten or touched
is checked again (an edit that keeps both the size and the modification time, which needs a
deliberate `os.utime`, is not noticed); a cache that cannot be written is not an error (the
shard is then checked at every start). Cache files are written under a temporary name (with
the PID) and renamed, so concurrent workers never read a half-written entry.

A manifest is checked against the set on disk before any of its shards is trusted
(`shard_manifest.check_set`: no listed shard missing, no other shard of the name beside them,
whole entries). A pattern may select a subset of an intact set; a damaged set is refused,
naming the file and the manifest. A JSON beside the shards that is not a shard manifest (e.g.
another tool's `train.json`) is ignored.

Before listing or checking shards, an unfinished commit of their set (a writer killed during
its renames, `shard_commit`) is finished or rolled back, with a warning; a live one is waited
for.

Remote shards (`gs://`, `s3://`, `hdfs://`, anything with a URL scheme other than `file://`)
are not read up front: a full check would download every shard at every start. Their
damage shows up when the records are read (TensorFlow's `DataLossError`); run `check_files`
on a local copy, or with `remote=True`, to check them fully.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import struct
from collections.abc import Sequence
from typing import BinaryIO

from keras_dense.data.errors import BadInputError
from keras_dense.data.shard_commit import JOURNAL_SUFFIX, settle
from keras_dense.data.shard_manifest import (  # noqa: F401 (MANIFEST_FORMAT: imported from here)
    MANIFEST_FORMAT,
    SHARD_NAME,
    check_set,
    find_manifest,
    load_manifest,
    manifest_shards,
)
from keras_dense.data.storage import is_remote  # noqa: F401 (imported from here too)

CACHE_VERSION = 1


def _open(path: str) -> BinaryIO:
    """Opens a shard for reading (one place, so tests can count the reads)."""
    return open(path, "rb")


def resolve_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Expands glob patterns (or a list of them) into a sorted list of files.

    Args:
        file_pattern: A glob pattern, a file, or a list of either.

    Returns:
        The matching files, sorted, without duplicates.

    Raises:
        BadInputError: A pattern matches no file, or an interrupted commit of a matching shard
            set cannot be settled (see `shard_commit`).
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else file_pattern
    files: list[str] = []
    for pattern in patterns:
        if is_remote(str(pattern)):
            import tensorflow as tf

            matched = sorted(tf.io.gfile.glob(str(pattern)))
        else:
            _settle_commits(str(pattern))
            matched = sorted(glob.glob(str(pattern)))
        if not matched:
            raise BadInputError(str(pattern), "no TFRecord file matches this pattern")
        files.extend(matched)
    return sorted(dict.fromkeys(files))


def _settle(journal: str) -> None:
    """Finishes or rolls back a dead writer's commit, waits for a live one (`shard_commit`)."""
    try:
        settle(journal, lambda message: BadInputError(journal, message))
    except OSError as err:
        raise BadInputError(
            journal,
            f"the commit of this shard set was interrupted and cannot be settled here ({err}); "
            "read it once with write access to the folder",
        ) from None


def _settle_commits(pattern: str) -> None:
    """Settles the unfinished commits whose files `pattern` could match."""
    directory = os.path.dirname(pattern) or "."
    name = os.path.basename(pattern)
    for journal in glob.glob(os.path.join(directory, "*" + JOURNAL_SUFFIX)):
        try:
            with open(journal) as f:
                content = json.load(f)
            names = [e["target"] for e in content["renames"] + content["retired"]]
            concerned = any(fnmatch.fnmatchcase(os.path.basename(n), name) for n in names)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            concerned = True  # unreadable: settle it to be safe
        if concerned:
            _settle(journal)


def _journal_of(shard: str) -> str | None:
    match = SHARD_NAME.match(os.path.basename(shard))
    if not match:
        return None
    return os.path.join(os.path.dirname(shard), match.group("stem") + JOURNAL_SUFFIX)


def scan_framing(path: str) -> int:
    """Walks the record headers of a TFRecord file and returns its record count.

    Args:
        path: The file.

    Returns:
        The number of records.

    Raises:
        BadInputError: The file ends inside a record (truncated) or a length is impossible.
    """
    size = os.path.getsize(path)
    count = 0
    with _open(path) as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise BadInputError(
                    path,
                    f"truncated TFRecord file: record {count} header cut at byte {pos} of {size}",
                )
            (length,) = struct.unpack("<Q", header[:8])
            end = pos + 12 + length + 4
            if end > size:
                raise BadInputError(
                    path,
                    f"truncated or corrupt TFRecord file: record {count} "
                    f"claims {length} bytes but the file ends at byte {size}",
                )
            f.seek(end)
            pos = end
            count += 1
    return count


def count_records(file_pattern: str | Sequence[str]) -> int:
    """The number of records in the matching shards, from their record framing."""
    return sum(scan_framing(path) for path in resolve_files(file_pattern))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with _open(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> str:
    """The verification cache: `$KERAS_DENSE_CACHE/verified` or `~/.cache/keras_dense/verified`."""
    root = os.environ.get("KERAS_DENSE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_dense"
    )
    return os.path.join(root, "verified")


def _cache_file(path: str) -> str:
    key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), key + ".json")


def _stat_key(path: str) -> dict:
    stat = os.stat(path)
    return {
        "version": CACHE_VERSION,
        "path": os.path.abspath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _cached(path: str, key: dict) -> dict | None:
    """The remembered check of `path` if it is for the file as it is now."""
    try:
        with open(_cache_file(path)) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in key.items()):
        return None
    return entry


def _remember(path: str, key: dict, records: int, sha256: str | None) -> None:
    """Writes the cache entry atomically (temporary name with the PID, then rename)."""
    target = _cache_file(path)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({**key, "records": records, "sha256": sha256}, f)
        os.replace(tmp, target)
    except OSError:  # A read-only or full cache only costs a re-check next time.
        try:
            os.remove(tmp)
        except OSError:
            pass


def check_files(
    files: Sequence[str],
    verify_checksums: bool = True,
    use_cache: bool = True,
    remote: bool = False,
) -> None:
    """Checks shards before reading: framing always, then SHA-256 against the manifest, or,
    for shards the manifest does not cover, every record's CRC.

    A local shard whose path, size and modification time match a remembered successful check
    is not read again (see the module docstring); its remembered record count and digest are
    compared with the manifest as it is now.

    Args:
        files: Shard paths.
        verify_checksums: Compare each shard with its manifest entry, where one exists.
        use_cache: Use and update the verification cache.
        remote: Also read remote shards (`gs://` ...) in full; by default they are skipped.

    Raises:
        BadInputError: Naming the damaged or altered file, a shard missing from its set, a
            shard its manifest does not list, or a damaged manifest.
    """
    journals = {_journal_of(path) for path in files if not is_remote(path)}
    for journal in sorted(j for j in journals if j is not None and os.path.lexists(j)):
        _settle(journal)
    manifests: dict[str, dict | None] = {}
    for path in files:
        if is_remote(path):
            if remote:
                _check_record_crcs(path)
            continue
        if not os.path.isfile(path):
            raise BadInputError(path, "no such file (removed after the pattern was expanded?)")
        manifest_file = find_manifest(path) if verify_checksums else None
        entry = None
        if manifest_file is not None:
            if manifest_file not in manifests:
                entries = manifest_shards(manifest_file, load_manifest(manifest_file))
                if entries is not None:
                    check_set(manifest_file, entries)
                manifests[manifest_file] = entries
            entries = manifests[manifest_file]
            if entries is None:
                manifest_file = None
            else:
                entry = entries.get(os.path.basename(path))
        want_sha = bool(entry and entry.get("sha256"))
        key = _stat_key(path) if use_cache else None
        cached = _cached(path, key) if use_cache else None
        if cached is not None and (cached.get("sha256") or not want_sha):
            count, digest = cached["records"], cached.get("sha256")
        else:
            count = scan_framing(path)
            digest = _sha256(path) if want_sha else None
            if not want_sha:  # no manifest digest: check every record's own CRC instead
                _check_record_crcs(path)
        if entry is not None and entry.get("records") is not None and entry["records"] != count:
            raise BadInputError(
                path, f"holds {count} records but {manifest_file} says {entry['records']}"
            )
        if want_sha and entry["sha256"] != digest:
            raise BadInputError(
                path,
                f"SHA-256 differs from {manifest_file}: the shard is "
                "corrupt or was changed after conversion",
            )
        if use_cache and (cached is None or digest != cached.get("sha256")):
            _remember(path, key, count, digest)


def _check_record_crcs(path: str) -> None:
    """Reads a shard in full through TensorFlow (which checks each record's CRC-32C), naming
    the file if it is damaged; for shards without a manifest digest, and remote ones."""
    import tensorflow as tf

    index = 0
    try:
        for _ in tf.data.TFRecordDataset(path):
            index += 1
    except tf.errors.DataLossError as err:
        raise BadInputError(
            path, f"corrupt TFRecord after record {index} ({str(err).splitlines()[0]})"
        ) from None
