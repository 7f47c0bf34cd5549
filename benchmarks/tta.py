"""Test-time augmentation (flip, scales 0.75/1/1.25) on a real data set: the mIoU change.

A tiny U-Net is trained briefly on Oxford-IIIT Pet photos (`../shared/datasets/
oxford_pets_sample`, or `$KERAS_DENSE_DATA`): trimap 1 = pet, 2 = background, 3 = border
(the ignore label). To stay within a few CPU minutes the photos are first downscaled so that
their longer side is `--size` pixels (masks with nearest neighbour), converted with
`keras_dense.data.convert_pairs`, and the model is trained with `keras_dense.training.train`
on random crops. The `test.txt` images are then evaluated with
`keras_dense.evaluation.evaluate_segmentation` without TTA, with the flip, with the scales and
with both. Prints JSON: the scores, the seconds of each evaluation, the settings, versions,
machine and load average (other processes share the cores).

    .venv/bin/python benchmarks/tta.py [--train-images 300] [--test-images 150] [--steps 600]

Measured (2 shared AMD EPYC cores, load average about 5, TF 2.21, Keras 3.15; 300 training
and 150 test images at 128 px, 600 steps; about 2.3 minutes): mIoU without TTA 0.7128 /
0.7266 (seeds 0 / 1); flip +0.0087 / +0.0085, scales 0.75,1,1.25 +0.0088 / +0.0017, flip +
scales +0.0136 / +0.0064. A small, consistent gain for a weak model; one seed moves the
baseline by as much, so compare within a seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment  # noqa: E402


def _data_root() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (
        os.environ.get("KERAS_DENSE_DATA"),
        os.path.join(here, "..", "..", "shared", "datasets"),
    ):
        if root and os.path.isdir(os.path.join(root, "oxford_pets_sample")):
            return os.path.join(root, "oxford_pets_sample")
    raise SystemExit("oxford_pets_sample not found in $KERAS_DENSE_DATA or ../shared/datasets")


def _downscaled_pairs(pets: str, split: str, count: int, size: int, folder: str) -> int:
    """Writes `folder/images/*.png` and `folder/masks/*.png` (0 background, 1 pet, 255)."""
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "masks"))
    with open(os.path.join(pets, "annotations", split)) as f:
        names = [line.split()[0] for line in f if line.strip()][:count]
    written = 0
    for name in names:
        image = cv2.imread(os.path.join(pets, "images", name + ".jpg"))
        trimap = cv2.imread(os.path.join(pets, "annotations", "trimaps", name + ".png"), 0)
        if image is None or trimap is None or image.shape[:2] != trimap.shape[:2]:
            continue
        scale = size / max(image.shape[:2])
        dsize = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)
        trimap = cv2.resize(trimap, dsize, interpolation=cv2.INTER_NEAREST)
        mask = np.full(trimap.shape, 255, np.uint8)
        mask[trimap == 1] = 1
        mask[trimap == 2] = 0
        cv2.imwrite(os.path.join(folder, "images", name + ".png"), image)
        cv2.imwrite(os.path.join(folder, "masks", name + ".png"), mask)
        written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--test-images", type=int, default=150)
    parser.add_argument("--size", type=int, default=128, help="longer side after downscaling")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from keras_dense.data import convert_pairs
    from keras_dense.evaluation.evaluator import evaluate_segmentation
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.training import train, validate
    from keras_dense.utils.tta import TestTimeAugmentation

    report = {"load_average_before": os.getloadavg(), "environment": environment()}
    pets = _data_root()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        counts = {}
        for split, count, name in (
            ("trainval.txt", args.train_images, "train"),
            ("test.txt", args.test_images, "test"),
        ):
            folder = os.path.join(tmp, name + "_pairs")
            counts[name] = _downscaled_pairs(pets, split, count, args.size, folder)
            convert_pairs(
                os.path.join(folder, "images"),
                os.path.join(folder, "masks"),
                os.path.join(tmp, name),
                classes="background,pet",
                progress=False,
            )
        recipe = validate(
            {
                "seed": args.seed,
                "model": {
                    "builder": "unet",
                    "kwargs": {"padding": "same", "filters": 8, "depth": 3, "batch_norm": True},
                },
                "data": {
                    "train": os.path.join(tmp, "train-*.tfrecord"),
                    "crop_size": args.crop,
                    "scale_range": [0.75, 1.25],
                    "cache": True,
                },
                "training": {
                    "batch_size": 8,
                    "epochs": 1,
                    "steps_per_epoch": args.steps,
                    "image_summaries": 0,
                    "metrics": [],
                },
                "optimizer": {"name": "adamw", "learning_rate": 3e-3},
                "schedule": {"name": "cosine"},
            }
        )
        summary = train(recipe, os.path.join(tmp, "run"), verbose=0)
        report["train_seconds"] = round(time.monotonic() - start, 1)
        report["train_loss"] = summary["history"].get("loss")
        model, card = load_model_with_card(summary["model"])
        pattern = os.path.join(tmp, "test-*.tfrecord")
        settings = {
            "none": None,
            "flip": TestTimeAugmentation(True, (1.0,)),
            "scales 0.75,1,1.25": TestTimeAugmentation(False, (0.75, 1.0, 1.25)),
            "flip + scales 0.75,1,1.25": TestTimeAugmentation(True, (0.75, 1.0, 1.25)),
        }
        results = {}
        for label, tta in settings.items():
            began = time.monotonic()
            _, scores = evaluate_segmentation(model, card, pattern, tta=tta)
            results[label] = {
                "mean_iou": round(scores["mean_iou"], 4),
                "pixel_accuracy": round(scores["pixel_accuracy"], 4),
                "per_class_iou": {k: round(v, 4) for k, v in scores["per_class_iou"].items()},
                "seconds": round(time.monotonic() - began, 1),
            }
        base = results["none"]["mean_iou"]
        for value in results.values():
            value["mean_iou_change"] = round(value["mean_iou"] - base, 4)
    report.update(
        data="oxford_pets_sample (trimap 1 = pet, 2 = background, 3 = ignore)",
        images=counts,
        longer_side=args.size,
        model="unet(padding='same', filters=8, depth=3, batch_norm=True)",
        steps=args.steps,
        batch_size=8,
        crop=args.crop,
        threads=args.threads,
        results=results,
        total_seconds=round(time.monotonic() - start, 1),
        load_average_after=os.getloadavg(),
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
