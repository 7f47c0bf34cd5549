"""Writing records into TFRecord shards with a manifest, atomically and deterministically."""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import tensorflow as tf

from keras_dense.data.beam_options import RUNNERS
from keras_dense.data.errors import BadInputError
from keras_dense.data.schema import Record, serialize_record
from keras_dense.data.shard_commit import commit, journal_path, lock_path, prepare, shard_set_glob
from keras_dense.data.shard_manifest import MANIFEST_FORMAT
from keras_dense.data.tfrecord_files import is_remote
from keras_dense.utils.files import remove_quietly, temporary_path, write_durably
from keras_dense.utils.progress import Progress


def shard_paths(output: str, num_shards: int) -> list[str]:
    """The shard file names for `--output DIR/NAME`: `NAME-00000-of-0000N.tfrecord`."""
    return [f"{output}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def manifest_path(output: str) -> str:
    """The manifest written beside the shards: `DIR/NAME.json`."""
    return f"{output}.json"


def _ordered_map(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """`map(fn, items)` on a thread pool, in order, with a bounded number of pending results."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_dataset(
    output: str,
    items: Sequence,
    make_record: Callable[[object], Record],
    *,
    item_name: Callable[[object], str] = str,
    num_shards: int = 1,
    workers: int = 1,
    on_error: str = "fail",
    classes: Sequence[str] = (),
    ignore_label: int | None = 255,
    task: str = "segmentation",
    arguments: dict | None = None,
    skipped: Iterable[dict] = (),
    extra: dict | None = None,
    progress: bool = True,
    read_from: Sequence[str] = (),
    runner: str = "local",
    beam_options: Sequence[str] = (),
) -> dict:
    """Converts `items` into TFRecord shards plus a manifest.

    Record `i` goes to shard `i % num_shards`, so the output depends only on the inputs and
    arguments. Shards and manifest are written under temporary names `*.tmp-PID` and fsynced;
    only when all of them are complete are they renamed into place by a journalled commit
    (`shard_commit.commit`): a failed rename puts the previous set back, and a commit killed
    half-way (SIGKILL, power loss) is finished or rolled back by the next reader or writer, so
    a shard set is never torn. Shards of an earlier conversion to the same name with another
    shard count are removed in the same commit. First, an unfinished commit of a dead earlier
    run to the same name is settled, and a dead run's backup (`*.old.tmp-PID`) whose target is
    missing, the only copy of that file, is put back with a warning (`shard_commit.prepare`);
    the other temporaries and backups of dead processes are removed once the new set has
    landed, those of live processes kept.

    Args:
        output: `DIR/NAME`; shards are `DIR/NAME-0000k-of-0000N.tfrecord`, the manifest
            `DIR/NAME.json`.
        items: The inputs, in a deterministic order.
        make_record: Loads, validates and encodes one item; raises `BadInputError` on bad input.
        item_name: Names an item in the manifest's skip list.
        num_shards: Number of shards (>= 1).
        workers: Threads used to load and encode (OpenCV releases the GIL).
        on_error: `"fail"` stops at the first bad input; `"skip"` records it in the manifest.
        classes: Class names; index = class id.
        ignore_label: The mask value ignored in losses and metrics (None for detection).
        task: `"segmentation"` or `"detection"`.
        arguments: The converter's arguments, stored in the manifest.
        skipped: Inputs the converter already rejected (`{"input": ..., "reason": ...}`).
        extra: More manifest fields.
        progress: Show a progress bar on a terminal.
        read_from: The files the items are read from (shards, when converting shards to
            shards); writing onto any of them is refused before anything is written.
        runner: `"local"` (a thread pool in this process) or `"beam"`: an Apache Beam
            pipeline (`keras_dense.data.beam_writer`) writing the same bytes and manifest.
        beam_options: `KEY=VALUE` pipeline options for the Beam runner (see
            `keras_dense.data.beam_options`).

    Returns:
        The manifest as a dict.

    Raises:
        BadInputError: With `on_error="fail"`, the first bad input; or when no record is usable.
        ValueError: Bad arguments, or an output whose shard set or manifest is an input.
        CommitBusyError: Another live process keeps committing the same name (a RuntimeError).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}: expected 'fail' or 'skip'")
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards}: expected an integer >= 1")
    skipped = list(skipped)
    if skipped and on_error == "fail":
        first = skipped[0]
        raise BadInputError(first["input"], first["reason"])
    if runner not in RUNNERS:
        raise ValueError(f"runner={runner!r}: expected one of {list(RUNNERS)}")
    refuse_overlap(output, num_shards, read_from)
    if runner == "beam":
        from keras_dense.data.beam_writer import write_dataset_beam

        return write_dataset_beam(
            output,
            items,
            make_record,
            item_name=item_name,
            num_shards=num_shards,
            on_error=on_error,
            skipped=skipped,
            beam_options=beam_options,
            manifest_fields={
                "classes": classes,
                "ignore_label": ignore_label,
                "task": task,
                "arguments": arguments,
                "extra": extra,
            },
        )
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    # A dead run's unfinished commit first, and its backups that are a file's only copy; the
    # rest of the debris of dead runs goes only once this commit has landed (`commit`).
    prepare(output)
    paths = shard_paths(output, num_shards)
    tmp_paths = [temporary_path(p) for p in paths]
    manifest_file = manifest_path(output)
    manifest_tmp = temporary_path(manifest_file)

    def load(item):
        try:
            return item, make_record(item), None
        except BadInputError as err:
            return item, None, err

    counts = [0] * num_shards
    hashes = [hashlib.sha256() for _ in range(num_shards)]
    num_images = num_boxes = 0
    reoriented = []
    label = os.path.basename(output)
    bar = Progress(len(items), f"converting {label}", progress)
    writers = [tf.io.TFRecordWriter(p) for p in tmp_paths]
    try:
        index = 0
        for item, record, err in _ordered_map(load, items, workers):
            bar.update()
            if err is not None:
                if on_error == "fail":
                    raise err
                skipped.append({"input": err.source, "reason": err.reason})
                continue
            skipped.extend(record.rejected)
            if record.orientation != 1:
                reoriented.append({"input": item_name(item), "orientation": record.orientation})
            data = serialize_record(record)
            shard = index % num_shards
            writers[shard].write(data)
            counts[shard] += 1
            num_images += 1
            num_boxes += 0 if record.boxes is None else len(record.boxes)
            index += 1
        for w in writers:
            w.close()
        if num_images == 0:
            raise BadInputError(
                output,
                f"no usable input: all {len(items)} inputs were "
                "rejected (see the reasons above or use --on-error fail)",
            )
        for tmp, digest in zip(tmp_paths, hashes):
            with open(tmp, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
                os.fsync(f.fileno())  # complete on disk before the commit journal exists
        manifest = build_manifest(
            output,
            [{"records": c, "sha256": h.hexdigest()} for c, h in zip(counts, hashes)],
            num_images=num_images,
            num_boxes=num_boxes,
            classes=classes,
            ignore_label=ignore_label,
            task=task,
            arguments=arguments,
            skipped=skipped,
            reoriented=reoriented,
            extra=extra,
        )
        with open(manifest_tmp, "wb") as f:
            write_durably(f, (json.dumps(manifest, indent=2) + "\n").encode())
        commit(output, list(zip([*tmp_paths, manifest_tmp], [*paths, manifest_file])))
    finally:
        bar.close()
        for w in writers:
            w.close()
        for tmp in [*tmp_paths, manifest_tmp]:
            remove_quietly(tmp)
    return manifest


def build_manifest(
    output: str,
    shards: Sequence[dict],
    *,
    num_images: int,
    num_boxes: int,
    classes: Sequence[str],
    ignore_label: int | None,
    task: str,
    arguments: dict | None,
    skipped: Sequence[dict],
    reoriented: Sequence[dict],
    extra: dict | None,
) -> dict:
    """The manifest of a shard set (the one layout every writer produces).

    Args:
        output: `DIR/NAME` of the set.
        shards: Per shard, in order, `{"records": count, "sha256": hex digest}`.
        num_images: Records written.
        num_boxes: Boxes in them.
        classes: Class names; index = class id.
        ignore_label: The mask value ignored in losses and metrics (None for detection).
        task: The records' task.
        arguments: The converter's arguments.
        skipped: The inputs left out, `{"input", "reason"}`, in input order.
        reoriented: The JPEGs turned upright from EXIF, `{"input", "orientation"}`.
        extra: More manifest fields.

    Returns:
        The manifest as a dict.
    """
    paths = shard_paths(output, len(shards))
    return {
        "format": MANIFEST_FORMAT,
        "name": os.path.basename(output),
        "task": task,
        "classes": list(classes),
        "num_classes": len(classes),
        "ignore_label": ignore_label,
        "num_images": num_images,
        "num_boxes": num_boxes,
        "shards": [
            {"file": os.path.basename(path), "records": shard["records"], "sha256": shard["sha256"]}
            for path, shard in zip(paths, shards)
        ],
        "arguments": arguments or {},
        "skipped": list(skipped),
        # JPEGs turned upright from their EXIF orientation, stored as PNG (see image_io).
        "exif_reoriented": list(reoriented),
        **(extra or {}),
    }


def refuse_overlap(output: str, num_shards: int, read_from: Sequence[str]) -> None:
    """Refuses an output that would write, replace or remove one of the files being read.

    The output's files are its new shards, its manifest, its commit journal and lock, and every
    shard already named like the set's (an earlier conversion with another shard count, removed
    by the commit). Paths are compared after resolving links, and by file identity.

    Args:
        output: `DIR/NAME` of the shard set to write.
        num_shards: Its number of shards.
        read_from: The input files.

    Raises:
        ValueError: Naming the output, the file and the input that matched it.
    """
    by_path: dict[str, str] = {}
    by_id: dict[tuple[int, int], str] = {}
    for path in read_from:
        if is_remote(str(path)):
            continue
        by_path[os.path.realpath(path)] = str(path)
        try:
            stat = os.stat(path)
        except OSError:
            continue
        by_id[(stat.st_dev, stat.st_ino)] = str(path)
    if not by_path:
        return
    written = [
        *shard_paths(output, num_shards),
        manifest_path(output),
        journal_path(output),
        lock_path(output),
        *sorted(glob.glob(shard_set_glob(output))),
    ]
    for path in written:
        hit = by_path.get(os.path.realpath(path))
        if hit is None and os.path.exists(path):
            stat = os.stat(path)
            hit = by_id.get((stat.st_dev, stat.st_ino))
        if hit is not None:
            raise ValueError(
                f"output {output}: {path} is also an input (read as {hit}); writing this "
                "shard set would replace or remove the data being read. Choose another output "
                "name (nothing was written)"
            )


def summarize(manifest: dict) -> str:
    """A one-paragraph human summary of a conversion."""
    shards = manifest["shards"]
    lines = [
        f"wrote {manifest['num_images']} images"
        + (f", {manifest['num_boxes']} boxes" if manifest["num_boxes"] else "")
        + f" to {len(shards)} shard(s) '{manifest['name']}-*-of-{len(shards):05d}.tfrecord'",
        f"classes ({manifest['num_classes']}): {', '.join(manifest['classes'])}",
    ]
    if manifest["skipped"]:
        lines.append(f"skipped {len(manifest['skipped'])} input(s):")
        lines += [f"  {s['input']}: {s['reason']}" for s in manifest["skipped"]]
    return "\n".join(lines)
