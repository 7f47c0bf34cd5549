"""Does the WSL shapes recipe reproduce on freshly generated data? README commands, N x M seeds.

For each data seed `(train seed, validation seed)` the README's commands make a fresh shapes
set (`keras-dense convert shapes --size 64`, `--train-images` training and `--val-images`
validation images, other generator seeds than the README's 0 / 1); for each initialisation seed
(`--set seed=S`: the weights and the input pipeline's shuffles and crops) the recipe
(`apps/wsl_shapes.toml` as shipped, plus any `--set`) is trained with `keras-dense train` and
scored with `keras-dense evaluate` on that set's validation images, plainly and with the
README's `--tta flip --scales 1.5` maps. The commands run in-process through
`keras_dense.cli.main`, exactly as typed in a shell.

Per run: the best and the last epoch's validation AUC (Keras' multi-label AUC while
training; best.keras is the best epoch's), the epoch of the best, whether the AUC still rose
over the last two epochs, and from `evaluate`'s metrics.json the mAP, the pointing game at 0
and 3 px (plain and with the maps' TTA) and the centre-point baseline. Prints JSON with every
run and, per number, the mean, the sample standard deviation, min and max over all runs, plus
the settings, seconds, versions, machine and load average.

    .venv/bin/python benchmarks/wsl_reproduction.py [--train-seeds 11,12] [--val-seeds 13,14] \
        [--init-seeds 0,1] [--train-images 800] [--val-images 100] \
        [--recipe apps/wsl_shapes.toml] [--set KEY=VALUE ...] [--keep DIR]
    .venv/bin/python benchmarks/wsl_reproduction.py --summarise A.json B.json  # merge runs

(`--summarise` merges the runs of earlier outputs, e.g. one process per data seed run side by
side, into one summary.)

Measured: see the README's WSL shapes section (the numbers and the machine are given there).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import environment  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SUMMARISED = (
    "best_val_auc",
    "last_val_auc",
    "map",
    "pointing_0px",
    "pointing_3px",
    "pointing_tta_0px",
    "pointing_tta_3px",
    "centre_baseline_3px",
    "train_seconds",
)


def keras_dense(*argv: str) -> None:
    """Runs one `keras-dense` command in-process; raises when it exits non-zero."""
    from keras_dense.cli import main

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        status = main(list(argv))
    if status:
        raise RuntimeError(f"keras-dense {' '.join(argv)} exited {status}: {quiet.getvalue()}")


def seeds(text: str) -> list[int]:
    """`"11,12"` -> `[11, 12]`."""
    return [int(part) for part in text.split(",") if part.strip()]


def auc_curve(run_dir: str) -> list[float]:
    """The validation AUC of every epoch, from the run's metrics.csv."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [float(row["val_auc"]) for row in csv.DictReader(f)]


def evaluate(model: str, data: str, output: str, *tta: str) -> dict:
    """`keras-dense evaluate` (the README's command); its metrics.json."""
    keras_dense("evaluate", "--model", model, "--data", data, "--output", output, *tta)
    with open(os.path.join(output, "metrics.json")) as f:
        return json.load(f)


def one_run(recipe: str, train: str, val: str, init_seed: int, sets: list[str], out: str) -> dict:
    """Trains and evaluates the recipe once on one data set with one initialisation seed."""
    overrides = [f'data.train="{train}"', f'data.validation="{val}"', f"seed={init_seed}"]
    began = time.monotonic()
    keras_dense(
        "train", recipe, "--output", out, *[a for s in [*overrides, *sets] for a in ("--set", s)]
    )
    seconds = time.monotonic() - began
    curve = auc_curve(out)
    model = os.path.join(out, "best.keras")
    plain = evaluate(model, val, os.path.join(out, "eval_plain"))
    tta = evaluate(model, val, os.path.join(out, "eval_tta"), "--tta", "flip", "--scales", "1.5")
    return {
        "init_seed": init_seed,
        "val_auc_by_epoch": curve,
        "best_val_auc": max(curve),
        "best_epoch": curve.index(max(curve)) + 1,
        "last_val_auc": curve[-1],
        "still_climbing": len(curve) > 2 and curve[-1] > curve[-2] > curve[-3],
        "map": plain["map"],
        "pointing_0px": plain["pointing_0px"]["accuracy"],
        "pointing_3px": plain["pointing"]["accuracy"],
        "pointing_tta_0px": tta["pointing_0px"]["accuracy"],
        "pointing_tta_3px": tta["pointing"]["accuracy"],
        "centre_baseline_3px": plain["centre_baseline"]["accuracy"],
        "train_seconds": seconds,
    }


def summary(runs: list[dict]) -> dict:
    """Mean, sample standard deviation, min and max of each summarised number over the runs."""
    out = {}
    for key in SUMMARISED:
        values = [float(r[key]) for r in runs]
        out[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    out["runs_still_climbing"] = sum(bool(r["still_climbing"]) for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seeds", default="11,12", help="generator seeds of training sets")
    parser.add_argument("--val-seeds", default="13,14", help="their validation sets' seeds")
    parser.add_argument("--init-seeds", default="0,1", help="recipe seeds (initialisation)")
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--recipe", default=os.path.join(REPO, "apps", "wsl_shapes.toml"))
    parser.add_argument(
        "--set", action="append", default=[], dest="sets", help="recipe override KEY=VALUE"
    )
    parser.add_argument("--keep", default=None, help="keep the shards and runs in this folder")
    parser.add_argument(
        "--summarise", nargs="+", default=None, help="merge the runs of earlier outputs (JSON)"
    )
    args = parser.parse_args()
    if args.summarise:
        parts = []
        for path in args.summarise:
            with open(path) as f:
                parts.append(json.load(f))
        runs = [run for part in parts for run in part["runs"]]
        merged = {"benchmark": "wsl_reproduction", "summary": summary(runs), "runs": runs}
        kept = ("settings", "seconds", "load_average")
        merged["parts"] = [{key: part[key] for key in kept} for part in parts]
        merged["environment"] = parts[0]["environment"]
        print(json.dumps(merged, indent=2))
        return
    train_seeds, val_seeds, init_seeds = (
        seeds(args.train_seeds),
        seeds(args.val_seeds),
        seeds(args.init_seeds),
    )
    if len(train_seeds) != len(val_seeds) or not train_seeds or not init_seeds:
        raise SystemExit("--train-seeds and --val-seeds: expected as many seeds, at least one")
    start = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        os.makedirs(tmp, exist_ok=True)
        for train_seed, val_seed in zip(train_seeds, val_seeds):
            train, val = f"{tmp}/train{train_seed}", f"{tmp}/val{val_seed}"
            for prefix, count, seed in (
                (train, args.train_images, train_seed),
                (val, args.val_images, val_seed),
            ):
                keras_dense(
                    "convert", "shapes", "--num-images", str(count), "--size", "64",
                    "--seed", str(seed), "--output", prefix,
                )  # fmt: skip
            for init_seed in init_seeds:
                out = f"{tmp}/run_d{train_seed}_i{init_seed}"
                row = one_run(
                    args.recipe,
                    f"{train}-*.tfrecord",
                    f"{val}-*.tfrecord",
                    init_seed,
                    args.sets,
                    out,
                )
                row.update(train_seed=train_seed, val_seed=val_seed)
                runs.append(row)
                print(json.dumps(row), file=sys.stderr)
    report = {"benchmark": "wsl_reproduction", "summary": summary(runs), "runs": runs}
    report.update(settings=vars(args), seconds=time.monotonic() - start)
    report.update(load_average=os.getloadavg(), environment=environment())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
