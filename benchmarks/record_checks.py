"""The cost of checking detection records before training, against reading them once.

`train` and `evaluate` check every detection record of their shards once
(`keras_dense.data.detection_records.check_records`: coordinates, labels, lists, image and mask
structure) and remember the result per shard. This measures, on synthetic JPEG records at
`--size` with `--boxes` boxes (and, with `--masks`, one PNG instance mask per box):

- `read`: one pass over the serialized records with `tf.data.TFRecordDataset`;
- `decode`: the baseline, that pass plus decoding every image (what any epoch costs at
  least, before resizing, augmentation and the model);
- `check_cold`: the check with an empty cache (the first `train` on new shards);
- `check_cached`: the check again (every later start, resume and evaluate).

Ratios are against `decode` (and `read`), timed in the same run. Prints one JSON object.

Measured (2-core AMD EPYC, load average 2.1-3.3 with the test suite running, TF 2.21, median
of 3): 1000 records of 640x480 JPEG with 3 boxes (50.7 MB): check 1.28 s cold (1.3 ms a
record; 16x a bare read), 0.1 ms cached; 500 records with 3 PNG instance masks each: 2.6 ms a
record cold, 0.1 ms cached. The cold check of the 1000 JPEG records took 0.99x one pass
that decodes every image (1.29 s): about one epoch's decoding, once per shard.

    .venv/bin/python benchmarks/record_checks.py [--records 1000] [--size 480] [--boxes 3]
        [--masks] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, median_time  # noqa: E402


def write_records(path: str, count: int, size: int, boxes: int, masks: bool) -> int:
    """Writes `count` OD-API records of random JPEG images; returns the file's size."""
    import cv2
    import numpy as np
    import tensorflow as tf

    from keras_dense.data.schema import Record, serialize_record

    rng = np.random.default_rng(0)
    height, width = size, size * 4 // 3
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    image = cv2.GaussianBlur(image, (9, 9), 3)  # photo-like, so JPEG sizes are realistic
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(count):
            top = rng.uniform(0.0, 0.6, (boxes, 2))
            extent = rng.uniform(0.1, 0.35, (boxes, 2))
            yxyx = np.concatenate([top, top + extent], axis=1).astype(np.float32)
            pngs = None
            if masks:
                pngs = []
                for y0, x0, y1, x1 in yxyx:
                    mask = np.zeros((height, width), np.uint8)
                    mask[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)] = 1
                    pngs.append(cv2.imencode(".png", mask)[1].tobytes())
            record = Record(
                source_id=f"r{i}",
                image_bytes=jpeg.tobytes(),
                image_format="jpeg",
                height=height,
                width=width,
                boxes=yxyx,
                labels=rng.integers(1, 4, boxes),
                label_texts=["a"] * boxes,
                instance_masks=pngs,
            )
            writer.write(serialize_record(record))
    return os.path.getsize(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--size", type=int, default=480, help="image height (width is 4/3 of it)")
    parser.add_argument("--boxes", type=int, default=3)
    parser.add_argument("--masks", action="store_true", help="one PNG instance mask per box")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KERAS_DENSE_CACHE"] = os.path.join(tmp, "cache")
        import shutil

        import tensorflow as tf

        from keras_dense.data.detection_records import check_records
        from keras_dense.data.detection_rules import DetectionRules

        shard = os.path.join(tmp, "train-00000-of-00001.tfrecord")
        size = write_records(shard, args.records, args.size, args.boxes, args.masks)
        rules = DetectionRules(num_classes=3, class_names=None, instance_masks=args.masks)
        spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}

        def read():
            for _ in tf.data.TFRecordDataset(shard, buffer_size=1 << 20):
                pass

        def decode():
            ds = tf.data.TFRecordDataset(shard, buffer_size=1 << 20).map(
                lambda r: tf.shape(
                    tf.io.decode_jpeg(tf.io.parse_single_example(r, spec)["image/encoded"])
                )
            )
            for _ in ds:
                pass

        def cold():
            shutil.rmtree(os.environ["KERAS_DENSE_CACHE"], ignore_errors=True)
            report = check_records(shard, rules)
            assert report.records == args.records and not report.problems, report.problems

        def cached():
            assert check_records(shard, rules).records == args.records

        read_s, read_all = median_time(read, args.runs)
        decode_s, decode_all = median_time(decode, args.runs)
        cold_s, cold_all = median_time(cold, args.runs)
        cold()  # leaves a filled cache for the cached runs
        cached_s, cached_all = median_time(cached, args.runs)
    print(
        json.dumps(
            {
                "benchmark": "record_checks",
                "records": args.records,
                "image": f"{args.size * 4 // 3}x{args.size} JPEG",
                "boxes_per_record": args.boxes,
                "instance_masks": args.masks,
                "shard_mb": round(size / 2**20, 1),
                "runs": args.runs,
                "read_s": round(read_s, 4),
                "decode_s": round(decode_s, 4),
                "check_cold_s": round(cold_s, 4),
                "check_cached_s": round(cached_s, 5),
                "cold_over_decode": round(cold_s / decode_s, 3),
                "cached_over_decode": round(cached_s / decode_s, 5),
                "cold_over_read": round(cold_s / read_s, 2),
                "cached_over_read": round(cached_s / read_s, 4),
                "check_cold_ms_per_record": round(1000 * cold_s / args.records, 3),
                "all_times_s": {
                    "read": read_all,
                    "decode": decode_all,
                    "cold": cold_all,
                    "cached": cached_all,
                },
                "load_average": os.getloadavg(),
                **environment(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
