"""Checking the class masks of segmentation records once per shard, before they are read.

The segmentation pipeline decodes `image/segmentation/class/encoded` with
`tf.io.decode_png(..., channels=1)`, which reads a palette, low-bit or 16-bit PNG silently
wrong (`keras_dense.data.mask_png`). Records written by other tools reach it as they are, so
`check_segmentation_masks` reads every record once, as a raw `tf.train.Example`, and checks
that it has a class mask whose PNG header says 8-bit greyscale (no pixel is decoded). The
first bad record is named with its shard, index, `image/source_id` and field.

A finished check of a shard is remembered in `$KERAS_DENSE_CACHE/validated_segmentation_masks`
(`keras_dense.utils.check_cache`) until the shard changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
from google.protobuf.message import DecodeError

from keras_dense.data import schema
from keras_dense.data.errors import BadInputError
from keras_dense.data.mask_png import class_mask_problem
from keras_dense.data.shard_checks import shard_records, shard_results
from keras_dense.data.tfrecord_files import resolve_files
from keras_dense.utils.check_cache import CheckCache

# Raised whenever what a shard's check accepts or remembers changes.
CACHE_VERSION = 1
_CACHE = CheckCache("validated_segmentation_masks", CACHE_VERSION)


def _single_bytes(feature_map, key: str) -> bytes | None:
    """The one bytes value of `key`, b"" when absent or empty, None when of another kind."""
    if key not in feature_map:
        return b""
    kind = feature_map[key].WhichOneof("kind")
    if kind is None:
        return b""
    found = list(getattr(feature_map[key], kind).value)
    if kind != "bytes_list" or len(found) > 1:
        return None
    return found[0] if found else b""


def record_mask_problem(serialized: bytes) -> tuple[str, str | None]:
    """`(source_id, why the record's class mask is not read as its ids or None)`."""
    try:
        feature_map = tf.train.Example.FromString(serialized).features.feature
    except DecodeError:
        return "", "the record is not a tf.train.Example"
    source = _single_bytes(feature_map, schema.SOURCE_ID)
    source_id = source.decode("utf-8", "replace") if source else ""
    mask = _single_bytes(feature_map, schema.MASK_ENCODED)
    if mask is None:
        return source_id, "expected one bytes value: an 8-bit single-channel PNG of class ids"
    if not mask:
        return source_id, "missing: every segmentation record needs its class mask"
    return source_id, class_mask_problem(mask)


def _check_shard(path: str) -> dict:
    """The JSON-serialisable check of one shard (what the cache keeps)."""
    result = {"records": 0, "problems": 0, "first_problem": None}
    for index, serialized in shard_records(path):
        source_id, reason = record_mask_problem(serialized)
        result["records"] += 1
        if reason is None:
            continue
        result["problems"] += 1
        if result["first_problem"] is None:
            where = f"{path} record {index}"
            location = f"{where} (source_id {source_id!r})" if source_id else where
            result["first_problem"] = {"location": location, "reason": reason}
    return result


def check_segmentation_masks(
    file_pattern: str | Sequence[str],
    what: str = "--data",
    note: str = "",
    use_cache: bool = True,
) -> int:
    """Refuses shards with a record whose class mask is missing or not an 8-bit grey PNG.

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        what: Where the shards come from (e.g. `data.train`), for the messages.
        note: Appended to the refusal (e.g. why `data.on_error = "skip"` does not apply).
        use_cache: Use and update the per-shard cache of finished checks.

    Returns:
        The number of records.

    Raises:
        BadInputError: No shard matches, a shard is corrupt, or a record's mask is unusable
            (naming the shard, record, source_id and field, and how many others are).
    """
    records, problems, first = 0, 0, None
    files = resolve_files(file_pattern)
    for _, result in shard_results(files, _CACHE, {}, _check_shard, use_cache):
        records += result["records"]
        problems += result["problems"]
        first = first or result["first_problem"]
    if first is not None:
        more = f"; {problems - 1} more record(s) of {what} have problems" if problems > 1 else ""
        reason = f"{schema.MASK_ENCODED}: {first['reason']}{more}{note}"
        raise BadInputError(first["location"], reason)
    return records
