"""RoI pooling and Fast R-CNN inference speed on this CPU. Prints JSON.

1. `RoIPooling` (exact Caffe RoI max pooling) against the idiomatic TF baseline, one batched
   `tf.image.crop_and_resize` to 14 x 14 + 2 x 2 max pool (the TF Object Detection API
   approximation, not Fast R-CNN's pooling), on VGG16 conv5_3 features of a 600 x 800 image
   (38 x 50 x 512), R = 128 and 2000: forward, and forward + backward (gradient of the sum
   with respect to the features), ours and the baseline interleaved run by run, medians,
   ratio and the load average. For context: our stock-TF path (`implementation="tf"`), our
   RoIAlign mode and the usual Keras-port loop calling `crop_and_resize` once per RoI.
2. Fast R-CNN (VGG16, 20 classes, random weights) seconds per image at scale 600
   (600 x 800 image, 2000 proposals): the network forward pass, `detect` (with decoding and
   NMS) and the fc heads alone, with and without
   `compress_dense(model, {"fc6": 1024, "fc7": 256})`.

Everything is measured in the same run (median of `--runs`).

    .venv/bin/python benchmarks/roi_pooling.py [--runs 7] [--model-runs 3] [--skip-model]
        [--skip-loop]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, median_time  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def random_rois(rng, count: int, height: int, width: int):
    """Selective-search-like boxes: sizes from 16 px to most of the image."""
    import numpy as np

    h = np.exp(rng.uniform(np.log(16), np.log(height), count))
    w = np.exp(rng.uniform(np.log(16), np.log(width), count))
    y0 = rng.uniform(0, height - h)
    x0 = rng.uniform(0, width - w)
    return np.stack([y0, x0, y0 + h - 1, x0 + w - 1], -1).astype(np.float32)


def crop_and_resize_loop(features, rois, pool: int, scale: float):
    """The usual port: one crop_and_resize call per RoI in a Python loop (eager)."""
    import tensorflow as tf

    height, width = features.shape[1], features.shape[2]
    outputs = []
    for y0, x0, y1, x1 in rois * scale:
        box = [[y0 / (height - 1), x0 / (width - 1), y1 / (height - 1), x1 / (width - 1)]]
        outputs.append(tf.image.crop_and_resize(features, box, [0], (pool, pool)))
    return tf.concat(outputs, axis=0)


def paired_times(fns: dict, runs: int, warmup: int = 1) -> dict:
    """Median and all wall times (ms) of each of `fns`, run in turn within every repetition.

    Interleaving the contenders exposes them to the same background load of a shared
    machine, so their ratio is steadier than that of two separate series.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def comparison(ours: tuple, baseline: tuple) -> dict:
    """Ours against the baseline: medians, ratio (> 1: ours is faster) and every run."""
    return {
        "ours_ms": ours[0],
        "baseline_ms": baseline[0],
        "ratio_baseline_over_ours": baseline[0] / ours[0],
        "ours_runs_ms": [round(t, 2) for t in ours[1]],
        "baseline_runs_ms": [round(t, 2) for t in baseline[1]],
    }


def bench_pooling(args, rng) -> dict:
    import numpy as np
    import tensorflow as tf

    from keras_dense.layers import RoIPooling
    from keras_dense.layers.roi_pooling import resolve_roi_implementation

    height, width, scale = 600, 800, 1.0 / 16.0
    features = tf.constant(rng.normal(size=(1, 38, 50, 512)).astype(np.float32))
    layer = RoIPooling(7, scale)
    portable = RoIPooling(7, scale, implementation="tf")
    align = RoIPooling(7, scale, mode="align", sampling_ratio=2)
    spec = [tf.TensorSpec([None, None, None, 512]), tf.TensorSpec([None, None, 4])]
    box_spec = [spec[0], tf.TensorSpec([None, 4])]

    def batched_crop(f, boxes):
        """The baseline: one batched crop_and_resize to 14 x 14, then a 2 x 2 max pool."""
        crops = tf.image.crop_and_resize(
            f, boxes, tf.zeros([tf.shape(boxes)[0]], tf.int32), (14, 14)
        )
        return tf.nn.max_pool2d(crops, 2, 2, "VALID")

    def with_gradient(fn):
        def train(f, r):
            with tf.GradientTape() as tape:
                tape.watch(f)
                loss = tf.reduce_sum(fn(f, r))
            return tape.gradient(loss, f)

        return train

    def ours_fn(f, r):
        return layer([f, r])

    def portable_fn(f, r):
        return portable([f, r])

    ours = tf.function(ours_fn, input_signature=spec)
    ours_train = tf.function(with_gradient(ours_fn), input_signature=spec)
    ours_tf = tf.function(portable_fn, input_signature=spec)
    ours_tf_train = tf.function(with_gradient(portable_fn), input_signature=spec)
    ours_align = tf.function(lambda f, r: align([f, r]), input_signature=spec)
    baseline = tf.function(batched_crop, input_signature=box_spec)
    baseline_train = tf.function(with_gradient(batched_crop), input_signature=box_spec)

    def measure(count: int) -> dict:
        rois = random_rois(rng, count, height, width)
        rois_t = tf.constant(rois[None])
        boxes = tf.constant(rois * scale / np.array([37, 49, 37, 49], np.float32))
        load_before = os.getloadavg()
        rss_before = peak_rss_gb()
        t = paired_times(
            {
                "forward": lambda: ours(features, rois_t).numpy(),
                "baseline_forward": lambda: baseline(features, boxes).numpy(),
                "forward_backward": lambda: ours_train(features, rois_t).numpy(),
                "baseline_forward_backward": lambda: baseline_train(features, boxes).numpy(),
            },
            args.runs,
        )
        rss_ours = peak_rss_gb()
        context = paired_times(
            {
                "tf_path_forward": lambda: ours_tf(features, rois_t).numpy(),
                "tf_path_forward_backward": lambda: ours_tf_train(features, rois_t).numpy(),
                "roi_align_forward": lambda: ours_align(features, rois_t).numpy(),
            },
            args.runs,
        )
        result = {
            "forward": comparison(t["forward"], t["baseline_forward"]),
            "forward_backward": comparison(t["forward_backward"], t["baseline_forward_backward"]),
            "context_ms": {name: value[0] for name, value in context.items()},
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "peak_rss_gb_before": rss_before,
            "peak_rss_gb_after_ours": rss_ours,
        }
        if not args.skip_loop:
            loop, _ = median_time(
                lambda: crop_and_resize_loop(features, rois, 7, scale).numpy(), args.runs
            )
            result["context_ms"]["crop_and_resize_python_loop_forward"] = loop * 1e3
        return result

    results = {
        "ours": f"RoIPooling(7, 1/16) mode='max', implementation "
        f"{layer.implementation!r} -> {resolve_roi_implementation('auto', tf.float32)!r}",
        "baseline": "one batched tf.image.crop_and_resize to 14 x 14 + 2 x 2 max pool",
        "ratio": "baseline_ms / ours_ms (> 1: ours is faster); medians of interleaved runs",
    }
    results.update({f"R={count}": measure(count) for count in args.rois})
    return results


def head_layers(model):
    names = [layer.name for layer in model.layers]
    start = names.index("roi_flatten") + 1
    return [layer for layer in model.layers[start:] if not layer.name.startswith("drop")]


def calibrate_background(model, images, proposals, passing: int) -> None:
    """Raises the background bias until about `passing` (RoI, class) scores reach 0.05.

    Random heads score every class near 1/21, right at detect's 0.05 threshold, so NMS would
    see ~20000 boxes; a trained detector calls most proposals background. This keeps the NMS
    workload of the timing close to that of a trained model.
    """
    import numpy as np

    logits = np.asarray(model([images, proposals], training=False)[0][0], np.float64)

    def count(shift: float) -> int:
        shifted = logits.copy()
        shifted[:, 0] += shift
        probs = np.exp(shifted - shifted.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return int((probs[:, 1:] >= 0.05).sum())

    low, high = -20.0, 20.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if count(middle) > passing else (low, middle)
    kernel, bias = model.get_layer("cls_score").get_weights()
    bias[0] += high
    model.get_layer("cls_score").set_weights([kernel, bias])


def bench_model(args, rng) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_dense.apps import compress_dense, fast_rcnn
    from keras_dense.detection import detect

    height, width, count = 600, 800, 2000
    model = fast_rcnn(num_classes=20)
    images = tf.constant(rng.normal(0, 50, (1, height, width, 3)).astype(np.float32))
    proposals = tf.constant(random_rois(rng, count, height, width)[None])
    calibrate_background(model, images, proposals, args.passing)
    start = time.perf_counter()
    small = compress_dense(model, {"fc6": 1024, "fc7": 256})
    svd_seconds = time.perf_counter() - start
    pooled = tf.constant(rng.normal(size=(1, count, 7 * 7 * 512)).astype(np.float32))
    results = {
        "image": [height, width],
        "proposals": count,
        "params_full": model.count_params(),
        "params_svd": small.count_params(),
        "svd_factorisation_s": svd_seconds,
    }

    def measure(net) -> dict:
        forward = tf.function(lambda i, p: net([i, p], training=False))
        run = tf.function(lambda i, p: detect(net, i, p))
        layers = head_layers(net)

        @tf.function
        def heads(x):
            for layer in layers[:-2]:
                x = layer(x)
            return layers[-2](x), layers[-1](x)

        runs = args.model_runs
        return {
            "forward_s": median_time(lambda: forward(images, proposals)[0].numpy(), runs)[0],
            "detect_s": median_time(lambda: run(images, proposals)["boxes"].numpy(), runs)[0],
            "fc_heads_s": median_time(lambda: heads(pooled)[0].numpy(), runs)[0],
            "detections": int(run(images, proposals)["num_detections"][0]),
        }

    trunk = keras.Model(model.inputs[0], model.get_layer("conv5_3").output)
    trunk_fn = tf.function(lambda i: trunk(i, training=False))
    results["conv_trunk_s"], _ = median_time(lambda: trunk_fn(images).numpy(), args.model_runs)
    for label, net in (("full", model), ("svd", small)):
        results[label] = measure(net)
    for key in ("forward_s", "detect_s", "fc_heads_s"):
        results[f"svd_speedup_{key[:-2]}"] = results["full"][key] / results["svd"][key]
    results["paper_k40_gpu_s_per_image"] = {"full": 0.32, "svd": 0.22}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--model-runs", type=int, default=3)
    parser.add_argument("--rois", type=int, nargs="+", default=[128, 2000])
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-pooling", action="store_true")
    parser.add_argument(
        "--skip-loop", action="store_true", help="skip the per-RoI crop_and_resize loop (slow)"
    )
    parser.add_argument(
        "--passing", type=int, default=300, help="(RoI, class) scores >= 0.05 in the timing"
    )
    args = parser.parse_args()

    import numpy as np

    rng = np.random.default_rng(0)
    report = {"features": [1, 38, 50, 512], "pool": 7, "runs": args.runs}
    if not args.skip_pooling:
        report["roi_pooling"] = bench_pooling(args, rng)
    if not args.skip_model:
        report["fast_rcnn_inference"] = bench_model(args, rng)
    report["peak_rss_gb"] = peak_rss_gb()
    report["load_average_end"] = os.getloadavg()
    report["environment"] = environment()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
