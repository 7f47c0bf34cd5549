"""Sliced detection with tiles batched under --max-memory against one tile per call.

Builds a Faster R-CNN (VGG16 trunk at random initialisation: speed does not depend on the
weights) and runs `detect_objects_sliced` on one synthetic large image both ways, in the same
run: one tile per model call (the default), and as many tiles per call as `--max-memory`
holds (`keras_dense.prediction.detection_memory`). Reports the median wall time of each, the
ratio, the tiles per call, the largest difference between the two answers, versions, the
machine and the load average. Prints JSON.

    .venv/bin/python benchmarks/sliced_batching.py [--size 1536] [--tile 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, median_time  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1536, help="image side in pixels")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--min-size", type=int, default=512, help="the card's shorter side")
    parser.add_argument("--max-memory", default="8GiB")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from keras_dense.apps import faster_rcnn
    from keras_dense.prediction.detection_memory import tile_bytes, tiles_per_call
    from keras_dense.prediction.inference import detect_objects_sliced, fast_rcnn_resize
    from keras_dense.signatures.memory_budget import parse_memory

    load = [round(v, 2) for v in os.getloadavg()]
    keras.utils.set_random_seed(0)
    model = faster_rcnn(num_classes=3, backbone="vgg16", fc_units=1024)
    card = {"min_size": args.min_size, "max_size": 2 * args.min_size, "normalization": "caffe"}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    budget = parse_memory(args.max_memory, "--max-memory")
    tile = min(args.tile, args.size)
    resized = fast_rcnn_resize(
        np.zeros((tile, tile, 3), np.uint8), args.min_size, 2 * args.min_size
    )
    per_call = tiles_per_call(model, *resized[0].shape[:2], budget)

    answers = {}

    def run(max_memory):
        def call():
            answers[max_memory] = detect_objects_sliced(
                model, image, card, args.tile, args.overlap, score_threshold=0.0,
                max_memory=max_memory,
            )  # fmt: skip

        return call

    one, one_runs = median_time(run(None), runs=args.runs)
    batched, batched_runs = median_time(run(budget), runs=args.runs)
    a, b = answers[None], answers[budget]
    same_count = len(a["boxes"]) == len(b["boxes"])
    report = {
        "image": [args.size, args.size],
        "tile": args.tile,
        "overlap": args.overlap,
        "resized_tile": list(resized[0].shape[:2]),
        "tile_bytes": tile_bytes(model, *resized[0].shape[:2]),
        "max_memory": budget,
        "tiles_per_call": per_call,
        "one_tile_per_call_s": round(one, 3),
        "batched_s": round(batched, 3),
        "ratio_batched_over_one": round(batched / one, 3),
        "runs_s": {
            "one": [round(t, 3) for t in one_runs],
            "batched": [round(t, 3) for t in batched_runs],
        },
        "detections": [len(a["boxes"]), len(b["boxes"])],
        "max_box_difference_px": (
            float(np.max(np.abs(np.sort(a["boxes"], 0) - np.sort(b["boxes"], 0))))
            if same_count and len(a["boxes"])
            else None
        ),
        "load_average_before": load,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "environment": environment(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
