"""Instance masks: tight boxes from an instance-id map, and their cost in the detection input.

Two measurements, each against a baseline timed in the same run:

- `boxes`: `instance_boxes` (one pass over the mask's foreground pixels for every instance at
  once) vs a per-instance NumPy loop (`np.nonzero(ids == k)` for each k), on an instance-id
  map of `--instances` ellipses at `--size` px; the results are checked equal.
- `pipeline`: `detection_dataset(instance_masks=True)` vs the same pipeline without masks
  (images/s over synthetic shapes shards, resized to `--min-size`).

Prints one JSON object. Measured (2-core AMD EPYC shared with other jobs, load average 5.4,
TF 2.21, 5 runs): boxes 1.85 ms vs 11.2 ms for the loop (6.0x); the pipeline with masks at
112 images/s vs 127 without (0.88; one mask at a time in a `map_fn` was 0.50).

    .venv/bin/python benchmarks/instance_masks.py [--size 512] [--instances 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, median_time  # noqa: E402


def instance_map(size: int, instances: int, seed: int = 0):
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.zeros((size, size), np.uint8)
    k = 0
    while k < instances:
        before = ids.copy()
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 40 + 1, size // 6, 2))
        cv2.ellipse(ids, centre, axes, float(rng.uniform(0, 180)), 0, 360, k + 1, -1)
        if all((ids == j).any() for j in range(1, k + 2)):
            k += 1
        else:
            ids = before
    return ids


def loop_boxes(ids, num):
    import numpy as np

    out = []
    for k in range(1, num + 1):
        ys, xs = np.nonzero(ids == k)
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.asarray(out, np.float32)


def make_shards(directory: str, num_images: int, size: int) -> str:
    from keras_dense.data import convert_shapes

    output = os.path.join(directory, "bench")
    convert_shapes(output, num_images, size=size, seed=1, num_shards=2, progress=False)
    return output + "-*.tfrecord"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import numpy as np

    from keras_dense.data import detection_dataset
    from keras_dense.data.converters.instances import instance_boxes

    load_before = [round(x, 2) for x in os.getloadavg()]
    ids = instance_map(args.size, args.instances)
    assert np.array_equal(instance_boxes(ids, args.instances), loop_boxes(ids, args.instances))
    fast, fast_all = median_time(lambda: instance_boxes(ids, args.instances), args.runs * 4)
    slow, slow_all = median_time(lambda: loop_boxes(ids, args.instances), args.runs * 4)

    with tempfile.TemporaryDirectory() as tmp:
        pattern = make_shards(tmp, args.images, args.image_size)
        options = dict(min_size=args.min_size, max_size=2 * args.min_size, max_boxes=8)

        def epoch(masks: bool):
            ds = detection_dataset(pattern, 4, instance_masks=masks, verify=False, **options)
            return lambda: [None for _ in ds]

        with_masks, with_all = median_time(epoch(True), args.runs)
        without, without_all = median_time(epoch(False), args.runs)
    print(
        json.dumps(
            {
                "benchmark": "instance_masks",
                "boxes": {
                    "map": f"{args.size}x{args.size}, {args.instances} instances",
                    "vectorised_ms": round(1e3 * fast, 3),
                    "baseline_loop_ms": round(1e3 * slow, 3),
                    "speedup": round(slow / fast, 2),
                    "runs_ms": [round(1e3 * t, 3) for t in fast_all],
                    "baseline_runs_ms": [round(1e3 * t, 3) for t in slow_all],
                },
                "pipeline": {
                    "images": args.images,
                    "resized_to": args.min_size,
                    "images_per_s_with_masks": round(args.images / with_masks, 1),
                    "baseline_images_per_s_without": round(args.images / without, 1),
                    "ratio_with_over_without": round(without / with_masks, 3),
                    "runs_s": [round(t, 3) for t in with_all],
                    "baseline_runs_s": [round(t, 3) for t in without_all],
                },
                "runs": args.runs,
                "loadavg_before": load_before,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                **environment(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
