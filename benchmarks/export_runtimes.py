"""Latency of the checked ONNX and OpenVINO exports against the TF SavedModel, same inputs.

For each model (U-Net, DeepLabv3+, Faster R-CNN; random weights, which do not change the
cost), `keras-dense export --format onnx|openvino` runs as a user would (converted, checked
on generated images, written), the same model is exported as a TF SavedModel, and the three
are timed on the same batch, interleaved round by round (a change in the machine's load hits
all of them alike): the median of `--runs` rounds, and each runtime's ratio to the SavedModel.
A model a format cannot express is listed with the refusal the export gives.

Prints JSON with versions, the machine and the load average before and after.

    .venv/bin/python benchmarks/export_runtimes.py [--runs 9] [--batch 1]
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


def build(name: str):
    """(model, card, input (H, W)) with random weights."""
    from keras_dense import apps

    if name == "unet":
        model = apps.unet(2, input_shape=(None, None, 3), padding="same", filters=32, depth=4)
        return model, {"task": "segmentation", "normalization": "caffe"}, (256, 256)
    if name == "deeplab":
        model = apps.deeplab(21, input_shape=(None, None, 3))
        return model, {"task": "segmentation", "normalization": "caffe"}, (257, 257)
    # apps/faster_rcnn_fpn_bccd.toml's architecture: RoIAlign (the form ONNX converts; RoI
    # max pooling's level loop does not) and 1024-unit fc layers (VGG16's 4096-unit fc6,
    # 25088 x 4096 weights, took over 20 GB in tf2onnx here).
    model = apps.faster_rcnn(
        num_classes=3, input_shape=(None, None, 3), roi_mode="align", fpn=True, fc_units=1024
    )
    card = {"task": "detection", "normalization": "caffe", "classes": ["a", "b", "c"]}
    return model, {**card, "min_size": 320, "max_size": 320}, (320, 320)


def measure(name: str, runs: int, batch: int, folder: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from keras_dense.export.runtime_export import export_runtime
    from keras_dense.export.runtimes import RUNTIMES
    from keras_dense.utils.model_card import write_model_card

    model, card, size = build(name)
    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    write_model_card(path, {**card, "input_size": list(size)})
    images = np.random.default_rng(0).normal(0, 50, (batch, *size, 3)).astype(np.float32)
    feeds = {"images": images}
    if card["task"] == "detection":
        feeds["image_shape"] = np.tile(np.array([size], np.float32), (batch, 1))
        feeds["scale"] = np.ones(batch, np.float32)
    runners, exports = {}, {}
    for output_format, runtime in RUNTIMES.items():
        start = time.perf_counter()
        try:
            result = export_runtime(path, folder, output_format, check_images=2)
        except (ValueError, RuntimeError) as error:
            exports[output_format] = {"refused": str(error)}
            continue
        exports[output_format] = {
            "export_seconds": round(time.perf_counter() - start, 1),
            "agreement": result.report["check"]["agreement"],
            "max_abs_diff": result.report["check"]["max_abs_diff"],
        }
        if "max_box_diff" in result.report["check"]:  # detectors: matched final boxes, px
            exports[output_format]["max_box_diff"] = result.report["check"]["max_box_diff"]
        runners[output_format] = _runner(output_format, runtime, result.path, feeds)
    if not runners:
        return {"input": [batch, *size, 3], "exports": exports}
    saved = os.path.join(folder, f"{name}_savedmodel")
    specs = [tf.TensorSpec((None, *size, 3), tf.float32, name="images")]
    if len(feeds) > 1:
        specs += [
            tf.TensorSpec((None, 2), tf.float32, name="image_shape"),
            tf.TensorSpec((None,), tf.float32, name="scale"),
        ]
    signature = [specs] if len(specs) > 1 else specs
    model.export(saved, format="tf_saved_model", input_signature=signature, verbose=False)
    loaded = tf.saved_model.load(saved)  # kept alive by the runner: it owns the variables
    values = list(feeds.values())
    argument = values if len(values) > 1 else values[0]
    runners["savedmodel"] = lambda: np.asarray(tf.nest.flatten(loaded.serve(argument))[0])
    times = {key: [] for key in runners}
    for fn in runners.values():
        fn()  # warm-up
    for _ in range(runs):
        for key, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    medians = {key: round(1e3 * statistics.median(value), 2) for key, value in times.items()}
    return {
        "input": [batch, *size, 3],
        "exports": exports,
        "median_ms": medians,
        "ratio_to_savedmodel": {
            key: round(value / medians["savedmodel"], 3)
            for key, value in medians.items()
            if key != "savedmodel"
        },
    }


def _runner(output_format, runtime, path, feeds: dict):
    """A call that runs the written model once on `feeds` (session built once)."""
    import numpy as np

    if output_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feeds)
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    values = list(feeds.values())
    return lambda: np.asarray(compiled(values)[compiled.output(0)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["unet", "deeplab", "faster_rcnn"])
    args = parser.parse_args(argv)
    report = {"runs": args.runs, "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as folder:
        report["models"] = {
            name: measure(name, args.runs, args.batch, folder) for name in args.models
        }
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    import onnxruntime
    import openvino
    import tf2onnx

    report["environment"] = {
        **environment(),
        "onnxruntime": onnxruntime.__version__,
        "tf2onnx": tf2onnx.__version__,
        "openvino": openvino.__version__,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
