"""The shared front of every input pipeline: shards -> serialized records."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data.tfrecord_files import check_files, resolve_files

AUTOTUNE = tf.data.AUTOTUNE


def records_dataset(
    file_pattern: str | Sequence[str],
    training: bool,
    seed: int | None = None,
    deterministic: bool | None = None,
    cache: bool | str = False,
    verify: bool = True,
    with_filenames: bool = False,
) -> tf.data.Dataset:
    """Serialized records from all matching shards, interleaved.

    Files are listed in Python (so a pattern that matches nothing fails at once, naming it),
    checked (`tfrecord_files.check_files`), shuffled when training, and read with a parallel
    `interleave`. Under `tf.distribute`, the dataset shards by file
    (`AutoShardPolicy.FILE`): give at least as many shards as workers.

    Args:
        file_pattern: Glob pattern(s) of TFRecord shards.
        training: Shuffle the file order (reshuffled every epoch).
        seed: Seed of the file shuffle.
        deterministic: Passed to `interleave`; None leaves it to `tf.data.Options`.
        cache: Cache the serialized records in memory (True) or in the file named by a string.
        verify: Check framing and manifest checksums up front (names a damaged file); each
            local shard is checked once and the result cached (`tfrecord_files.check_files`).
        with_filenames: Yield `(shard file, record)` pairs, so that errors about a record can
            name its file.

    Returns:
        A dataset of scalar string tensors, or of `(filename, record)` string pairs.
    """
    files = resolve_files(file_pattern)
    if verify:
        check_files(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(filename):
        records = tf.data.TFRecordDataset(filename, buffer_size=1 << 20)
        if with_filenames:
            return records.map(lambda record: (filename, record))
        return records

    ds = ds.interleave(
        read,
        cycle_length=min(len(files), 8),
        block_length=1,
        num_parallel_calls=AUTOTUNE if len(files) > 1 else None,
        deterministic=deterministic,
    )
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    if deterministic is not None:
        options.deterministic = deterministic
    return ds.with_options(options)


def with_seeds(ds: tf.data.Dataset, seed: int | None) -> tf.data.Dataset:
    """Pairs every element with a fresh shape-(2,) int64 seed (new ones each epoch)."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))
