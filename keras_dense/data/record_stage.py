"""The first stage of the training and evaluation pipelines: reading the records."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data.record_filter import excluding
from keras_dense.data.records_dataset import records_dataset


def read_stage(
    file_pattern: str | Sequence[str],
    training: bool,
    shuffle_buffer: int,
    cache: bool | str,
    deterministic: bool | None,
    seed: int | None,
    verify: bool,
    with_filenames: bool = False,
    exclude: Sequence[int] = (),
) -> tf.data.Dataset:
    """Serialized records of the shards, without `exclude`, shuffled when training.

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards (checked, see `records_dataset`).
        training: Shuffle the shards and the records (`shuffle_buffer` records, reshuffled
            each epoch).
        shuffle_buffer: Records in the shuffle buffer.
        cache: Cache serialized records in memory (True) or in a file (str).
        deterministic: Fix the element order of parallel reads.
        seed: Seed of the shuffling.
        verify: Check the shards before reading.
        with_filenames: Yield `(filename, serialized)` instead of `serialized`.
        exclude: Records to leave out, by `record_filter.record_key` (not with filenames).

    Returns:
        The dataset.

    Raises:
        ValueError: `exclude` with `with_filenames`.
    """
    if len(exclude) and with_filenames:
        raise ValueError("exclude= needs with_filenames=False (it filters serialized records)")
    ds = records_dataset(
        file_pattern, training, seed, deterministic, cache, verify, with_filenames=with_filenames
    )
    if len(exclude):
        ds = ds.filter(excluding(exclude))
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds
