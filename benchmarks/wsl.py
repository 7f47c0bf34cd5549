"""Weakly supervised localisation on the shapes set, per pooling: the whole WSL path.

For each pooling (gap, max, lse, weldon) a `wsl_classifier` is trained with image labels
only (`apps/wsl_shapes.toml`, the classification task deriving them from the shapes masks),
then:

1. evaluated on the validation shards (`keras_dense.tasks.classification`): mAP, the pointing
   game at 0 and 3 px, CorLoc, and the centre-point baseline's pointing score;
2. used to pseudo-label the training shards (`keras_dense.localization.write_pseudo_labels`)
   without and with the dense CRF; the pseudo-masks' mIoU against the true training masks
   (4 classes with background);
3. a U-Net (`apps/shapes_demo.toml`) is trained on the CRF pseudo-masks and evaluated on the
   true validation masks, beside the same U-Net trained on the true masks (once).

Targets of the issue: pointing >= 0.9 at 3 px, pseudo-mask mIoU >= 0.65 after the CRF, the
U-Net on pseudo-masks within 0.15 mIoU of the supervised one. Prints JSON: the numbers per
pooling, the settings, the seconds, versions, machine and load average.

    .venv/bin/python benchmarks/wsl.py [--train-images 400] [--val-images 60] \
        [--wsl-steps 300] [--unet-steps 300] [--poolings gap,max,lse,weldon]

The default budget is sized for about 15 minutes on 2 idle CPU cores.

Measured (2 shared AMD EPYC cores, load average about 5, TF 2.21, Keras 3.15; `--train-images
300`, 60 validation images at 64 px, 300 classifier steps of 16 from scratch, no ImageNet
weights, 300 U-Net steps; 20 minutes), every target missed at this budget:

| pooling | mAP | pointing 0 / 3 px | CorLoc | pseudo mIoU raw / CRF | U-Net on pseudo |
|---|---|---|---|---|---|
| gap | 0.760 | 0.220 / 0.356 | 0.000 | 0.111 / 0.055 | 0.029 |
| max | 0.781 | 0.051 / 0.068 | 0.000 | 0.185 / 0.292 | 0.246 |
| lse | 0.744 | 0.102 / 0.161 | 0.000 | 0.174 / 0.239 | 0.258 |
| weldon | 0.781 | 0.093 / 0.161 | 0.000 | 0.160 / 0.179 | 0.182 |

Centre-point baseline: 0.195 / 0.314 pointing at 0 / 3 px; the supervised U-Net reaches only
0.392 mIoU in its 300 steps (0.8 needs about 1000, see `apps/shapes_demo.toml`), so the
"within 0.15" comparison says little here. Only GAP points better than the centre at 3 px;
the 300-step classifiers from scratch classify (mAP 0.74-0.78) but do not yet localise.
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


def _train(recipe_name: str, overrides: list[str], output: str) -> str:
    from keras_dense.training import load_recipe, train

    recipe = load_recipe(os.path.join(REPO, "apps", recipe_name), overrides)
    return train(recipe, output, verbose=0)["model"]


def _mean_iou(pattern_truth: str, pattern_pseudo: str, num_classes: int = 4) -> float:
    """mIoU of the pseudo-masks against the true masks, over the classes present."""
    from keras_dense.data import read_examples

    truth = {r["source_id"]: r["mask"] for r in read_examples(pattern_truth)}
    cm = np.zeros((num_classes, num_classes), np.int64)
    for record in read_examples(pattern_pseudo):
        want = truth[record["source_id"]].astype(np.int64)
        got = record["mask"].astype(np.int64)
        keep = want < num_classes
        cm += np.bincount(want[keep] * num_classes + got[keep], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def _segmentation_miou(model_path: str, pattern: str) -> float:
    from keras_dense.evaluation.evaluator import evaluate_segmentation
    from keras_dense.tasks.model_loading import load_model_with_card

    model, card = load_model_with_card(model_path)
    return float(evaluate_segmentation(model, card, pattern)[1]["mean_iou"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--wsl-steps", type=int, default=300)
    parser.add_argument("--unet-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--poolings", default="gap,max,lse,weldon")
    parser.add_argument("--threshold", type=float, default=None, help="background threshold")
    args = parser.parse_args()

    from keras_dense.data import convert_shapes
    from keras_dense.localization import DEFAULT_BACKGROUND_THRESHOLD, write_pseudo_labels
    from keras_dense.tasks.classification import evaluate_classification
    from keras_dense.tasks.model_loading import load_model_with_card

    threshold = DEFAULT_BACKGROUND_THRESHOLD if args.threshold is None else args.threshold
    start = time.monotonic()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        convert_shapes(f"{tmp}/train", args.train_images, args.size, 0, progress=False)
        convert_shapes(f"{tmp}/val", args.val_images, args.size, 1, progress=False)
        train, val = f"{tmp}/train-*.tfrecord", f"{tmp}/val-*.tfrecord"
        steps = args.unet_steps // 4
        unet_overrides = [
            f'data.train="{train}"',
            f'data.validation="{val}"',
            f"data.crop_size={args.size}",
            "training.epochs=4",
            f"training.steps_per_epoch={max(steps, 1)}",
        ]
        began = time.monotonic()
        supervised = _train("shapes_demo.toml", unet_overrides, f"{tmp}/unet_supervised")
        results["supervised_unet"] = {
            "miou": _segmentation_miou(supervised, val),
            "seconds": time.monotonic() - began,
        }
        print(json.dumps({"supervised_unet": results["supervised_unet"]}), file=sys.stderr)
        for pooling in args.poolings.split(","):
            began = time.monotonic()
            row: dict = {}
            wsl_steps = max(args.wsl_steps // 4, 1)
            classifier = _train(
                "wsl_shapes.toml",
                [
                    f'data.train="{train}"',
                    f'data.validation="{val}"',
                    f"data.crop_size={args.size}",
                    f"training.batch_size={args.batch_size}",
                    "training.epochs=4",
                    f"training.steps_per_epoch={wsl_steps}",
                    f'model.kwargs.pooling="{pooling}"',
                ],
                f"{tmp}/wsl_{pooling}",
            )
            model, card = load_model_with_card(classifier)
            report = evaluate_classification(model, card, val, tolerance=3.0)
            row.update(
                map=report["map"],
                pointing_0px=report["pointing_0px"]["accuracy"],
                pointing_3px=report["pointing"]["accuracy"],
                centre_baseline_0px=report["centre_baseline_0px"]["accuracy"],
                centre_baseline_3px=report["centre_baseline"]["accuracy"],
                corloc=report["corloc"]["corloc"],
            )
            for crf in (False, True):
                name = f"{tmp}/pseudo_{pooling}{'_crf' if crf else ''}"
                write_pseudo_labels(
                    model,
                    train,
                    name,
                    card["classes"],
                    card["normalization"],
                    threshold=threshold,
                    crf=crf,
                    progress=False,
                )
                key = "pseudo_miou_crf" if crf else "pseudo_miou_raw"
                row[key] = _mean_iou(train, f"{name}-*.tfrecord")
            pseudo_unet = _train(
                "shapes_demo.toml",
                [*unet_overrides, f'data.train="{tmp}/pseudo_{pooling}_crf-*.tfrecord"'],
                f"{tmp}/unet_{pooling}",
            )
            row["unet_on_pseudo_miou"] = _segmentation_miou(pseudo_unet, val)
            row["unet_gap_to_supervised"] = (
                results["supervised_unet"]["miou"] - row["unet_on_pseudo_miou"]
            )
            row["seconds"] = time.monotonic() - began
            results[pooling] = row
            print(json.dumps({pooling: row}), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "wsl",
                "results": results,
                "targets": {
                    "pointing_3px": ">= 0.9",
                    "pseudo_miou_crf": ">= 0.65",
                    "unet_gap_to_supervised": "<= 0.15",
                },
                "settings": {**vars(args), "background_threshold": threshold},
                "seconds": time.monotonic() - start,
                "load_average": os.getloadavg(),
                "environment": environment(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
