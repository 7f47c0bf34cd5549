"""One-shot check of keras_dense on a CUDA GPU: speed of every part that should run there.

Sections (each in its own try block: a failure is reported in the JSON and the rest still run;
each has a time budget, and items left when it is spent are reported as skipped):

- `segmentation`: the train step (`train_on_batch`, SGD, sparse cross-entropy) of every
  segmentation builder (fcn8s, deeplab resnet50 OS16, deconvnet `fc_padding="same"`, unet
  `padding="same"`) at 512x512, batch 8, in float32 and mixed_float16, jit_compile off and
  on: images/s over a few steps after warm-up;
- `fast_rcnn`: the Fast R-CNN train step (VGG16, 2 images of 600x800, 2000 proposals);
- `crf`: the dense CRF's pure-TF twin (`implementation="tf"`) on the GPU vs the custom op on
  the host, 10 mean-field iterations on a 320x213 scene with 21 classes;
- `roi_pooling`: `keras_dense.layers.RoIPooling` (max and align) forward and gradient on the
  GPU, 2000 RoIs on VGG16 conv5 features of a 600x800 image;
- `input_pipeline`: the host `segmentation_dataset` (training augmentation, crop 512) rate on
  synthetic shards (`convert_shapes`) against each model's train-step rate;
- `memory`: peak GPU memory (`tf.config.experimental.get_memory_info`) per section.

Without a GPU it prints a JSON saying it skipped and exits 0, so it can sit in CPU-only CI.
With one it prints ONE JSON object and ends within `--budget-s` (default 450 s; a watchdog
prints what it has and exits if a step hangs past the budget). `--smoke` runs every section
at tiny sizes with one timed step, on CPU too, to check the code paths.

    python benchmarks/gpu_check.py [--smoke] [--budget-s 450]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# Share of the total budget per section (the rest is start-up and slack).
SHARES = {
    "segmentation": 0.55,
    "fast_rcnn": 0.12,
    "crf": 0.08,
    "roi_pooling": 0.06,
    "input_pipeline": 0.09,
}


class Budget:
    """Wall-clock budget of a section."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _error(err: BaseException) -> dict:
    text = "".join(traceback.format_exception_only(type(err), err)).strip()
    # TensorFlow errors carry a long traceback: keep the head (type, op) and the tail (cause).
    return {"error": text if len(text) <= 1500 else f"{text[:500]} ... {text[-1000:]}"}


# Failures that are not keras_dense's, recognised by a piece of their message.
KNOWN_ISSUES = {
    "Seen floating point types of different precisions": (
        "upstream TensorFlow/XLA: XLA's CPU backend rejects the mixed_float16 backward pass "
        "of a model with a bilinear resize (HLO verifier: 'mixed precision is disallowed', on "
        "the ReluGrad / MaxPoolGrad before it); it reproduces with stock Keras layers alone "
        "(Conv2D, BatchNormalization, ReLU, "
        "MaxPooling2D, Conv2D, UpSampling2D(interpolation='bilinear')) under "
        "mixed_float16 + jit_compile=True on CPU. Not a keras_dense bug; float32 + XLA and "
        "mixed_float16 without XLA run."
    ),
}


def _known_issue(report: dict) -> dict:
    """Adds `known_issue` to an error report whose message matches `KNOWN_ISSUES`."""
    for fragment, note in KNOWN_ISSUES.items():
        if fragment in report.get("error", ""):
            return {**report, "known_issue": note}
    return report


def _rate(fn: Callable[[], object], items: int, steps: int, warmup: int) -> dict:
    """items/s of `fn` (median over `steps` timed calls after `warmup` untimed ones)."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    warm_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {
        "items_per_s": round(items / statistics.median(times), 2),
        "step_s_median": round(statistics.median(times), 5),
        "step_s": [round(t, 5) for t in times],
        "warmup_s": round(warm_s, 2),
    }


def _sync(value):
    """Waits for a (possibly nested) result to be computed on the device."""
    import tensorflow as tf

    for item in tf.nest.flatten(value):
        if hasattr(item, "numpy"):
            item.numpy()
    return value


def peak_memory(device: str) -> dict:
    """Peak and current memory of a device in MiB, then resets the peak counter."""
    import tensorflow as tf

    info = tf.config.experimental.get_memory_info(device)
    tf.config.experimental.reset_memory_stats(device)
    return {
        "peak_mib": round(info["peak"] / 2**20, 1),
        "current_mib": round(info["current"] / 2**20, 1),
    }


def segmentation(cfg: dict, budget: Budget) -> dict:
    """Train-step images/s of every builder, in both precisions, jit off and on."""
    import keras
    import numpy as np
    from models import BUILDERS

    import keras_dense

    size, batch, classes = cfg["size"], cfg["batch"], 21
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, (batch, size, size)).astype(np.int32)
    out: dict = {"image_size": size, "batch_size": batch, "num_classes": classes, "runs": {}}
    # Cheapest first, so that a short budget still covers every model once.
    combos = [(p, j) for j in (False, True) for p in ("float32", "mixed_float16")]
    for policy, jit in combos:
        for name, (function, kwargs) in BUILDERS.items():
            key = f"{name}/{policy}/jit_{'on' if jit else 'off'}"
            if budget.left() < 5:
                out["runs"][key] = {"skipped": "section budget spent"}
                continue
            try:
                builder = getattr(keras_dense.apps, function, None)
                if builder is None:
                    out["runs"][key] = {"skipped": "builder not found"}
                    continue
                keras.backend.clear_session()
                keras.mixed_precision.set_global_policy(policy)
                model = builder(num_classes=classes, **kwargs(size))
                model.compile(
                    optimizer=keras.optimizers.SGD(1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    jit_compile=jit,
                )
                run = _rate(
                    lambda m=model: m.train_on_batch(x, y), batch, cfg["steps"], cfg["warmup"]
                )
                run["images_per_s"] = run.pop("items_per_s")
                out["runs"][key] = run
            except Exception as err:  # noqa: BLE001 - reported, the others still run
                out["runs"][key] = _known_issue(_error(err))
            finally:
                keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
    return out


def fast_rcnn_step(cfg: dict, budget: Budget) -> dict:
    """Fast R-CNN train-step time on a synthetic detection batch (as detection_dataset)."""
    import keras
    import numpy as np
    from roi_pooling import random_rois

    from keras_dense.apps import fast_rcnn

    h, w, count, batch = cfg["det_h"], cfg["det_w"], cfg["proposals"], 2
    rng = np.random.default_rng(0)
    proposals = np.stack([random_rois(rng, count, h, w) for _ in range(batch)])
    boxes = np.zeros((batch, 5, 4), np.float32)
    boxes[:, :2] = proposals[:, :2]
    data = {
        "images": rng.normal(0, 50, (batch, h, w, 3)).astype(np.float32),
        "image_shape": np.array([[h, w]] * batch, np.int32),
        "scale": np.ones(batch, np.float32),
        "boxes": boxes,
        "labels": np.array([[1, 2, 0, 0, 0]] * batch, np.int32),
        "difficult": np.zeros((batch, 5), bool),
        "num_boxes": np.array([2] * batch, np.int32),
        "proposals": proposals,
        "num_proposals": np.array([count] * batch, np.int32),
    }
    keras.backend.clear_session()
    model = fast_rcnn(num_classes=20, rois_per_image=64)
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    run = _rate(lambda: model.train_on_batch(data), batch, cfg["steps"], cfg["warmup"])
    run["images_per_s"] = run.pop("items_per_s")
    out = {"image": [h, w], "proposals_per_image": count, "batch_size": batch, **run}
    keras.backend.clear_session()
    return out


def crf(cfg: dict, budget: Budget, gpu: bool) -> dict:
    """The pure-TF dense CRF on the accelerator vs the custom op on the host."""
    import tensorflow as tf
    from crf import PARAMS, synthetic_scene

    from keras_dense.crf import dense_crf

    image, _, probabilities = synthetic_scene()
    s = cfg["crf_crop"]
    if s:
        image, probabilities = image[:s, :s], probabilities[:s, :s]
    iterations = cfg["crf_iterations"]
    out: dict = {"image": list(image.shape[:2]), "classes": probabilities.shape[-1]}
    out["iterations"] = iterations
    device = "/GPU:0" if gpu else "/CPU:0"
    for key, dev, impl in (
        ("tf_on_device", device, "tf"),
        ("custom_op_on_host", "/CPU:0", "custom_op"),
    ):
        if budget.left() < 3:
            out[key] = {"skipped": "section budget spent"}
            continue
        try:
            with tf.device(dev):
                run = _rate(
                    lambda i=impl: dense_crf(
                        probabilities, image, num_iterations=iterations, implementation=i, **PARAMS
                    ),
                    1,
                    cfg["steps"],
                    1,
                )
            out[key] = {"device": dev, "seconds": run["step_s_median"], **run}
        except Exception as err:  # noqa: BLE001
            out[key] = _error(err)
    if "seconds" in out.get("tf_on_device", {}) and "seconds" in out.get("custom_op_on_host", {}):
        out["speedup_device_tf_over_host_op"] = round(
            out["custom_op_on_host"]["seconds"] / out["tf_on_device"]["seconds"], 3
        )
    return out


def roi_pooling(cfg: dict, budget: Budget) -> dict:
    """RoIPooling (max and align) forward and gradient time on the accelerator."""
    import numpy as np
    import tensorflow as tf
    from roi_pooling import random_rois

    from keras_dense.layers import RoIPooling

    fh, fw, ch, count = cfg["feat_h"], cfg["feat_w"], cfg["feat_c"], cfg["rois"]
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(1, fh, fw, ch)).astype(np.float32))
    rois = tf.constant(random_rois(rng, count, fh * 16, fw * 16)[None])
    out: dict = {"features": [1, fh, fw, ch], "rois": count}
    for mode in ("max", "align"):
        if budget.left() < 2:
            out[mode] = {"skipped": "section budget spent"}
            continue
        try:
            layer = RoIPooling(7, 1.0 / 16, mode=mode)
            forward = tf.function(lambda f, r, lay=layer: lay([f, r]))

            @tf.function
            def gradient(f, r, lay=layer):
                with tf.GradientTape() as tape:
                    tape.watch(f)
                    loss = tf.reduce_sum(lay([f, r]))
                return tape.gradient(loss, f)

            fwd = _rate(lambda fn=forward: _sync(fn(features, rois)), count, cfg["steps"], 2)
            grad = _rate(lambda fn=gradient: _sync(fn(features, rois)), count, cfg["steps"], 2)
            out[mode] = {"forward_s": fwd["step_s_median"], "gradient_s": grad["step_s_median"]}
        except Exception as err:  # noqa: BLE001
            out[mode] = _error(err)
    return out


def input_pipeline(cfg: dict, budget: Budget, train_rates: dict) -> dict:
    """Host segmentation_dataset images/s vs the models' train-step images/s."""
    from keras_dense.data import convert_shapes, segmentation_dataset

    out: dict = {"image_size": cfg["size"], "crop_size": cfg["size"], "batch_size": cfg["batch"]}
    with tempfile.TemporaryDirectory() as tmp:
        n = cfg["pipeline_images"]
        convert_shapes(os.path.join(tmp, "s"), n, size=cfg["size"], num_shards=4, progress=False)
        ds = segmentation_dataset(
            os.path.join(tmp, "s-*.tfrecord"),
            cfg["batch"],
            crop_size=cfg["size"],
            training=True,
            seed=0,
            drop_remainder=False,
        ).repeat(2)
        consume = lambda: sum(1 for _ in ds)  # noqa: E731
        run = _rate(consume, 2 * n, max(1, cfg["steps"] // 2), 1)
    out["host_images_per_s"] = run["items_per_s"]
    out["host_cpu_count"] = os.cpu_count()
    out["runs_s"] = run["step_s"]
    out["pipeline_over_train_step"] = {
        key: round(run["items_per_s"] / rate, 3) for key, rate in train_rates.items() if rate
    }
    out["note"] = "a ratio below 1 means the host input pipeline cannot feed that train step"
    return out


def config(smoke: bool) -> dict:
    if smoke:
        return dict(
            size=64, batch=1, steps=1, warmup=1, det_h=96, det_w=128, proposals=40,
            crf_crop=48, crf_iterations=1, feat_h=6, feat_w=8, feat_c=16, rois=16,
            pipeline_images=8,
        )  # fmt: skip
    return dict(
        size=512, batch=8, steps=5, warmup=2, det_h=600, det_w=800, proposals=2000,
        crf_crop=0, crf_iterations=10, feat_h=38, feat_w=50, feat_c=512, rois=2000,
        pipeline_images=64,
    )  # fmt: skip


def run_checks(smoke: bool, budget_s: float, results: dict) -> dict:
    """Runs every section into `results` (filled as it goes, for the watchdog)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            pass
    device = "GPU:0" if gpus else "CPU:0"
    cfg = config(smoke)
    results.update(smoke=smoke, device=device, config=cfg, sections={})
    sections = results["sections"]
    memory = sections.setdefault("memory", {})

    def section(name: str, fn: Callable[[Budget], dict]) -> None:
        start = time.monotonic()
        budget = Budget(budget_s * SHARES[name])
        try:
            sections[name] = fn(budget)
        except Exception as err:  # noqa: BLE001 - one failure must not stop the others
            sections[name] = _error(err)
        sections[name]["section_s"] = round(time.monotonic() - start, 2)
        try:
            memory[name] = peak_memory(device)
        except Exception as err:  # noqa: BLE001 - e.g. no memory stats on CPU
            memory[name] = _error(err)

    section("segmentation", lambda b: segmentation(cfg, b))
    section("fast_rcnn", lambda b: fast_rcnn_step(cfg, b))
    section("crf", lambda b: crf(cfg, b, bool(gpus)))
    section("roi_pooling", lambda b: roi_pooling(cfg, b))
    rates = {
        key: run["images_per_s"]
        for key, run in sections.get("segmentation", {}).get("runs", {}).items()
        if isinstance(run, dict) and "images_per_s" in run
    }
    section("input_pipeline", lambda b: input_pipeline(cfg, b, rates))
    return results


def main(argv: list[str] | None = None) -> int:
    """Runs the check (or reports the skip) and prints one JSON object; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, also on CPU")
    parser.add_argument("--budget-s", type=float, default=450.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from common import environment

    started = time.monotonic()
    results: dict = {"benchmark": "gpu_check", "loadavg_before": list(os.getloadavg())}
    if not tf.config.list_physical_devices("GPU") and not args.smoke:
        results.update(
            skipped=True,
            reason="no GPU visible to TensorFlow: nothing to check (use --smoke for a CPU run)",
            environment=environment(),
        )
        print(json.dumps(results))
        return 0
    results["skipped"] = False
    printed = threading.Lock()

    def emit(extra: dict) -> None:
        if printed.acquire(blocking=False):
            results.update(extra)
            results["wall_s"] = round(time.monotonic() - started, 1)
            results["loadavg_after"] = list(os.getloadavg())
            print(json.dumps(results, default=str), flush=True)

    def watchdog() -> None:
        emit({"timed_out": True, "note": "budget exceeded: results so far"})
        os._exit(0)

    timer = threading.Timer(args.budget_s + 30, watchdog)
    timer.daemon = True
    timer.start()
    try:
        results["environment"] = environment()
        run_checks(args.smoke, args.budget_s, results)
    except Exception as err:  # noqa: BLE001 - still one JSON
        results["error"] = _error(err)["error"]
    timer.cancel()
    emit({"timed_out": False})
    return 0


if __name__ == "__main__":
    sys.exit(main())
