"""Input-pipeline throughput: full augmentation at crop 512 vs the raw read+decode rate.

Both are measured in the same run on the same shards (synthetic 512x512 JPEG images with PNG
masks, like PASCAL VOC records). Prints JSON.

    .venv/bin/python benchmarks/input_pipeline.py [--images 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="passes per timed run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf

    from keras_dense.data import segmentation_dataset
    from keras_dense.data.records_dataset import AUTOTUNE, records_dataset
    from keras_dense.data.segmentation_pipeline import decode_image_and_mask

    with tempfile.TemporaryDirectory() as tmp:
        pattern = make_shards(tmp, args.images, args.size)

        def raw():
            ds = records_dataset(pattern, training=False, verify=False)
            ds = ds.map(lambda r: decode_image_and_mask(r)[:2], num_parallel_calls=AUTOTUNE)
            return ds.batch(args.batch).prefetch(AUTOTUNE)

        def full():
            return segmentation_dataset(
                pattern,
                args.batch,
                crop_size=args.crop,
                training=True,
                seed=0,
                verify=False,
                drop_remainder=False,
            )

        def consume(make_ds):
            ds = make_ds().repeat(args.epochs)
            return lambda: sum(1 for _ in ds)

        n = args.images * args.epochs
        raw_runs, full_runs = [], []
        consume_raw, consume_full = consume(raw), consume(full)
        consume_raw()  # warm-up: file cache, graph tracing
        consume_full()
        for _ in range(args.runs):  # interleaved so that machine noise hits both alike
            raw_runs.append(median_time(consume_raw, runs=1, warmup=0)[0])
            full_runs.append(median_time(consume_full, runs=1, warmup=0)[0])
        raw_s = statistics.median(raw_runs)
        full_s = statistics.median(full_runs)
        results = {
            "benchmark": "input_pipeline",
            "images_per_run": n,
            "image_size": args.size,
            "crop_size": args.crop,
            "batch_size": args.batch,
            "runs": args.runs,
            "raw_decode_images_per_s": round(n / raw_s, 1),
            "segmentation_dataset_images_per_s": round(n / full_s, 1),
            "ratio_pipeline_over_raw": round(raw_s / full_s, 3),
            "target_ratio": 0.8,
            "raw_run_seconds": [round(t, 3) for t in raw_runs],
            "pipeline_run_seconds": [round(t, 3) for t in full_runs],
            "augmentation": "random scale [0.5, 2], crop 512 with padding, flip, photometric",
            "tf_data_threads": tf.data.Options().threading.private_threadpool_size,
            "environment": environment(),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
