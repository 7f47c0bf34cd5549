"""SavedModel export overhead: the exported signatures vs the in-memory Keras model.

All in one run, on the same inputs, timings interleaved (A, B, A, B, ...) so that load from
other processes affects both sides alike; the median of `--runs` runs is reported:

- model only: `serving_tensor` of the reloaded SavedModel vs the in-memory model (called
  through `tf.function`, as a server would run it) on the same normalised float batch;
- end to end: `serving_default` on JPEG bytes (decode, normalise, model, argmax, PNG masks
  in the graph) vs the same steps outside the graph around the in-memory model (TF decode,
  NumPy normalisation, model, NumPy argmax, OpenCV PNG encoding);
- throughput (images/s) of both at batch 1 and batch 8.

Overhead = exported / in-memory - 1 (target: under 5%). Prints JSON.

    .venv/bin/python benchmarks/export_latency.py [--size 256] [--runs 7]
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

from common import environment  # noqa: E402


def interleaved_medians(fns: dict, runs: int, repeats: int) -> dict:
    """Median seconds per call of each function, timed in turn, `repeats` calls per run."""
    for fn in fns.values():
        fn()  # warm-up (tracing, caches)
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def make_jpegs(count: int, size: int) -> list[bytes]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        image = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 3)
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        images.append(cv2.imencode(".jpg", image)[1].tobytes())
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="image side (pixels)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--filters", type=int, default=16, help="U-Net base filters")
    parser.add_argument("--depth", type=int, default=4, help="U-Net levels")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="calls per timed run")
    args = parser.parse_args()

    import cv2
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_dense
    from keras_dense.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = keras_dense.apps.unet(
        num_classes=args.classes,
        input_shape=(None, None, 3),
        padding="same",
        filters=args.filters,
        depth=args.depth,
    )
    mean_bgr = np.array([103.939, 116.779, 123.68], np.float32)
    call_model = tf.function(lambda x: model(x, training=False))

    def in_memory_end_to_end(batch: list[bytes]):
        images = np.stack([tf.io.decode_jpeg(b, dct_method="INTEGER_ACCURATE") for b in batch])
        x = images[..., ::-1].astype(np.float32) - mean_bgr
        classes = np.argmax(call_model(x).numpy(), axis=-1).astype(np.uint8)
        return [cv2.imencode(".png", c, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1] for c in classes]

    results = {"environment": environment(), "settings": vars(args), "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export = export_saved_model(model, tmp, name="bench")
        results["export_seconds"] = round(time.perf_counter() - start, 2)
        loaded = tf.saved_model.load(export.path)
        serving_default = loaded.signatures["serving_default"]
        serving_tensor = loaded.signatures["serving_tensor"]
        jpegs = make_jpegs(8, args.size)
        for batch_size in (1, 8):
            batch = jpegs[:batch_size]
            floats = np.stack(
                [tf.io.decode_jpeg(b, dct_method="INTEGER_ACCURATE").numpy() for b in batch]
            ).astype(np.float32)
            floats = tf.constant(floats[..., ::-1] - mean_bgr)
            data = tf.constant(batch)
            # Same answers before timing anything.
            exported = serving_default(image_bytes=data)["classes"].numpy()
            reference = np.argmax(call_model(floats).numpy(), axis=-1)
            agreement = float(np.mean(exported == reference))
            medians = interleaved_medians(
                {
                    "model_in_memory": lambda x=floats: call_model(x).numpy(),
                    "model_saved_model": lambda x=floats: serving_tensor(images=x)[
                        "scores"
                    ].numpy(),
                    "end_to_end_in_memory": lambda b=batch: in_memory_end_to_end(b),
                    "end_to_end_saved_model": lambda d=data: serving_default(image_bytes=d)[
                        "mask_png_bytes"
                    ].numpy(),
                },
                args.runs,
                args.repeats,
            )
            entry = {"class_agreement": agreement}
            for name, seconds in medians.items():
                entry[f"{name}_ms"] = round(1000 * seconds, 2)
                entry[f"{name}_images_per_s"] = round(batch_size / seconds, 2)
            for part in ("model", "end_to_end"):
                overhead = medians[f"{part}_saved_model"] / medians[f"{part}_in_memory"] - 1
                entry[f"{part}_overhead_percent"] = round(100 * overhead, 2)
            results["batches"][str(batch_size)] = entry
    results["target_overhead_percent"] = 5.0
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
