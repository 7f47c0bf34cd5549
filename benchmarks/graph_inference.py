"""Detection with the model run as a graph (`keras_dense.utils.graph_inference`) vs eagerly.

`keras_dense.detection.detect` on one image, as `keras-dense evaluate` and `predict` call it:
the model through its cached graph function (new), against the same call with the model run op
by op from Python (the baseline, what `detect` did before), in the same run, on the same image
and weights. Default: the model of `apps/faster_rcnn_fpn_bccd.toml` (Faster R-CNN + FPN on
VGG16, its `[model.kwargs]`, random weights) at the Results row's evaluation size, 480 x 640.

    .venv/bin/python benchmarks/graph_inference.py [--recipe apps/...toml] [--height 480]
        [--width 640] [--runs 5]

Prints JSON: the median seconds per image of each (after a warm-up call that traces the
graph), the ratio baseline / new (`ratio`), the trace time, whether both found the same
detections (largest box and score differences), versions, machine and load average.

Measured 2026-12-06 (`--runs 5`, 2-core AMD EPYC family 25 model 1 with AVX2, TF 2.21, load
average 0.9-1.4): eager 3.03 s, graph 2.05 s per image, ratio 1.47; the first call, which
traces, 4.9 s; the same detections (boxes within 1.2e-4 px, scores within 3e-7). End to end,
`keras-dense evaluate` of the Results row's trained model (`bccd_fpn`, scratch, seed 1) on
BCCD's 87 validation images took 148 s before and 99 s after, with the same mAP (0.7801) and
per-class APs; peak memory 1.19 GB before, 1.43 GB after.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import environment, median_time  # noqa: E402

from keras_dense.apps import faster_rcnn  # noqa: E402
from keras_dense.detection import detect  # noqa: E402
from keras_dense.training.recipe import read_recipe_file  # noqa: E402

detect_module = importlib.import_module("keras_dense.detection.detect")


def eager(model, inputs):
    """The baseline: the model called op by op from Python."""
    return model(inputs, training=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--recipe", default="apps/faster_rcnn_fpn_bccd.toml")
    args = parser.parse_args()
    load_start = list(os.getloadavg())

    kwargs = dict(read_recipe_file(args.recipe)["model"]["kwargs"])
    kwargs.pop("backbone_weights", None)  # random weights: the time does not depend on them
    keras.utils.set_random_seed(0)
    model = faster_rcnn(num_classes=3, **kwargs)
    image = np.random.default_rng(0).normal(0, 50, (1, args.height, args.width, 3))
    image = image.astype(np.float32)

    def run():
        return detect(model, image)

    start = time.perf_counter()
    graph_out = run()  # traces the graph
    trace_seconds = time.perf_counter() - start
    graph_seconds, graph_times = median_time(run, args.runs, warmup=0)

    new_inference = detect_module.run_inference
    detect_module.run_inference = eager
    try:
        eager_out = run()
        eager_seconds, eager_times = median_time(run, args.runs, warmup=0)
    finally:
        detect_module.run_inference = new_inference

    same_counts = bool(np.array_equal(graph_out["num_detections"], eager_out["num_detections"]))
    report = {
        "configuration": {
            "recipe": args.recipe,
            "model_kwargs": kwargs,
            "image": [args.height, args.width],
            "runs": args.runs,
        },
        "baseline_eager_seconds": eager_seconds,
        "graph_seconds": graph_seconds,
        "ratio": eager_seconds / graph_seconds,
        "first_call_with_trace_seconds": trace_seconds,
        "times": {"eager": eager_times, "graph": graph_times},
        "same_detection_counts": same_counts,
        "largest_box_difference": float(
            np.abs(np.asarray(graph_out["boxes"]) - np.asarray(eager_out["boxes"])).max()
        ),
        "largest_score_difference": float(
            np.abs(np.asarray(graph_out["scores"]) - np.asarray(eager_out["scores"])).max()
        ),
        "environment": environment(),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
