"""Running a record-by-record check over shards once, remembering each shard's result.

The record checks (`detection_records`, `classification_records`, `segmentation_records`)
read every record of a shard, summarise it in a JSON-serialisable dict, and keep that dict in
a `keras_dense.utils.check_cache.CheckCache` until the shard changes. Remote shards are
checked at every call (their modification time is not trusted here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import tensorflow as tf

from keras_dense.data.errors import BadInputError
from keras_dense.data.tfrecord_files import is_remote
from keras_dense.utils.check_cache import CheckCache


def shard_records(path: str) -> Iterator[tuple[int, bytes]]:
    """`(index, serialized record)` of every record of one shard, in order.

    Raises:
        BadInputError: The shard is truncated or corrupt (named, with the records read).
    """
    index = 0
    try:
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield index, serialized
            index += 1
    except tf.errors.DataLossError as err:
        raise BadInputError(
            path,
            f"truncated or corrupt TFRecord after record {index} ({str(err).splitlines()[0]})",
        ) from None


def shard_results(
    files: Sequence[str],
    cache: CheckCache,
    params: dict,
    check_shard: Callable[[str], dict],
    use_cache: bool = True,
) -> Iterator[tuple[str, dict]]:
    """`(shard, result)` of `check_shard` for each file, from the cache where it holds one.

    Args:
        files: The shards.
        cache: Where finished checks are remembered.
        params: The check's parameters (part of the cache key), JSON-serialisable.
        check_shard: Checks one shard; returns a JSON-serialisable dict.
        use_cache: Use and update the cache (local shards only).
    """
    for path in files:
        cacheable = use_cache and not is_remote(path)
        key = cache.key(path, params) if cacheable else None
        result = cache.load(key) if cacheable else None
        if result is None:
            result = check_shard(path)
            if cacheable:
                cache.store(key, result)
        yield path, result
