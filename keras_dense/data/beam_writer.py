"""Writing a shard set with an Apache Beam pipeline: the same bytes as the local writer.

`write_dataset(..., runner="beam")` comes here. The per-item work (read, check, decode,
re-encode, serialise the `tf.train.Example`: the converter's `make_record`) runs on Beam's
workers. The set is the local writer's, byte for byte, for the same inputs and shard count:

1. Each item is loaded with its input index; the result is a record or a bad-input reason.
2. The usable records are ranked in input order (one small side input: a cumulative count
   over the indices), and record `rank` goes to shard `rank % num_shards`, as locally.
3. The records are grouped by shard, sorted by rank, and each shard is written whole by one
   worker, first under an attempt name and then renamed onto its staging name. A retried
   bundle rewrites the same staging file with the same bytes: no record is written twice.
4. A summary (per-shard counts and SHA-256, skipped inputs with their reasons, EXIF turns)
   is written to the staging folder. The driver builds the manifest from it and commits the
   set as the local writer does: temporary names, then renames, the manifest last. A pipeline
   that fails leaves the previous set untouched.

All file access goes through `tf.io.gfile`, so the output may be on any file system TF has
(`gs://`, `ram://`, ...). A local output is committed with the local writer's journalled
commit; a remote one by renames, shards first and manifest last (object stores have no atomic
multi-file rename: a reader that trusts only the manifest sees the old set or the new one).

With `on_error="fail"` the pipeline still reads every item, then raises the `BadInputError`
of the first bad input in input order: the error the local path raises, whatever order the
workers met them in.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from keras_dense.data.beam_options import pipeline_options, require_beam
from keras_dense.data.errors import BadInputError
from keras_dense.data.schema import serialize_record

SUMMARY = "summary.json"


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_item(indexed, make_record: Callable, item_name: Callable) -> tuple[int, dict]:
    """Loads one `(index, item)`: `(index, {"data": bytes | None, ...})` for the pipeline."""
    index, item = indexed
    try:
        record = make_record(item)
    except BadInputError as err:
        return index, {"data": None, "error": [err.source, err.reason]}
    orientation = None
    if record.orientation != 1:
        orientation = {"input": item_name(item), "orientation": record.orientation}
    return index, {
        "data": serialize_record(record),
        "boxes": 0 if record.boxes is None else len(record.boxes),
        "rejected": list(record.rejected),
        "reoriented": orientation,
    }


def record_ranks(status: list[tuple[int, bool]]) -> np.ndarray:
    """`ranks[index]`: the position of input `index` among the usable records."""
    usable = np.zeros(max((i for i, _ in status), default=-1) + 1, np.int64)
    for index, ok in status:
        usable[index] = ok
    return np.cumsum(usable) - 1


def write_shard(keyed, staging: str, names: Sequence[str]) -> dict:
    """Writes one shard's records, sorted by rank, under its staging name (idempotent)."""
    shard, ranked = keyed
    ranked = sorted(ranked, key=lambda pair: pair[0])
    target = f"{staging}/{names[shard]}"
    attempt = f"{target}.attempt-{uuid.uuid4().hex}"
    with tf.io.TFRecordWriter(attempt) as writer:
        for _, data in ranked:
            writer.write(data)
    tf.io.gfile.rename(attempt, target, overwrite=True)
    return {"shard": shard, "records": len(ranked), "sha256": _sha256_of(target)}


def write_summary(_, staging: str, shards: list, loads: list) -> None:
    """The driver's view of the run: shard counts and digests, and per-input outcomes."""
    summary = {"shards": sorted(shards, key=lambda s: s["shard"]), "inputs": sorted(loads)}
    target = f"{staging}/{SUMMARY}"
    attempt = f"{target}.attempt-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(attempt, "w") as f:
        f.write(json.dumps(summary))
    tf.io.gfile.rename(attempt, target, overwrite=True)


def _outcome(loaded) -> list:
    """What the driver needs of one load, without the record bytes."""
    index, result = loaded
    if result["data"] is None:
        return [index, {"error": result["error"]}]
    return [
        index,
        {k: result[k] for k in ("boxes", "rejected", "reoriented")},
    ]


def run_conversion(
    items: Sequence,
    make_record: Callable,
    item_name: Callable,
    num_shards: int,
    staging: str,
    names: Sequence[str],
    beam_options: Sequence[str],
) -> dict:
    """Runs the pipeline; returns the summary it wrote to `staging`."""
    beam = require_beam()
    options, runner = pipeline_options(beam_options)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        loaded = (
            pipeline
            | "Inputs" >> beam.Create(list(enumerate(items)), reshuffle=True)
            | "Load" >> beam.Map(load_item, make_record, item_name)
        )
        ranks = (
            loaded
            | "Status" >> beam.Map(lambda kv: (kv[0], kv[1]["data"] is not None))
            | "AllStatus" >> beam.combiners.ToList()
            | "Ranks" >> beam.Map(record_ranks)
        )
        shards = (
            loaded
            | "Usable" >> beam.Filter(lambda kv: kv[1]["data"] is not None)
            | "Assign"
            >> beam.Map(
                lambda kv, ranks: (
                    int(ranks[kv[0]]) % num_shards,
                    (int(ranks[kv[0]]), kv[1]["data"]),
                ),
                ranks=beam.pvalue.AsSingleton(ranks),
            )
            | "ByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.Map(write_shard, staging, list(names))
        )
        outcomes = loaded | "Outcomes" >> beam.Map(_outcome)
        _ = (
            pipeline
            | "Once" >> beam.Create([None])
            | "Summary"
            >> beam.Map(
                write_summary,
                staging,
                shards=beam.pvalue.AsList(shards),
                loads=beam.pvalue.AsList(outcomes),
            )
        )
    with tf.io.gfile.GFile(f"{staging}/{SUMMARY}", "r") as f:
        return json.loads(f.read())


def staging_folder(output: str) -> str:
    """A fresh folder beside the output for one run's files (`DIR/.NAME.beam-RUNID`)."""
    directory, name = os.path.split(output)
    return f"{directory or '.'}/.{name}.beam-{uuid.uuid4().hex[:12]}"


def remove_tree(path: str) -> None:
    """Removes a folder through gfile, quietly."""
    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    except tf.errors.OpError:
        pass


def write_dataset_beam(
    output: str,
    items: Sequence,
    make_record: Callable,
    *,
    item_name: Callable,
    num_shards: int,
    on_error: str,
    skipped: list[dict],
    beam_options: Sequence[str],
    manifest_fields: dict,
) -> dict:
    """`write_dataset` on a Beam pipeline (see the module docstring); same arguments and result.

    Args:
        output: `DIR/NAME` (any `tf.io.gfile` path).
        items: The inputs, in a deterministic order (picklable: they go to the workers).
        make_record: Loads, validates and encodes one item (picklable with its closure).
        item_name: Names an item in the manifest.
        num_shards: Number of shards.
        on_error: `"fail"` or `"skip"`.
        skipped: Inputs the converter already rejected, in order.
        beam_options: `KEY=VALUE` pipeline options.
        manifest_fields: `build_manifest`'s keyword arguments other than the counts, skips and
            EXIF turns (classes, ignore_label, task, arguments, extra).

    Returns:
        The manifest as a dict.

    Raises:
        BadInputError: With `on_error="fail"`, the first bad input in input order; or when no
            record is usable.
    """
    from keras_dense.data.shard_commit import commit, prepare
    from keras_dense.data.tfrecord_files import is_remote
    from keras_dense.data.writer import build_manifest, manifest_path, shard_paths
    from keras_dense.utils.files import remove_quietly, temporary_path

    remote = is_remote(output)
    directory = os.path.dirname(output) or "."
    tf.io.gfile.makedirs(directory)
    if not remote:
        prepare(output)
    paths = shard_paths(output, num_shards)
    names = [os.path.basename(p) for p in paths]
    staging = staging_folder(output)
    tf.io.gfile.makedirs(staging)
    moved: list[str] = []
    try:
        summary = run_conversion(
            items, make_record, item_name, num_shards, staging, names, beam_options
        )
        num_images = num_boxes = 0
        reoriented = []
        for _, outcome in summary["inputs"]:
            if "error" in outcome:
                source, reason = outcome["error"]
                if on_error == "fail":
                    raise BadInputError(source, reason)
                skipped.append({"input": source, "reason": reason})
                continue
            skipped.extend(outcome["rejected"])
            if outcome["reoriented"]:
                reoriented.append(outcome["reoriented"])
            num_images += 1
            num_boxes += outcome["boxes"]
        if num_images == 0:
            raise BadInputError(
                output,
                f"no usable input: all {len(items)} inputs were "
                "rejected (see the reasons above or use --on-error fail)",
            )
        written = {s["shard"]: s for s in summary["shards"]}
        for shard, name in enumerate(names):
            if shard not in written:  # fewer records than shards: an empty shard, as locally
                with tf.io.TFRecordWriter(f"{staging}/{name}"):
                    pass
                written[shard] = {"records": 0, "sha256": _sha256_of(f"{staging}/{name}")}
        manifest = build_manifest(
            output,
            [written[shard] for shard in range(num_shards)],
            num_images=num_images,
            num_boxes=num_boxes,
            skipped=skipped,
            reoriented=reoriented,
            **manifest_fields,
        )
        staged_manifest = f"{staging}/{os.path.basename(manifest_path(output))}"
        with tf.io.gfile.GFile(staged_manifest, "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
        sources = [f"{staging}/{name}" for name in names] + [staged_manifest]
        targets = [*paths, manifest_path(output)]
        if remote:
            for source, target in zip(sources, targets):  # the manifest last
                tf.io.gfile.rename(source, target, overwrite=True)
            _retire_other_shards(output, paths)
        else:
            renames = []
            for source, target in zip(sources, targets):
                temporary = temporary_path(target)
                os.replace(source, temporary)
                moved.append(temporary)
                renames.append((temporary, target))
            commit(output, renames)
    finally:
        for path in moved:
            remove_quietly(path)
        remove_tree(staging)
    return manifest


def _retire_other_shards(output: str, keep: Sequence[str]) -> None:
    """Removes shards of an earlier set with another shard count (remote outputs)."""
    for path in tf.io.gfile.glob(f"{output}-*-of-*.tfrecord"):
        if path not in keep:
            tf.io.gfile.remove(path)
