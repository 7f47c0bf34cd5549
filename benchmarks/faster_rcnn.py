"""Faster R-CNN against Fast R-CNN + selective search on BCCD, on this machine. Prints JSON.

Three measurements, each with its baseline measured in the same run:

1. **BCCD VOC mAP from scratch at one small CPU budget.** `apps/fast_rcnn_bccd.toml` and
   `apps/faster_rcnn_bccd.toml`, both with `backbone_weights="none"`, the same number of
   steps (`--steps`, 2 images each), the same reduced scale (shorter side 240, longer <= 400)
   and 64 RoIs per image; the Faster R-CNN anchors are halved with the scale (16 ... 128).
   Trained and scored with the `keras-dense` commands (fresh processes), on the train /
   val splits (Fast R-CNN reads the selective-search proposals of its shards, Faster R-CNN
   ignores them). The wall time of each training is reported.
2. **Proposal recall on BCCD test** (72 images, every ground-truth box): the trained Faster
   R-CNN's RPN at 300 proposals (its test setting: 6000 before NMS 0.7, 300 after, at the
   training scale) against selective search (OpenCV "fast" mode, the converter's settings)
   at 2000, recall at IoU 0.5 and 0.7 (inclusive-pixel IoU, proposals in original pixels),
   with the median time per image of each (RPN: backbone + RPN head + proposal layer, one
   `tf.function`; selective search on the 640 x 480 original).
3. **End-to-end detection latency per image at 600 x 800**, proposals included: Faster R-CNN
   (`detect(model, image)`, the trained model) against Fast R-CNN + selective search
   (`selective_search` on the 600 x 800 image, then `detect(model, image, proposals)` on its
   up to 2000 boxes), both VGG16 with 4096-unit fc layers; median of `--runs` after a warm-up,
   the two interleaved run by run; the ratio is Fast R-CNN + selective search over Faster
   R-CNN.

    .venv/bin/python benchmarks/faster_rcnn.py [--steps 150] [--runs 3] [--work runs/bench_faster]

Needs `../shared/datasets/bccd` (or `$KERAS_DENSE_DATA/bccd`); converts it into
`tfrecords/bench_faster/` unless the shards are there.

Measured (AMD EPYC, 2 cores shared with other jobs, TF 2.21.0, Keras 3.15): see the JSON
printed by the last run, copied below.

RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = "tfrecords/bench_faster"
CLASSES = "RBC,WBC,Platelets"
MIN_SIZE, MAX_SIZE = 240, 400
# The README's results row for apps/fast_rcnn_bccd.toml (benchmarks/results.py, same steps,
# scale and data, backbone_weights "none"; its default 64 RoIs per image).
README_FAST_RCNN = {
    "recipe": "apps/fast_rcnn_bccd.toml",
    "map": 0.243,
    "train_seconds": 341,
    "evaluate_seconds": 89,
    "source": "README results table (benchmarks/results.py): training.steps=150, "
    "data.min_size=240, data.max_size=400, backbone_weights none, val split",
}


def shared_bccd() -> pathlib.Path:
    root = os.environ.get("KERAS_DENSE_DATA") or str(REPO.parent / "shared" / "datasets")
    return pathlib.Path(root) / "bccd"


def run_cli(args: list[str]) -> float:
    """Runs `keras-dense ARGS` in a fresh process from the repository root; returns seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dense.cli", *args], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"keras-dense {shlex.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - start


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def convert(bccd: pathlib.Path, commands: list[str]) -> float:
    """Converts the train and val splits with selective-search proposals (if missing)."""
    seconds = 0.0
    for split in ("train", "val"):
        if (REPO / DATA / f"{split}.json").exists():
            continue
        argv = ["convert", "voc", "--root", str(bccd), "--task", "detection", "--split", split]
        argv += ["--classes", CLASSES, "--proposals", "selective_search", "--on-error", "skip"]
        argv += ["--output", f"{DATA}/{split}"]
        seconds += run_cli(argv)
        commands.append(shlex.join(["keras-dense", *argv]))
    return seconds


def train_and_score(name: str, recipe: str, extra: list[str], work: str, steps: int, commands):
    """Trains a recipe from scratch at the benchmark budget and scores it on val."""
    output = f"{work}/{name}"
    overrides = [
        f'data.train="{DATA}/train-*.tfrecord"',
        f'data.validation="{DATA}/val-*.tfrecord"',
        'model.kwargs.backbone_weights="none"',
        f"training.steps={steps}",
        f"data.min_size={MIN_SIZE}",
        f"data.max_size={MAX_SIZE}",
        "model.kwargs.rois_per_image=64",
        *extra,
    ]
    argv = ["train", recipe, "--output", output]
    for override in overrides:
        argv += ["--set", override]
    load_before = load_average()
    train_seconds = run_cli(argv)
    commands.append(shlex.join(["keras-dense", *argv]))
    evaluate = ["evaluate", "--model", f"{output}/best.keras", "--data", f"{DATA}/val-*.tfrecord"]
    evaluate += ["--output", f"{output}/eval"]
    eval_seconds = run_cli(evaluate)
    commands.append(shlex.join(["keras-dense", *evaluate]))
    report = json.loads((REPO / output / "eval" / "metrics.json").read_text())
    return {
        "recipe": recipe,
        "map": round(report["map"], 4),
        "ap": {k: round(v, 4) for k, v in report["ap"].items()},
        "val_images": report["images"],
        "train_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(eval_seconds, 1),
        "load_average_before_training": load_before,
    }


def test_examples(bccd: pathlib.Path):
    """(image uint8 RGB, ground-truth boxes yxyx original pixels) of the BCCD test split."""
    import cv2
    import numpy as np

    from keras_dense.data.voc_xml import parse_voc_xml

    stems = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()
    for stem in stems:
        image = cv2.imread(str(bccd / "JPEGImages" / f"{stem}.jpg"))[..., ::-1]
        objects = parse_voc_xml(str(bccd / "Annotations" / f"{stem}.xml")).objects
        # The converter's boxes: (ymin - 1, xmin - 1, ymax, xmax) of the 1-based VOC box.
        boxes = [(o.ymin - 1, o.xmin - 1, o.ymax, o.xmax) for o in objects if not o.difficult]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # as --on-error skip
        yield stem, np.ascontiguousarray(image), boxes[keep]


def best_iou(proposals, truth):
    """(G,) highest inclusive-pixel IoU of each ground-truth box with any proposal."""
    import numpy as np

    if len(truth) == 0:
        return np.zeros(0)
    if len(proposals) == 0:
        return np.zeros(len(truth))
    p, g = proposals[:, None, :], truth[None, :, :]
    ih = np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + 1
    iw = np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + 1
    inter = np.clip(ih, 0, None) * np.clip(iw, 0, None)
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    return (inter / (area_p + area_g - inter)).max(axis=0)


def proposal_recall(
    model_path: str | None, bccd: pathlib.Path, methods=("rpn", "selective_search")
) -> dict:
    """Recall at IoU 0.5 / 0.7 of RPN@300 and selective search@2000 on BCCD test.

    Args:
        model_path: The trained Faster R-CNN (`.keras`, repo-relative); None without "rpn".
        bccd: The BCCD folder.
        methods: Which of "rpn" and "selective_search" to measure.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_dense  # noqa: F401  (registers the layers)
    from keras_dense.detection import selective_search
    from keras_dense.prediction.inference import fast_rcnn_resize
    from keras_dense.utils.normalization import normalize

    if "rpn" in methods:
        model = keras.models.load_model(REPO / model_path)
        backbone = model.get_layer("backbone")
        rpn = model.get_layer("rpn")
        proposal_layer = model.get_layer("proposal_layer")

    @tf.function(reduce_retracing=True)
    def propose(images, shape, scale):
        objectness, deltas = rpn(backbone(images, training=False))
        return proposal_layer([objectness, deltas, shape, scale], training=False)

    ious = {"rpn": [], "selective_search": []}
    times = {"rpn": [], "selective_search": []}
    counts = {"rpn": [], "selective_search": []}
    for _, image, truth in test_examples(bccd):
        found = {}
        if "rpn" in methods:
            resized, scale = fast_rcnn_resize(image, MIN_SIZE, MAX_SIZE)
            x = np.asarray(normalize(resized, "caffe"), np.float32)[None]
            shape = np.array([resized.shape[:2]], np.float32)
            args = (tf.constant(x), tf.constant(shape), tf.constant([scale], tf.float32))
            if not times["rpn"]:
                propose(*args)  # trace once
            start = time.perf_counter()
            boxes, _, count = propose(*args)
            boxes = boxes.numpy()[0, : int(count[0])] / scale
            times["rpn"].append(time.perf_counter() - start)
            found["rpn"] = boxes[:300]
        if "selective_search" in methods:
            start = time.perf_counter()
            searched = selective_search(image, max_boxes=2000)
            times["selective_search"].append(time.perf_counter() - start)
            found["selective_search"] = searched[:2000]
        for key, boxes in found.items():
            ious[key].append(best_iou(np.asarray(boxes, np.float64), truth))
            counts[key].append(len(boxes))
    result = {}
    for key, label in (("rpn", "rpn_at_300"), ("selective_search", "selective_search_at_2000")):
        if key not in methods:
            continue
        best = np.concatenate(ious[key])
        result[label] = {
            "recall_iou_0.5": round(float((best >= 0.5).mean()), 4),
            "recall_iou_0.7": round(float((best >= 0.7).mean()), 4),
            "median_seconds_per_image": round(statistics.median(times[key]), 4),
            "mean_proposals_per_image": round(float(np.mean(counts[key])), 1),
        }
    result["ground_truth_boxes"] = int(sum(len(v) for v in ious[methods[0]]))
    result["images"] = len(ious[methods[0]])
    result["rpn_scale"] = f"shorter side {MIN_SIZE}, longer <= {MAX_SIZE} (the training scale)"
    return result


def latency(faster_path: str, fast_path: str | None, bccd: pathlib.Path, runs: int) -> dict:
    """End-to-end detection latency per 600 x 800 image, proposals included."""
    import cv2
    import keras
    import numpy as np

    import keras_dense  # noqa: F401
    from keras_dense.apps import fast_rcnn
    from keras_dense.detection import detect, selective_search
    from keras_dense.utils.normalization import normalize

    faster = keras.models.load_model(REPO / faster_path)
    if fast_path is None:
        keras.utils.set_random_seed(0)
        fast = fast_rcnn(num_classes=faster.num_classes)
    else:
        fast = keras.models.load_model(REPO / fast_path)
    _, image, _ = next(iter(test_examples(bccd)))
    image = cv2.resize(image, (800, 600), interpolation=cv2.INTER_LINEAR)
    x = np.asarray(normalize(image, "caffe"), np.float32)[None]
    counts = {}

    def run_faster():
        out = detect(faster, x)
        counts["faster_detections"] = int(out["num_detections"][0])

    def run_fast():
        proposals = selective_search(image, max_boxes=2000)
        counts["fast_proposals"] = len(proposals)
        out = detect(fast, x, proposals[None].astype(np.float32))
        counts["fast_detections"] = int(out["num_detections"][0])

    for fn in (run_faster, run_fast):  # warm-up
        fn()
    times = {"faster_rcnn": [], "fast_rcnn_selective_search": []}
    for _ in range(runs):
        for key, fn in (("faster_rcnn", run_faster), ("fast_rcnn_selective_search", run_fast)):
            start = time.perf_counter()
            fn()
            times[key].append(round(time.perf_counter() - start, 3))
    medians = {key: statistics.median(value) for key, value in times.items()}
    return {
        "image": "BCCD test image resized to 600 x 800 (H x W)",
        "median_seconds": {k: round(v, 3) for k, v in medians.items()},
        "runs": times,
        "ratio_fast_over_faster": round(
            medians["fast_rcnn_selective_search"] / medians["faster_rcnn"], 2
        ),
        **counts,
    }


def save_partial(work: str, out: dict) -> None:
    """Writes the results so far to WORK/results.json (temporary name, then rename)."""
    path = REPO / work / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"results.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps of each model")
    parser.add_argument("--runs", type=int, default=3, help="timed latency runs")
    parser.add_argument("--work", default="runs/bench_faster", help="run folder (repo-relative)")
    parser.add_argument(
        "--fast-baseline",
        choices=("train", "readme"),
        default="train",
        help="mAP baseline: train Fast R-CNN here (default) or quote the README's results row "
        "(same recipe, steps, scale; `benchmarks/results.py`); the latency baseline then uses "
        "an untrained Fast R-CNN (same architecture and proposals, so the same work)",
    )
    args = parser.parse_args()
    bccd = shared_bccd()
    if not (bccd / "Annotations").is_dir():
        raise SystemExit(f"BCCD not found at {bccd}: set KERAS_DENSE_DATA or add ../shared")
    commands: list[str] = []
    out = {"environment": environment(), "load_average_start": load_average()}
    out["convert_seconds"] = round(convert(bccd, commands), 1)
    if args.fast_baseline == "train":
        fast = train_and_score(
            "fast_rcnn", "apps/fast_rcnn_bccd.toml", [], args.work, args.steps, commands
        )
        fast_path = f"{args.work}/fast_rcnn/best.keras"
    else:
        fast = dict(README_FAST_RCNN)
        fast_path = None
    faster = train_and_score(
        "faster_rcnn",
        "apps/faster_rcnn_bccd.toml",
        ["model.kwargs.anchor_scales=[16, 32, 64, 128]"],
        args.work,
        args.steps,
        commands,
    )
    out["map_from_scratch"] = {
        "budget": f"{args.steps} steps x 2 images, shorter side {MIN_SIZE}, no ImageNet weights",
        "fast_rcnn_selective_search": fast,
        "faster_rcnn": faster,
    }
    save_partial(args.work, out)
    out["load_average_recall"] = load_average()
    out["proposal_recall_test"] = proposal_recall(f"{args.work}/faster_rcnn/best.keras", bccd)
    save_partial(args.work, out)
    out["load_average_latency"] = load_average()
    out["latency_600x800"] = latency(
        f"{args.work}/faster_rcnn/best.keras", fast_path, bccd, args.runs
    )
    out["load_average_end"] = load_average()
    out["commands"] = commands
    save_partial(args.work, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
