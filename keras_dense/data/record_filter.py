"""Leaving records out of a `tf.data` pipeline by key, without Python in the graph.

A record's key is the fingerprint of its serialized bytes (`record_key`), the same in Python
(when `detection_records.check_records` lists a bad record) and in the graph (when the
pipeline filters it out with `excluding`).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

# Record keys: Fingerprint64 of the serialized Example, as an int64.
KEY_BUCKETS = 2**63 - 1


def record_key(serialized: tf.Tensor) -> tf.Tensor:
    """Fingerprint (int64) of serialized records, in the graph and in Python alike."""
    return tf.strings.to_hash_bucket_fast(serialized, KEY_BUCKETS)


def excluding(keys: Sequence[int]):
    """A `tf.data` filter predicate that is False for records whose `record_key` is in `keys`.

    A sorted constant and one `searchsorted` per record: no Python in the graph, O(log n).
    """
    table = tf.constant(sorted(set(int(k) for k in keys)), tf.int64)
    size = int(table.shape[0])

    def keep(serialized):
        key = record_key(serialized)
        position = tf.searchsorted(table, key[None])[0]
        found = tf.gather(table, tf.minimum(position, size - 1)) == key
        return tf.logical_not(found)

    return keep
