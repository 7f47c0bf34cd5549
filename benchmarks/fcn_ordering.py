"""The FCN paper's ordering with a pretrained trunk: FCN-32s < FCN-16s < FCN-8s, and DeepLab v1
with the dense CRF above DeepLab v1, on one real set (`--row`: the ISBI 2012 membranes, or the
Oxford-IIIT Pet sample at reduced size).

Every model starts its VGG16 convolutions from `keras-dense pretrained hed-vgg16` (no network)
and trains with the same recipe, budget (steps, batch, crop), optimiser and seeds. The fresh
classifier layers (fc6 / fc7 of FCN, whose published weights are VGG16's own fully connected
layers and are not in a no-top file) use 1024 channels for every FCN variant, as DeepLab's do.
Each model is trained with every seed of `--seeds`; the JSON gives each seed's test mIoU, the
mean, the half range, and whether the means and every seed follow the paper's order.

`--models` runs a subset (the order is then checked on the pairs present); `--jobs` and
`--reuse` work as in `benchmarks/results.py` (runs at once sharing a GPU; existing shards and
weight file kept).

`--tune-crf N` tunes DeepLab v1's dense CRF (`keras-dense tune-crf`, coarse grid) on the first
N training images before its + CRF evaluation, as DeepLab cross-validates it; without it the
CRF runs with DeepLab's VOC parameters.

    .venv/bin/python benchmarks/fcn_ordering.py [--row isbi|pets] [--seeds 0 1]
        [--models fcn32s fcn16s fcn8s deeplab_v1] [--jobs N] [--reuse] [--tune-crf N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402
from results import (  # noqa: E402
    PRETRAINED,
    PRETRAINED_COMMAND,
    REPO,
    WORK,
    converted,
    evaluate,
    rows,
    run_cli,
)

# Per set: the recipe every model trains with (the builder is overridden) and the budget.
SETS = {
    "isbi": (
        "apps/deeplab_v1_isbi.toml",
        shlex.split("training.epochs=4 training.steps_per_epoch=50"),
    ),
    "pets": (
        "apps/deeplab_v1_pets.toml",
        shlex.split(
            "data.crop_size=160 training.batch_size=4 training.epochs=3 training.steps_per_epoch=50"
        ),
    ),
}
# (label, builder, its own overrides, evaluations beyond the plain one)
MODELS = (
    ("fcn32s", "fcn32s", ["model.kwargs.fc_filters=1024"], {}),
    ("fcn16s", "fcn16s", ["model.kwargs.fc_filters=1024"], {}),
    ("fcn8s", "fcn8s", ["model.kwargs.fc_filters=1024"], {}),
    ("deeplab_v1", "deeplab_v1", [], {"crf": ["--crf"]}),
)
ORDER = ("fcn32s", "fcn16s", "fcn8s", "deeplab_v1", "deeplab_v1_crf")


def train_and_score(
    row, label, builder, overrides, evaluations, seed, folder, share_gpu=False, tune_crf=0
) -> dict:
    """Trains one model with one seed; returns {score name: test mIoU} and the commands."""
    recipe, budget = SETS[row]
    output = f"{WORK}/ordering/{row}/{label}/seed{seed}"
    train = ["train", recipe, "--output", output, "--set", f"seed={seed}"]
    for override in [
        f'model.builder="{builder}"',
        f'model.kwargs.backbone_weights="{PRETRAINED}"',
        f'data.train="{folder}/train-*.tfrecord"',
        f'data.validation="{folder}/val-*.tfrecord"',
        *budget,
        *overrides,
    ]:
        train += ["--set", override]
    seconds = run_cli(train, share_gpu)
    scores, commands = {}, [shlex.join(["keras-dense", *train])]
    if "crf" in evaluations and tune_crf:
        # DeepLab cross-validates the CRF's parameters; the validation slices stay unseen, so
        # they are tuned on the first training images (coarse grid).
        tune = ["tune-crf", "--model", f"{output}/best.keras", "--data"]
        tune += [f"{folder}/train-*.tfrecord", "--max-images", str(tune_crf), "--coarse-only"]
        run_cli(tune, share_gpu)
        commands.append(shlex.join(["keras-dense", *tune]))
    for name, extra in {"": [], **evaluations}.items():
        argv, _, value = evaluate(
            output, f"{folder}/val-*.tfrecord", name or "plain", extra, "mean_iou", share_gpu
        )
        scores[f"{label}_{name}" if name else label] = value
        commands.append(shlex.join(["keras-dense", *argv]))
    return {"scores": scores, "train_seconds": round(seconds, 1), "commands": commands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", choices=list(SETS), default="isbi")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    labels = [model[0] for model in MODELS]
    parser.add_argument("--models", nargs="+", choices=labels, default=labels)
    parser.add_argument("--jobs", type=int, default=1, help="(model, seed) runs at once")
    parser.add_argument("--reuse", action="store_true", help="keep existing shards and weights")
    parser.add_argument(
        "--tune-crf",
        type=int,
        default=0,
        metavar="N",
        help="tune the dense CRF on the first N training images before + CRF (default: off, "
        "DeepLab's VOC parameters)",
    )
    args = parser.parse_args()
    if args.tune_crf < 0:
        parser.error(f"--tune-crf {args.tune_crf}: expected a number of images >= 0")
    data = rows()[args.row]
    folder = data.folder(args.seeds[0])
    if not (args.reuse and (REPO / PRETRAINED).is_file()):
        run_cli(PRETRAINED_COMMAND)
    for argv in data.converts(folder, args.seeds[0]):
        if not (args.reuse and converted(argv)):
            run_cli(argv)
    work = [(seed, m) for seed in args.seeds for m in MODELS if m[0] in args.models]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [
            pool.submit(
                train_and_score, args.row, *model, seed, folder, args.jobs > 1, args.tune_crf
            )
            for seed, model in work
        ]
        results = [future.result() for future in futures]
    per_seed, runs = {}, []
    for (seed, _), result in zip(work, results):
        runs.append({"seed": seed, **result})
        per_seed.setdefault(seed, {}).update(result["scores"])
    summary = {}
    for name in [n for n in ORDER if n in per_seed[args.seeds[0]]]:
        values = [per_seed[s][name] for s in args.seeds]
        numbers = [v for v in values if isinstance(v, (int, float))]
        summary[name] = {
            "per_seed": values,
            "mean": statistics.mean(numbers) if numbers else None,
            "half_range": (max(numbers) - min(numbers)) / 2 if numbers else None,
        }

    def ordered(scores: dict) -> bool | None:
        pairs = [("fcn32s", "fcn16s"), ("fcn16s", "fcn8s"), ("deeplab_v1", "deeplab_v1_crf")]
        present = [(a, b) for a, b in pairs if a in scores and b in scores]
        if not present:
            return None  # no pair of the order was run
        return all(
            isinstance(scores[a], (int, float))
            and isinstance(scores[b], (int, float))
            and scores[a] < scores[b]
            for a, b in present
        )

    report = {
        "benchmark": "fcn_ordering",
        "data": data.data,
        "recipe": SETS[args.row][0],
        "budget": SETS[args.row][1],
        "crf_tuned_on_training_images": args.tune_crf,
        "seeds": args.seeds,
        "concurrent_runs": min(max(1, args.jobs), len(work)),
        "summary": summary,
        "order_holds_for_means": ordered({k: v["mean"] for k, v in summary.items()}),
        "order_holds_per_seed": {s: ordered(per_seed[s]) for s in args.seeds},
        "runs": runs,
        "environment": environment(),
        "load_average": os.getloadavg(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    path = REPO / WORK / "ordering" / f"ordering_{args.row}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


if __name__ == "__main__":
    main()
