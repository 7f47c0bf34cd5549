"""Conversion throughput: the threaded local path against Beam on 1 and 2 worker processes.

The same inputs (the Oxford-IIIT Pet sample's photos and trimaps through `convert pairs`, or
any `--images` / `--masks` folders) are converted to the same number of shards by:
- the local path with `--workers` threads (the baseline);
- `--runner beam` on the FnApiRunner with 1 and with 2 worker processes.

Each is timed `--runs` times (median reported, wall clock including Beam's start-up of its
workers), in one run of this script on the same machine, and every Beam set is checked to be
byte-identical to the local one. Prints one JSON: images/s, the ratio to the threaded path, the
load average, versions. Beam's overhead on one machine (starting worker processes, pickling
every record through the runner's data plane) is what this measures; its point is the
cluster, where the same pipeline runs on many machines with pipeline options only.

    .venv/bin/python benchmarks/beam_scaling.py [--images DIR --masks DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import filecmp
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402


def shared_pets() -> str:
    root = os.environ.get("KERAS_DENSE_DATA") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets"
    )
    return os.path.join(root, "oxford_pets_sample")


def time_conversion(convert, output: str, runs: int) -> list[float]:
    """Wall seconds of `runs` conversions to `output` (each from scratch)."""
    seconds = []
    for _ in range(runs):
        shutil.rmtree(os.path.dirname(output), ignore_errors=True)
        start = time.perf_counter()
        convert(output)
        seconds.append(time.perf_counter() - start)
    return seconds


def identical(a: str, b: str) -> bool:
    """Whether two shard sets have the same shard bytes."""
    left, right = sorted(glob.glob(f"{a}-*.tfrecord")), sorted(glob.glob(f"{b}-*.tfrecord"))
    return len(left) == len(right) and all(
        filecmp.cmp(x, y, shallow=False) for x, y in zip(left, right)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=os.path.join(shared_pets(), "images"))
    parser.add_argument("--masks", default=os.path.join(shared_pets(), "annotations", "trimaps"))
    parser.add_argument("--classes", default="pet,background,border")
    parser.add_argument("--remap", nargs="*", default=["1:0", "2:1", "3:2"])
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="threads of the local path")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from keras_dense.data import convert_pairs

    def converter(**kwargs):
        def convert(output):
            return convert_pairs(
                args.images,
                args.masks,
                output,
                classes=args.classes,
                remap=args.remap,
                num_shards=args.num_shards,
                on_error="skip",
                progress=False,
                **kwargs,
            )

        return convert

    work = tempfile.mkdtemp(prefix="beam_scaling_")
    variants = {
        "threads": converter(workers=args.workers),
        "beam_1_process": converter(
            runner="beam",
            beam_options=["direct_num_workers=1", "direct_running_mode=multi_processing"],
        ),
        "beam_2_processes": converter(
            runner="beam",
            beam_options=["direct_num_workers=2", "direct_running_mode=multi_processing"],
        ),
    }
    try:
        images = converter(workers=args.workers)(f"{work}/count/set")["num_images"]
        results = {}
        for name, convert in variants.items():
            output = f"{work}/{name}/set"
            seconds = time_conversion(convert, output, args.runs)
            median = statistics.median(seconds)
            results[name] = {
                "median_seconds": round(median, 2),
                "seconds": [round(s, 2) for s in seconds],
                "images_per_second": round(images / median, 2),
                "identical_to_threads": identical(output, f"{work}/threads/set")
                if name != "threads"
                else True,
            }
        base = results["threads"]["images_per_second"]
        for name in results:
            results[name]["ratio_to_threads"] = round(results[name]["images_per_second"] / base, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "beam_scaling",
                "images": images,
                "inputs": {"images": args.images, "masks": args.masks},
                "num_shards": args.num_shards,
                "threads": args.workers,
                "runs": args.runs,
                "results": results,
                "environment": environment(),
                "load_average": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
