"""Finding TFRecord shards and checking them before they are read.

TensorFlow reports a damaged record as "corrupted record at N" without naming the file.
The checks here name it: `check_files` walks each shard's record framing (cheap: it seeks from
header to header) and, where the shards' manifest is present, compares SHA-256 digests.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence

from keras_dense.data.errors import BadInputError

_SHARD = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.tfrecord$")


def resolve_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Expands glob patterns (or a list of them) into a sorted list of files.

    Args:
        file_pattern: A glob pattern, a file, or a list of either.

    Returns:
        The matching files, sorted, without duplicates.

    Raises:
        BadInputError: A pattern matches no file.
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else file_pattern
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(pattern)))
        if not matched:
            raise BadInputError(str(pattern), "no TFRecord file matches this pattern")
        files.extend(matched)
    return sorted(dict.fromkeys(files))


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
    with open(path, "rb") as f:
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


def find_manifest(shard: str) -> str | None:
    """The manifest `DIR/NAME.json` of a shard `DIR/NAME-0000k-of-0000N.tfrecord`, if present."""
    match = _SHARD.match(os.path.basename(shard))
    if not match:
        return None
    path = os.path.join(os.path.dirname(shard), match.group("stem") + ".json")
    return path if os.path.isfile(path) else None


def load_manifest(path: str) -> dict:
    """Reads a manifest JSON, naming the file on error."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise BadInputError(path, f"unreadable manifest ({err})") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(files: Sequence[str], verify_checksums: bool = True) -> None:
    """Checks shards before reading: framing always, SHA-256 against the manifest if asked.

    Args:
        files: Shard paths.
        verify_checksums: Compare each shard with its manifest entry, where one exists.

    Raises:
        BadInputError: Naming the damaged or altered file.
    """
    manifests: dict[str, dict] = {}
    for path in files:
        count = scan_framing(path)
        manifest_file = find_manifest(path) if verify_checksums else None
        if manifest_file is None:
            continue
        if manifest_file not in manifests:
            manifests[manifest_file] = {
                s["file"]: s for s in load_manifest(manifest_file).get("shards", [])
            }
        entry = manifests[manifest_file].get(os.path.basename(path))
        if entry is None:
            continue
        if entry.get("records") is not None and entry["records"] != count:
            raise BadInputError(
                path, f"holds {count} records but {manifest_file} says {entry['records']}"
            )
        if entry.get("sha256") and entry["sha256"] != _sha256(path):
            raise BadInputError(
                path,
                f"SHA-256 differs from {manifest_file}: the shard is "
                "corrupt or was changed after conversion",
            )
