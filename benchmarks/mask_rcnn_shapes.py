"""Mask R-CNN on the synthetic shapes set: COCO mask AP and box AP, VOC box mAP at 0.5.

The whole path of `apps/mask_rcnn_shapes.toml`: shapes shards with instance masks are
converted, Mask R-CNN (the compact conv-BN-ReLU trunk at stride 8 from scratch, no download)
is trained by the trainer for `--steps` steps, and the validation images are segmented at
full size (`keras_dense.prediction.instances.segment_instances`) and scored with pycocotools
(`keras_dense.evaluation.coco_map`) and the VOC devkit's rules
(`keras_dense.evaluation.voc_map`).

Baseline, measured in the same run on the same detections: every detection's mask replaced
by its filled box. The mask AP of the mask branch over this baseline's is what the mask
branch adds beyond the boxes (the ratio is printed).

    .venv/bin/python benchmarks/mask_rcnn_shapes.py [--train-images 400] [--val-images 50] \
        [--steps 1200] [--size 128] [--learning-rate LR] \
        [--set model.kwargs.backbone=\"vgg16\" --set model.kwargs.feature_stride=16 ...]

Prints JSON: the numbers, the settings, the seconds of each step, versions, machine and load
average.

Measured (2 shared AMD EPYC cores, TF 2.21, Keras 3.15; 50 validation images at 128 px,
no ImageNet weights, batches of 2 images, AdamW with cosine decay over 4 epochs; evaluation at
full size, 10-40 s):

Columns: A = VGG16, lr 3e-4, 600 steps, 400 training images (the previous recipe); B = compact,
lr 1e-3, 1200 steps, 400 images; C = compact, lr 1e-3, 2400 steps (the recipe's length), 1000
images (`--train-images 1000 --steps 2400`).

| metric | A | B | C |
|---|---|---|---|
| training seconds (load average) | 1169 (5-11) | 277 (4.3-6.3) | 756 (7.1-7.8) |
| COCO mask AP (0.50:0.95) | 0.0031 | 0.270 | 0.421 |
| COCO mask AP50 | 0.0227 | 0.415 | 0.593 |
| COCO box AP (0.50:0.95) | 0.0173 | 0.219 | 0.330 |
| COCO box AP50 | 0.0609 | 0.402 | 0.577 |
| VOC box mAP@0.5 | 0.0590 | 0.404 | 0.579 |
| VOC AP circle / square / triangle | 0.04 / 0.08 / 0.05 | 0.50 / 0.51 / 0.20 | 0.69 / 0.67 / 0.38 |
| baseline mask AP (box-filled masks) | 0.0073 | 0.105 | 0.132 |
| ratio mask AP / baseline | 0.43 | 2.58 | 3.18 |

VGG16 from scratch (13 convolutions without batch norm, the previous recipe) had barely
started to learn at its budget; the compact trunk (`backbone="compact"`, width 32, stride 8:
six conv-BN-ReLU layers, 2.3 M parameters in the whole model, about 0.23 s per step of 2
images at load 4-6; run C shared the cores with a test run) learns in minutes, and its masks
are well beyond filled boxes. Triangles stay the hardest class. The paper's figures
(ResNet-101-FPN, ImageNet weights, 8 GPUs) are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import environment  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, H, W) bool masks filling each box (continuous pixels, rounded to whole pixels)."""
    masks = np.zeros((len(boxes), height, width), bool)
    for mask, (y0, x0, y1, x1) in zip(masks, np.round(boxes).astype(int)):
        mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--keep", default="", help="folder to keep the run in (default: temp)")
    parser.add_argument(
        "--set", action="append", default=[], help="further recipe overrides (KEY=VALUE)"
    )
    args = parser.parse_args()

    from keras_dense.data import convert_shapes, read_examples
    from keras_dense.evaluation.coco_map import coco_metrics
    from keras_dense.evaluation.instance_evaluation import instance_ground_truth
    from keras_dense.evaluation.voc_map import voc_detection_map
    from keras_dense.prediction.instances import segment_instances
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.training import load_recipe, train

    start = time.monotonic()
    seconds: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        began = time.monotonic()
        convert_shapes(f"{root}/train", args.train_images, args.size, 0, progress=False)
        convert_shapes(f"{root}/val", args.val_images, args.size, 1, progress=False)
        seconds["convert"] = time.monotonic() - began
        train_pattern, val_pattern = f"{root}/train-*.tfrecord", f"{root}/val-*.tfrecord"
        epochs = 4
        overrides = [
            f'data.train="{train_pattern}"',
            'data.validation=""',
            f"data.min_size={args.size}",
            f"data.max_size={args.size}",
            f"training.batch_size={args.batch_size}",
            f"training.epochs={epochs}",
            f"training.steps_per_epoch={max(args.steps // epochs, 1)}",
            *([f"optimizer.learning_rate={args.learning_rate}"] if args.learning_rate else []),
            *args.set,
        ]
        recipe = load_recipe(os.path.join(REPO, "apps", "mask_rcnn_shapes.toml"), overrides)
        began = time.monotonic()
        model_path = train(recipe, f"{root}/run", verbose=0)["model"]
        seconds["train"] = time.monotonic() - began

        began = time.monotonic()
        model, card = load_model_with_card(model_path)
        detections, boxed, truths = [], [], []
        for example in read_examples(val_pattern):
            truths.append(instance_ground_truth(example, example["source_id"]))
            found = segment_instances(model, example["image"], card, score_threshold=0.0)
            detections.append(found)
            height, width = example["image"].shape[:2]
            boxed.append({**found, "masks": box_masks(found["boxes"], height, width)})
        coco = coco_metrics(detections, truths)
        baseline = coco_metrics(boxed, truths, ("segm",))["segm"]
        voc = voc_detection_map(
            detections,
            [{"boxes": t["boxes"], "labels": t["labels"], "difficult": t["crowd"]} for t in truths],
        )
        seconds["evaluate"] = time.monotonic() - began

    mask_ap, box_filled_ap = coco["segm"]["AP"], baseline["AP"]
    print(
        json.dumps(
            {
                "benchmark": "mask_rcnn_shapes",
                "results": {
                    "mask_ap": mask_ap,
                    "box_ap": coco["bbox"]["AP"],
                    "mask_ap50": coco["segm"]["AP50"],
                    "box_ap50": coco["bbox"]["AP50"],
                    "mask_ap75": coco["segm"]["AP75"],
                    "box_ap75": coco["bbox"]["AP75"],
                    "voc_box_map50": float(voc["map"]),
                    "voc_ap_per_class": {card["classes"][k - 1]: v for k, v in voc["ap"].items()},
                    "coco_bbox": coco["bbox"],
                    "coco_segm": coco["segm"],
                },
                "baseline": {
                    "what": "same detections, each mask replaced by its filled box",
                    "mask_ap": box_filled_ap,
                    "mask_ap50": baseline["AP50"],
                },
                "ratio_mask_ap_vs_box_filled": (
                    mask_ap / box_filled_ap if box_filled_ap and box_filled_ap > 0 else None
                ),
                "settings": vars(args),
                "seconds": {**seconds, "total": time.monotonic() - start},
                "load_average": os.getloadavg(),
                "environment": environment(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
