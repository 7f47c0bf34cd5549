"""Input-pipeline throughput: full augmentation at crop 512 vs the raw read+decode rate.

Both are measured in the same run on the same shards, for two kinds of images:

- `synthetic`: 512x512 JPEGs of rendered shapes with PNG masks (like PASCAL VOC records),
- `large`: 1536x1536 synthetic JPEGs (`--large-size`), where decoding only the crop's window
  pays off most,
- `real`: photos of the Oxford-IIIT Pet sample (various sizes, about 500x375) with their
  trimap PNGs, from the shared data sets (`$KERAS_DENSE_DATA` or ../shared/datasets); left
  out, with a note, when absent.

The raw rate is parse + JPEG decode (accurate integer DCT, as the pipeline) + PNG mask decode
+ batching, with no augmentation. `augment_on_device` gives the host rate of
`segmentation_dataset(..., augment_on="device")` (decode, padded batches, seeds: what the host
does when the augmentation runs in the train step) against the same raw rate, and the cost of
that batched stage (`keras_dense.data.device_augment`) when it runs on this machine's CPU.
Prints one JSON object.

    .venv/bin/python benchmarks/input_pipeline.py [--images 64] [--runs 5] [--sources real]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, median_time  # noqa: E402


def make_shards(directory: str, num_images: int, size: int) -> str:
    from keras_dense.data.converters.shapes import render_shapes
    from keras_dense.data.image_io import encode_jpeg, encode_png
    from keras_dense.data.schema import Record
    from keras_dense.data.writer import write_dataset

    def make(i: int) -> Record:
        rgb, mask, _, _ = render_shapes(i, size, seed=1)
        return Record(
            f"bench_{i}", encode_jpeg(rgb, 90), "jpeg", size, size, mask_png=encode_png(mask)
        )

    output = os.path.join(directory, "bench")
    write_dataset(output, list(range(num_images)), make, num_shards=4, workers=2, progress=False)
    return output + "-*.tfrecord"


def find_pets() -> str | None:
    """The Oxford pets sample folder, if this machine has the shared data sets."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (
        os.environ.get("KERAS_DENSE_DATA"),
        os.path.join(here, "..", "shared", "datasets"),
    ):
        if root and os.path.isdir(os.path.join(root, "oxford_pets_sample", "images")):
            return os.path.join(root, "oxford_pets_sample")
    return None


def make_pet_shards(directory: str, num_images: int, pets: str) -> str:
    """Shards of real photos (JPEG bytes kept as they are) with their trimaps as masks."""
    import glob

    import cv2

    from keras_dense.data.image_io import encode_png
    from keras_dense.data.schema import Record
    from keras_dense.data.writer import write_dataset

    stems = []
    for path in sorted(glob.glob(os.path.join(pets, "images", "*.jpg"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.isfile(os.path.join(pets, "annotations", "trimaps", stem + ".png")):
            stems.append(stem)
        if len(stems) == num_images:
            break

    def make(stem: str) -> Record:
        with open(os.path.join(pets, "images", stem + ".jpg"), "rb") as f:
            data = f.read()
        trimap = cv2.imread(os.path.join(pets, "annotations", "trimaps", stem + ".png"), 0)
        h, w = trimap.shape
        return Record(stem, data, "jpeg", h, w, mask_png=encode_png(trimap))

    output = os.path.join(directory, "pets")
    write_dataset(output, stems, make, num_shards=4, workers=1, progress=False)
    return output + "-*.tfrecord"


def measure(pattern: str, n_images: int, args, ragged: bool) -> dict:
    """Raw read+decode vs the full training pipeline on the same shards, interleaved runs."""
    from keras_dense.data import segmentation_dataset
    from keras_dense.data.records_dataset import AUTOTUNE, records_dataset
    from keras_dense.data.segmentation_pipeline import decode_image_and_mask

    def raw():
        ds = records_dataset(pattern, training=False, verify=False, with_filenames=True)
        ds = ds.map(lambda f, r: decode_image_and_mask(r, 3, f)[:2], num_parallel_calls=AUTOTUNE)
        # Images of one size batch densely; photos of various sizes as ragged batches.
        ds = ds.ragged_batch(args.batch) if ragged else ds.batch(args.batch)
        return ds.prefetch(AUTOTUNE)

    def full(fast_decode: bool):
        return lambda: segmentation_dataset(
            pattern,
            args.batch,
            crop_size=args.crop,
            training=True,
            seed=0,
            verify=False,
            drop_remainder=False,
            fast_decode=fast_decode,
        )

    def device_host():
        # augment_on="device": the host part only (decode, padded batches, seeds).
        return segmentation_dataset(
            pattern,
            args.batch,
            crop_size=args.crop,
            training=True,
            seed=0,
            verify=False,
            drop_remainder=False,
            augment_on="device",
        )

    def consume(make_ds):
        ds = make_ds().repeat(args.epochs)
        return lambda: sum(1 for _ in ds)

    n = n_images * args.epochs
    runs: dict[str, list[float]] = {
        "raw": [],
        "pipeline": [],
        "pipeline_full_decode": [],
        "device_host_part": [],
    }
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    consumers = {
        "raw": consume(raw),
        "pipeline": consume(full(True)),
        "pipeline_full_decode": consume(full(False)),
        "device_host_part": consume(device_host),
    }
    for fn in consumers.values():  # warm-up: file cache, graph tracing
        fn()
    for _ in range(args.runs):  # interleaved so that machine noise hits all alike
        for name, fn in consumers.items():
            start = time.process_time()
            runs[name].append(median_time(fn, runs=1, warmup=0)[0])
            cpu[name].append(time.process_time() - start)
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    stage = device_stage_cost(device_host(), args)
    return {
        "augment_on_device": {
            "host_images_per_s": round(n / med["device_host_part"], 1),
            "ratio_host_part_over_raw": round(med["raw"] / med["device_host_part"], 3),
            "cpu_ratio_host_part_over_raw": round(med_cpu["raw"] / med_cpu["device_host_part"], 3),
            "ratio_host_part_spread": [
                round(min(r / p for r, p in zip(runs["raw"], runs["device_host_part"])), 3),
                round(max(r / p for r, p in zip(runs["raw"], runs["device_host_part"])), 3),
            ],
            **stage,
        },
        "images_per_run": n,
        "raw_decode_images_per_s": round(n / med["raw"], 1),
        "segmentation_dataset_images_per_s": round(n / med["pipeline"], 1),
        "full_decode_pipeline_images_per_s": round(n / med["pipeline_full_decode"], 1),
        "ratio_pipeline_over_raw": round(med["raw"] / med["pipeline"], 3),
        "ratio_full_decode_pipeline_over_raw": round(med["raw"] / med["pipeline_full_decode"], 3),
        "ratio_spread": [
            round(min(r / p for r, p in zip(runs["raw"], runs["pipeline"])), 3),
            round(max(r / p for r, p in zip(runs["raw"], runs["pipeline"])), 3),
        ],
        # CPU seconds of this process (all threads): less sensitive to other processes.
        "cpu_ratio_pipeline_over_raw": round(med_cpu["raw"] / med_cpu["pipeline"], 3),
        "cpu_ratio_full_decode_pipeline_over_raw": round(
            med_cpu["raw"] / med_cpu["pipeline_full_decode"], 3
        ),
        "run_seconds": {k: [round(t, 3) for t in v] for k, v in runs.items()},
        "run_cpu_seconds": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
    }


def device_stage_cost(dataset, args) -> dict:
    """The batched device stage (`augment_batch`) on this machine's CPU, per batch.

    Times the compiled stage alone on decoded batches already in memory (median of
    `args.runs` passes over them): the work `augment_on="device"` moves from the tf.data
    threads into the train step. On a GPU it runs on the accelerator instead.
    """
    import tensorflow as tf

    from keras_dense.data.device_augment import device_stage

    stage = tf.function(device_stage((args.crop, args.crop)), reduce_retracing=True)
    batches = list(dataset.take(4))
    for batch in batches:  # trace each canvas shape once
        stage(batch)
    walls, cpus = [], []
    for _ in range(args.runs):
        start, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            images, _ = stage(batch)
            images.numpy()
        walls.append((time.perf_counter() - start) / len(batches))
        cpus.append((time.process_time() - cpu) / len(batches))
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {
        "device_stage_on_cpu_ms_per_batch": round(wall * 1e3, 1),
        "device_stage_on_cpu_cpu_ms_per_batch": round(cpu * 1e3, 1),
        "device_stage_on_cpu_images_per_s": round(args.batch / wall, 1),
        "device_stage_runs_ms": [round(w * 1e3, 1) for w in walls],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="passes per timed run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sources", default="synthetic,real,large", help="synthetic,real,large")
    parser.add_argument("--large-size", type=int, default=1536)
    parser.add_argument("--large-images", type=int, default=16)
    args = parser.parse_args()

    import tensorflow as tf

    results: dict = {
        "benchmark": "input_pipeline",
        "image_size_synthetic": args.size,
        "crop_size": args.crop,
        "batch_size": args.batch,
        "runs": args.runs,
        "target_ratio": 0.8,
        "augmentation": "random scale [0.5, 2], crop 512 with padding, flip, photometric",
        "tf_data_threads": tf.data.Options().threading.private_threadpool_size,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    sources = args.sources.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if "synthetic" in sources:
            pattern = make_shards(os.path.join(tmp, ""), args.images, args.size)
            results["synthetic_512"] = measure(pattern, args.images, args, False)
        if "large" in sources:
            folder = os.path.join(tmp, "large")
            os.makedirs(folder)
            pattern = make_shards(folder, args.large_images, args.large_size)
            results[f"synthetic_{args.large_size}"] = measure(
                pattern, args.large_images, args, False
            )
        if "real" in sources:
            pets = find_pets()
            if pets is None:
                results["real_jpeg"] = {"skipped": "oxford_pets_sample not found"}
            else:
                pattern = make_pet_shards(tmp, args.images, pets)
                results["real_jpeg"] = {
                    "source": "oxford_pets_sample",
                    **measure(pattern, args.images, args, True),
                }
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["environment"] = environment()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
