"""The README's results table, measured: each recipe converted, trained and evaluated here.

Every row runs the exact `keras-dense` commands it reports (in fresh processes, from the
repository root), on the shared data sets (`$KERAS_DENSE_DATA` or `../shared/datasets`) and on
the synthetic shapes, with the CPU budget given by `--set` overrides of the recipe, then
evaluates the best model plain, with the dense CRF and with test-time augmentation. It prints
one JSON and, with `--write-readme`, replaces the block between the `results` markers in
README.md (atomically). Not part of `make test`: a full run takes tens of minutes on 2 cores.

    .venv/bin/python benchmarks/results.py [--rows shapes isbi pets bccd] [--write-readme]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
WORK = "runs/results"
DATA = "tfrecords/results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def shared() -> str:
    """The shared data sets folder, relative to the repository root where possible."""
    path = os.environ.get("KERAS_DENSE_DATA") or str(REPO.parent / "shared" / "datasets")
    return os.path.relpath(path, REPO)


@dataclasses.dataclass
class Row:
    """One recipe x data set: how to make its shards, train it, and score it."""

    name: str
    recipe: str
    data: str
    converts: list[list[str]]
    overrides: list[str]
    evaluate: str
    evaluations: dict[str, list[str]]
    metric: str
    paper: str


def rows() -> dict[str, Row]:
    """The table's rows (commands as run from the repository root)."""
    s = shared()
    isbi, pets, bccd = f"{s}/isbi2012_membrane", f"{s}/oxford_pets_sample", f"{s}/bccd"
    tta = ["--tta", "flip", "--scales", "0.75,1,1.25"]
    return {
        "shapes": Row(
            "shapes",
            "apps/shapes_demo.toml",
            "synthetic shapes, 1000 train / 100 val, 64 px",
            [
                [
                    "convert",
                    "shapes",
                    "--num-images",
                    "1000",
                    "--size",
                    "64",
                    "--seed",
                    "0",
                    "--output",
                    f"{DATA}/shapes/train",
                ],
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
                    f"{DATA}/shapes/val",
                ],
            ],
            [
                f'data.train="{DATA}/shapes/train-*.tfrecord"',
                f'data.validation="{DATA}/shapes/val-*.tfrecord"',
            ],
            f"{DATA}/shapes/val-*.tfrecord",
            {"plain": [], "crf": ["--crf"], "tta": tta},
            "mean_iou",
            "— (synthetic)",
        ),
        "isbi": Row(
            "isbi",
            "apps/unet_isbi.toml",
            "ISBI 2012 membranes, 25 train / 5 val slices, 512 px",
            [
                [
                    "convert",
                    "pairs",
                    "--images",
                    f"{isbi}/train/image",
                    "--masks",
                    f"{isbi}/train/label",
                    "--classes",
                    "cell,membrane",
                    "--remap",
                    "255:1",
                    "--split-file",
                    "apps/splits/isbi2012_train.txt",
                    "--output",
                    f"{DATA}/isbi2012/train",
                ],
                [
                    "convert",
                    "pairs",
                    "--images",
                    f"{isbi}/train/image",
                    "--masks",
                    f"{isbi}/train/label",
                    "--classes",
                    "cell,membrane",
                    "--remap",
                    "255:1",
                    "--split-file",
                    "apps/splits/isbi2012_val.txt",
                    "--output",
                    f"{DATA}/isbi2012/val",
                ],
            ],
            [
                f'data.train="{DATA}/isbi2012/train-*.tfrecord"',
                f'data.validation="{DATA}/isbi2012/val-*.tfrecord"',
                "model.kwargs.filters=16",
                "training.epochs=4",
                "training.steps_per_epoch=50",
            ],
            f"{DATA}/isbi2012/val-*.tfrecord",
            {"plain": [], "tta": ["--tta", "flip"]},
            "mean_iou",
            "warping error 0.000353 on the ISBI test set (paper scale; not an IoU)",
        ),
        "pets": Row(
            "pets",
            "apps/deeplab_pets.toml",
            "Oxford-IIIT Pet sample, 300 trainval / 298 test photos",
            [
                [
                    "convert",
                    "pairs",
                    "--images",
                    f"{pets}/images",
                    "--masks",
                    f"{pets}/annotations/trimaps",
                    "--classes",
                    "background,pet",
                    "--remap",
                    "2:0",
                    "3:255",
                    "--split-file",
                    f"{pets}/annotations/trainval.txt",
                    "--output",
                    f"{DATA}/pets/trainval",
                ],
                [
                    "convert",
                    "pairs",
                    "--images",
                    f"{pets}/images",
                    "--masks",
                    f"{pets}/annotations/trimaps",
                    "--classes",
                    "background,pet",
                    "--remap",
                    "2:0",
                    "3:255",
                    "--split-file",
                    f"{pets}/annotations/test.txt",
                    "--output",
                    f"{DATA}/pets/test",
                ],
            ],
            [
                f'data.train="{DATA}/pets/trainval-*.tfrecord"',
                f'data.validation="{DATA}/pets/test-*.tfrecord"',
                'model.kwargs.backbone_weights="none"',
                "data.crop_size=160",
                "training.batch_size=4",
                "training.epochs=3",
                "training.steps_per_epoch=60",
            ],
            f"{DATA}/pets/test-*.tfrecord",
            {"plain": [], "crf": ["--crf"], "tta": ["--tta", "flip"]},
            "mean_iou",
            "— (no published figure for this sample; ImageNet weights would help most)",
        ),
        "bccd": Row(
            "bccd",
            "apps/fast_rcnn_bccd.toml",
            "BCCD blood cells, VOC layout, train / val splits",
            [
                [
                    "convert",
                    "voc",
                    "--root",
                    bccd,
                    "--task",
                    "detection",
                    "--split",
                    "train",
                    "--classes",
                    "RBC,WBC,Platelets",
                    "--proposals",
                    "selective_search",
                    "--on-error",
                    "skip",
                    "--output",
                    f"{DATA}/bccd/train",
                ],
                [
                    "convert",
                    "voc",
                    "--root",
                    bccd,
                    "--task",
                    "detection",
                    "--split",
                    "val",
                    "--classes",
                    "RBC,WBC,Platelets",
                    "--proposals",
                    "selective_search",
                    "--on-error",
                    "skip",
                    "--output",
                    f"{DATA}/bccd/val",
                ],
            ],
            [
                f'data.train="{DATA}/bccd/train-*.tfrecord"',
                f'data.validation="{DATA}/bccd/val-*.tfrecord"',
                'model.kwargs.backbone_weights="none"',
                "training.steps=150",
                "data.min_size=240",
                "data.max_size=400",
            ],
            f"{DATA}/bccd/val-*.tfrecord",
            {"plain": []},
            "map",
            "— (Fast R-CNN VGG16 on VOC07: 66.9 mAP, paper scale)",
        ),
    }


def run_cli(args: list[str]) -> float:
    """Runs `keras-dense ARGS` in a fresh process from the repository root; returns seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dense.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"keras-dense {shlex.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.monotonic() - start


def run_row(row: Row) -> dict:
    """Converts, trains and evaluates one row; returns its commands, times and metrics."""
    commands, seconds = [], {}
    start = time.monotonic()
    for argv in row.converts:
        run_cli(argv)
        commands.append(shlex.join(["keras-dense", *argv]))
    seconds["convert"] = time.monotonic() - start
    output = f"{WORK}/{row.name}"
    train = ["train", row.recipe, "--output", output]
    for override in row.overrides:
        train += ["--set", override]
    seconds["train"] = run_cli(train)
    commands.append(shlex.join(["keras-dense", *train]))
    metrics = {}
    for label, extra in row.evaluations.items():
        argv = [
            "evaluate",
            "--model",
            f"{output}/best.keras",
            "--data",
            row.evaluate,
            "--output",
            f"{output}/eval_{label}",
            *extra,
        ]
        try:
            seconds[f"evaluate_{label}"] = run_cli(argv)
        except RuntimeError as err:
            metrics[label] = {"error": str(err).splitlines()[-1]}
            continue
        report = json.loads((REPO / output / f"eval_{label}" / "metrics.json").read_text())
        metrics[label] = report[row.metric]
        commands.append(shlex.join(["keras-dense", *argv]))
    return {
        "data": row.data,
        "recipe": row.recipe,
        "metric": row.metric,
        "metrics": metrics,
        "paper": row.paper,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "commands": commands,
    }


def table(results: dict, machine: str) -> str:
    """The Markdown block for the README."""
    lines = [
        START,
        f"Measured by `benchmarks/results.py` on {machine}, from scratch (no ImageNet weights, "
        "no network), with the CPU budget the `--set` overrides give; paper figures are at "
        "paper scale (ImageNet weights, GPU, full schedules) and are not comparable.",
        "",
        "| recipe | data | metric | plain | + CRF | + TTA | CPU budget (wall) | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(value):
        if value is None:
            return "—"
        if isinstance(value, dict):
            return "failed"
        return f"{value:.3f}"

    for name in [n for n in rows() if n in results]:
        result = results[name]
        if "error" in result:
            lines.append(f"| `{result['recipe']}` | {result['data']} | | failed | | | | |")
            continue
        m = result["metrics"]
        budget = " + ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
        lines.append(
            f"| `{result['recipe']}` | {result['data']} | {result['metric']} | "
            f"{cell(m.get('plain'))} | {cell(m.get('crf'))} | {cell(m.get('tta'))} | "
            f"{budget} | {result['paper']} |"
        )
    lines += ["", "<details><summary>Exact commands</summary>", ""]
    for name in [n for n in rows() if n in results]:
        result = results[name]
        lines += [f"{name}:", "", "```bash", *result.get("commands", []), "```", ""]
    lines += ["</details>", END]
    return "\n".join(lines)


def write_readme(block: str) -> None:
    """Replaces the results block of README.md (temporary file, then rename)."""
    readme = REPO / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    tmp = readme.with_name(f"README.md.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(rows()), choices=list(rows()))
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    # Rows measured earlier (in runs/results/results.json) stay in the table unless re-run.
    saved = REPO / WORK / "results.json"
    results = json.loads(saved.read_text())["results"] if saved.is_file() else {}
    for name in args.rows:
        try:
            results[name] = run_row(rows()[name])
        except RuntimeError as err:
            results[name] = {
                "recipe": rows()[name].recipe,
                "data": rows()[name].data,
                "error": str(err)[-2000:],
            }
    env = environment()
    machine = f"{env['cpu']}, {env['cpu_count']} cores, TF {env['tensorflow']}"
    report = {"results": results, "environment": env, "load_average": os.getloadavg()}
    text = json.dumps(report, indent=2)
    print(text)
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(f"results.json.tmp-{os.getpid()}")
    tmp.write_text(text + "\n")
    os.replace(tmp, saved)
    if args.write_readme:
        write_readme(table(results, machine))


if __name__ == "__main__":
    main()
