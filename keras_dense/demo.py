"""The end-to-end demo on the built-in shapes data (`make demo`).

1. convert the synthetic shapes set into TFRecords (`tfrecords/shapes/`);
2. train `apps/shapes_demo.toml` (a small U-Net);
3. evaluate it on the validation shards, print the mIoU and write report.html;
4. export a SavedModel (`saved_models/shapes/<version>/`);
5. write the TF Serving configs;
6. predict through the exported SavedModel in a fresh process that does not import
   keras_dense, writing colour overlays at least 512 px wide with a legend of the classes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence

PREDICT_WITH_SAVED_MODEL = """
import glob, json, os, sys
import cv2, numpy as np, tensorflow as tf
export_dir, images_dir, out_dir, names = sys.argv[1:4] + [json.loads(sys.argv[4])]
assert not any(m.startswith("keras_dense") for m in sys.modules)
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
files = sorted(glob.glob(os.path.join(images_dir, "*.png")))
out = serve(image_bytes=tf.constant([open(f, "rb").read() for f in files]))
palette = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 90, 230]], np.uint8)
os.makedirs(out_dir, exist_ok=True)
for f, classes, size in zip(files, out["classes"].numpy(), out["image_sizes"].numpy()):
    h, w = size
    image = cv2.imread(f)
    colour = palette[np.clip(classes[:h, :w], 0, 3)][:, :, ::-1]
    overlay = cv2.addWeighted(image, 0.5, colour, 0.5, 0)
    pair = np.concatenate([image, overlay], 1)
    # Large enough to see: nearest-neighbour upscaling to at least 512 px wide.
    factor = max(1, -(-512 // pair.shape[1]))
    pair = cv2.resize(pair, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    legend = np.full((36, pair.shape[1], 3), 255, np.uint8)
    x = 8
    for index, name in enumerate(names[: len(palette)]):
        cv2.rectangle(legend, (x, 9), (x + 18, 27), palette[index][::-1].tolist(), -1)
        cv2.rectangle(legend, (x, 9), (x + 18, 27), (90, 90, 90), 1)
        cv2.putText(legend, name, (x + 24, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        x += 34 + 10 * len(name)
    name = os.path.join(out_dir, os.path.basename(f)[:-4] + "_overlay.png")
    cv2.imwrite(name + ".tmp.png", np.concatenate([pair, legend], 0))
    os.replace(name + ".tmp.png", name)
print(len(files))
"""


def _run(step: str, argv: list[str]) -> None:
    from keras_dense.cli import main as cli

    print(f"\n== {step}: keras-dense {' '.join(argv)}", flush=True)
    status = cli(argv)
    if status != 0:
        raise SystemExit(f"demo step failed: {step} (exit status {status})")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the six demo steps and prints a summary.

    Args:
        argv: Command-line arguments (`--output DIR`, `--quick` for a short training run).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="demo_output", help="runs, predictions go here")
    parser.add_argument("--quick", action="store_true", help="1 epoch (smoke test)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    run_dir = os.path.join(args.output, "runs", "shapes")
    model = os.path.join(run_dir, "best.keras")
    served = os.path.join("saved_models", "shapes")

    _run(
        "1/6 convert",
        [
            "convert",
            "shapes",
            "--num-images",
            "1000",
            "--size",
            "64",
            "--seed",
            "0",
            "--num-shards",
            "2",
            "--output",
            "tfrecords/shapes/train",
        ],
    )
    _run(
        "1/6 convert",
        [
            "convert",
            "shapes",
            "--num-images",
            "100",
            "--size",
            "64",
            "--seed",
            "1",
            "--output",
            "tfrecords/shapes/val",
        ],
    )
    train = ["train", "apps/shapes_demo.toml", "--output", run_dir]
    if args.quick:
        train += ["--set", "training.epochs=1"]
    _run("2/6 train", train)
    eval_dir = os.path.join(args.output, "evaluation")
    _run(
        "3/6 evaluate",
        [
            "evaluate",
            "--model",
            model,
            "--data",
            "tfrecords/shapes/val-*.tfrecord",
            "--output",
            eval_dir,
        ],
    )
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        metrics = json.load(f)
    _run("4/6 export", ["export", "--model", model, "--output", served])
    version = max(int(v) for v in os.listdir(served) if v.isdigit())
    _run(
        "5/6 serving-config",
        ["serving-config", "--models", "saved_models", "--output", "saved_models"],
    )

    print("\n== 6/6 predict through the SavedModel in a fresh process", flush=True)
    from keras_dense.data import SHAPE_CLASSES, read_examples
    from keras_dense.data.image_io import encode_png

    samples = os.path.join(args.output, "samples")
    os.makedirs(samples, exist_ok=True)
    for i, example in enumerate(read_examples("tfrecords/shapes/val-*.tfrecord")):
        if i == 6:
            break
        with open(os.path.join(samples, f"{example['source_id']}.png"), "wb") as f:
            f.write(encode_png(example["image"]))
    overlays = os.path.join(args.output, "overlays")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(PREDICT_WITH_SAVED_MODEL),
            os.path.join(served, str(version)),
            samples,
            overlays,
            json.dumps(list(SHAPE_CLASSES)),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    miou = metrics.get("mean_iou", metrics.get("miou"))
    print(
        textwrap.dedent(f"""
        ================ keras_dense demo summary ================
        shards          tfrecords/shapes/{{train,val}}-*.tfrecord
        trained model   {model}
        validation mIoU {miou:.3f}  (details: {eval_dir}/metrics.json)
        SavedModel      {served}/{version}/  (serving_default: JPEG/PNG bytes)
        TF Serving      saved_models/{{models,batching,monitoring}}.config
        overlays        {overlays}/ ({done.stdout.strip()} images, via the SavedModel)
        total time      {time.monotonic() - start:.0f} s
        ==========================================================""").rstrip()
    )
    print(f"open the evaluation report: {eval_dir}/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
