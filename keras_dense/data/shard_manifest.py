"""The manifest of a shard set, and the set on disk checked against it.

A conversion writes `DIR/NAME-0000k-of-0000N.tfrecord` plus the manifest `DIR/NAME.json`
(format `keras_dense.tfrecords/1`: classes, record counts and SHA-256 digests per shard). A
manifest is checked against the set on disk before any of its shards is trusted: every shard it
lists must exist, no other shard named like the set (`NAME-*-of-*.tfrecord`, e.g. a leftover of
a conversion with another shard count) may sit beside them, and its entries must be whole (a
`shards` list of distinct files whose record counts add up to `num_images`). A JSON beside the
shards that is not a shard manifest (neither our `format` nor a `shards` key; e.g. the COCO
`train.json` that Model Garden shards were made from) is no manifest: ignored here, by the
checksum checks and by the class-list checks alike.
"""

from __future__ import annotations

import glob
import json
import os
import re

from keras_dense.data.errors import BadInputError
from keras_dense.data.shard_journal import shard_set_glob

MANIFEST_FORMAT = "keras_dense.tfrecords/1"
SHARD_NAME = re.compile(r"^(?P<stem>.+)-\d{5}-of-(?P<count>\d{5})\.tfrecord$")


def find_manifest(shard: str) -> str | None:
    """The manifest `DIR/NAME.json` of a shard `DIR/NAME-0000k-of-0000N.tfrecord`, if present."""
    match = SHARD_NAME.match(os.path.basename(shard))
    if not match:
        return None
    path = os.path.join(os.path.dirname(shard), match.group("stem") + ".json")
    return path if os.path.isfile(path) else None


def load_manifest(path: str) -> dict:
    """Reads a manifest JSON, naming the file on error."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInputError(path, f"unreadable manifest ({err})") from None


def manifest_shards(path: str, manifest: object) -> dict[str, dict] | None:
    """The shard entries of a manifest by file name, checked for being whole.

    Args:
        path: The manifest's file (for messages).
        manifest: Its parsed JSON.

    Returns:
        `{file name: {"file", "records", "sha256"}}`; None when the JSON is not a shard
        manifest (neither our `format` nor a `shards` key: another tool's file).

    Raises:
        BadInputError: A damaged manifest: no `shards` list, a malformed or repeated entry,
            or record counts that do not add up to `num_images`.
    """
    if not isinstance(manifest, dict) or (
        manifest.get("format") != MANIFEST_FORMAT and "shards" not in manifest
    ):
        return None
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise BadInputError(
            path, "no 'shards' list: the manifest is damaged (convert the data again)"
        )
    entries: dict[str, dict] = {}
    for index, entry in enumerate(shards):
        name = entry.get("file") if isinstance(entry, dict) else None
        records = entry.get("records") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or not name
            or os.path.basename(name) != name
            or not (records is None or (type(records) is int and records >= 0))
            or not (digest is None or isinstance(digest, str))
        ):
            raise BadInputError(
                path,
                f"shard entry {index} ({json.dumps(entry)[:120]}) is damaged: expected "
                '{"file": "NAME-0000k-of-0000N.tfrecord", "records": N, "sha256": "..."}',
            )
        if name in entries:
            raise BadInputError(path, f"lists {name} twice: the manifest is damaged")
        entries[name] = entry
    counts = [entry.get("records") for entry in shards]
    total = manifest.get("num_images")
    if type(total) is int and None not in counts and sum(counts) != total:
        raise BadInputError(
            path,
            f"num_images {total} but its shards hold {sum(counts)} records: the manifest is "
            "damaged",
        )
    return entries


def check_set(path: str, entries: dict[str, dict]) -> None:
    """Refuses a set on disk unlike its manifest: a listed shard missing, or another one there.

    Args:
        path: The manifest.
        entries: Its shards (`manifest_shards`).

    Raises:
        BadInputError: Naming the shard and the manifest, and saying what to do.
    """
    directory = os.path.dirname(path)
    count = len(entries)
    listed = sorted(entries)
    for name in listed:
        match = SHARD_NAME.match(name)
        if match and int(match.group("count")) != count:
            raise BadInputError(path, f"lists {name} among {count} shards: the manifest is damaged")
    missing = [name for name in listed if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise BadInputError(
            os.path.join(directory, missing[0]),
            f"missing: {path} lists {count} shards and {len(missing)} of them "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) are not on disk; "
            + _missing_advice(path, directory, missing),
        )
    stem = path[: -len(".json")]
    for shard in sorted(glob.glob(shard_set_glob(stem))):
        if os.path.basename(shard) not in entries:
            raise BadInputError(
                shard,
                f"not listed in {path}, which lists {count} shard(s) ({listed[0]}"
                f"{', ...' if count > 1 else ''}): a leftover of another conversion? Remove "
                "it, or convert again",
            )


def _missing_advice(path: str, directory: str, missing: list[str]) -> str:
    """What to do about missing shards: a backup left by an interrupted write, or a subset."""
    for name in missing:
        backups = sorted(glob.glob(glob.escape(os.path.join(directory, name)) + ".old.tmp-*"))
        if backups:
            return (
                f"{backups[-1]}, a backup of {name} left by an interrupted write, is its only "
                f"copy: rename it back to {name} to make the set whole again"
            )
    return (
        f"the shard set is incomplete: copy the whole set (every shard {path} lists) into this "
        f"folder; or, to read only the shards that are here on purpose, move {path} out of "
        "this folder (shards without a manifest are checked record by record, and take their "
        "class list from the model card or the recipe's data.classes)"
    )
