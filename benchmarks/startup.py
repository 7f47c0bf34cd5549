"""Start-up cost of `segmentation_dataset(..., verify=True)` against the volume of the shards.

For each volume, shards of random payload records (with a manifest holding their record counts
and SHA-256 digests, as the converters write it) are created in a temporary folder, then:

- `cold`: an empty verification cache: every shard is walked (framing) and hashed,
- `warm`: the cache filled by the cold run: shards are only `stat`-ed,

each the median of `--runs` runs of `tfrecord_files.check_files` (the part that grows with
the data) and of the whole `segmentation_dataset(...)` call (which adds a constant: listing,
tracing the map function). The shards were just written, so they sit in the OS page cache:
"cold" is the verification cache, not the disk. Prints one JSON object.

    .venv/bin/python benchmarks/startup.py [--volumes-mb 16,64,256] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402


def write_shards(directory: str, volume_mb: int, num_shards: int, record_kb: int) -> str:
    """Shards of random records totalling about `volume_mb`, with a manifest; the pattern."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    per_shard = max(1, volume_mb * 1024 // record_kb // num_shards)
    payload = rng.integers(0, 256, record_kb * 1024, dtype=np.uint8).tobytes()
    entries = []
    for k in range(num_shards):
        name = f"vol-{k:05d}-of-{num_shards:05d}.tfrecord"
        path = os.path.join(directory, name)
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(per_shard):
                writer.write(payload[:-8] + i.to_bytes(8, "little"))
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        entries.append({"file": name, "records": per_shard, "sha256": digest})
    with open(os.path.join(directory, "vol.json"), "w") as f:
        json.dump({"shards": entries}, f)
    return os.path.join(directory, "vol-*.tfrecord")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes-mb", default="16,64,256")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--record-kb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from keras_dense.data import segmentation_dataset
    from keras_dense.data.tfrecord_files import check_files, resolve_files

    results: dict = {
        "benchmark": "startup",
        "runs": args.runs,
        "shards": args.shards,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "volumes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        os.environ["KERAS_DENSE_CACHE"] = cache
        segmentation_dataset(write_shards(_mkdir(tmp, "warmup"), 1, 1, 64), 2)  # imports, TF
        for volume in (int(v) for v in args.volumes_mb.split(",")):
            folder = _mkdir(tmp, f"v{volume}")
            pattern = write_shards(folder, volume, args.shards, args.record_kb)
            files = resolve_files(pattern)
            size_mb = sum(os.path.getsize(f) for f in files) / 2**20
            row: dict = {"volume_mb": round(size_mb, 1)}
            for what, fn in (
                ("check_files", lambda files=files: check_files(files)),
                ("segmentation_dataset", lambda p=pattern: segmentation_dataset(p, 2)),
            ):
                cold, warm = [], []
                for _ in range(args.runs):
                    shutil.rmtree(cache, ignore_errors=True)
                    cold.append(timed(fn))
                    warm.append(timed(fn))
                row[f"{what}_cold_s"] = round(statistics.median(cold), 4)
                row[f"{what}_warm_s"] = round(statistics.median(warm), 4)
                row[f"{what}_cold_runs_s"] = [round(t, 4) for t in cold]
                row[f"{what}_warm_runs_s"] = [round(t, 4) for t in warm]
            row["cold_ms_per_mb"] = round(1000 * row["check_files_cold_s"] / size_mb, 2)
            row["speedup_warm_over_cold"] = round(
                row["check_files_cold_s"] / max(row["check_files_warm_s"], 1e-9), 1
            )
            results["volumes"].append(row)
            shutil.rmtree(folder)
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["environment"] = environment()
    print(json.dumps(results, indent=2))


def _mkdir(root: str, name: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path)
    return path


if __name__ == "__main__":
    main()
