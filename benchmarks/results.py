"""The README's results table, measured: each row converted, trained and evaluated here.

Every row runs the exact `keras-dense` commands it reports (in fresh processes, from the
repository root), on the shared data sets (`$KERAS_DENSE_DATA` or `../shared/datasets`) and on
synthetic shapes, with the CPU budget its `--set` overrides give. A row has up to two variants
trained at the same budget (steps, batch, crop): "from scratch", and "pretrained trunk", whose
VGG16 convolutions come from `keras-dense pretrained hed-vgg16` (a real pretrained VGG16 that
ships in a Python package: no network). Each variant is trained with every seed of `--seeds`
(initialisation and data order; the synthetic row also draws a fresh data set per seed). The
table gives the mean over seeds and the half range (`± (max - min) / 2`); the + CRF and + TTA
columns evaluate the pretrained variant (the scratch one where a row has no other).

Every finished (row, variant, seed) run is saved at once as a record,
`benchmarks/results_runs/<row>/<variant>-seed<N>.json` (committed: metrics, times, commands,
machine, commit and the row's configuration fingerprint), and a row of the table is the mean
over all its current records. So seeds accumulate across sessions and machines: `--seeds 1
--variants pretrained` adds one run to a row measured before. A record whose configuration
(the recipe's values, the variant's overrides, the data description, the converter and
evaluation arguments, the metric) differs from the row's current one is stale: it is left out
of the table and listed in the JSON. A code change that alters results
is not seen by the fingerprint: delete the row's records then (or re-run every seed).

It prints one JSON and, with `--write-readme`, replaces the block between the `results`
markers in README.md (atomically). A README line keeps its place and commands until the
current configuration's records show at least what it shows (each filled variant column the
seeds its cell stands for, and the line's seed count in all): a row measured before records
existed, or at an earlier budget, is re-measured run by run across sessions. Meanwhile, where
the row has records of any configuration, its line is marked as an earlier configuration
being re-measured and what it still lacks is printed. A row whose records are all stale and
that has no README line is marked stale. `--missing` runs
only the (variant, seed) runs that have no current record, e.g. to finish a row after an
interruption; a run whose evaluation failed is not recorded. Records are checked before any
training; a broken one is named. Not part of `make test`: a full run takes hours on 2 cores.
The table names the machines of each row.

`--jobs N` trains and evaluates up to N (variant, seed) runs at a time, for a GPU machine: each
run is its own process, and they share the GPU (`TF_FORCE_GPU_ALLOW_GROWTH`). Their wall times
then include the contention, and the table says how many ran at once. `--reuse` keeps shards
whose manifest already exists and a weight file already written (made elsewhere with the same
commands, e.g. where opencv-contrib or the `pretrained` extra is missing); the commands are
listed all the same.

    .venv/bin/python benchmarks/results.py [--rows shapes isbi pets ...] [--seeds 0 1]
        [--variants scratch pretrained] [--missing] [--jobs N] [--reuse] [--write-readme]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import downscaled_pairs, environment  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
WORK = "runs/results"
# One committed JSON per finished run: <row>/<variant>-seed<N>.json.
RECORDS = REPO / "benchmarks" / "results_runs"
DATA = "tfrecords/results"
PRETRAINED = f"{WORK}/vgg16_hed_notop.weights.h5"
PRETRAINED_COMMAND = ["pretrained", "hed-vgg16", "--output", PRETRAINED]
WEIGHTS = f'model.kwargs.backbone_weights="{PRETRAINED}"'
SCRATCH = 'model.kwargs.backbone_weights="none"'
START, END = "<!-- results:start -->", "<!-- results:end -->"
# Hand-written text after this marker inside the block survives `--write-readme`.
NOTES = "<!-- results:notes -->"
# The Pets photos are scored at this longer side (about half their size): each evaluation pass
# over 298 full-size photos costs about 15 minutes on 2 cores, several per run.
PETS_SIDE = 256
VARIANTS = {"scratch": "from scratch", "pretrained": "pretrained trunk"}


def shared() -> str:
    """The shared data sets folder, relative to the repository root where possible."""
    path = os.environ.get("KERAS_DENSE_DATA") or str(REPO.parent / "shared" / "datasets")
    return os.path.relpath(path, REPO)


@dataclasses.dataclass
class Variant:
    """One way of training a row: a recipe and its `--set` overrides (data paths excluded)."""

    recipe: str
    overrides: list[str]


@dataclasses.dataclass
class Row:
    """One data set: how to make its shards, the variants to train, and how to score them.

    `converts(folder, seed)` gives the converter argument lists writing `folder/train` and
    `folder/val` (no side effects: `prepare` makes what they read, e.g. downscaled photos);
    `fresh_data` rows draw a data set per seed (synthetic ones), the others convert once.
    """

    name: str
    data: str
    converts: Callable[[str, int], list[list[str]]]
    variants: dict[str, Variant]
    evaluations: dict[str, list[str]]
    metric: str
    paper: str
    fresh_data: bool = False
    prepare: Callable[[], None] | None = None

    def folder(self, seed: int) -> str:
        """The shards' folder for `seed`."""
        return f"{DATA}/{self.name}/seed{seed}" if self.fresh_data else f"{DATA}/{self.name}"


def pairs(images: str, masks: str, classes: str, remap: list[str], split: str, out: str):
    """`keras-dense convert pairs` arguments."""
    return shlex.split(
        f"convert pairs --images {images} --masks {masks} --classes {classes} --remap "
        f"{' '.join(remap)} --split-file {split} --output {out}"
    )


def voc(root: str, split: str, out: str, proposals: bool) -> list[str]:
    """`keras-dense convert voc` arguments for BCCD detection shards."""
    extra = " --proposals selective_search" if proposals else ""
    return shlex.split(
        f"convert voc --root {root} --task detection --split {split} --classes "
        f"RBC,WBC,Platelets{extra} --on-error skip --output {out}"
    )


def bccd_row(name: str, recipe: str, proposals: bool, paper: str) -> Row:
    """A BCCD detection row: scratch and pretrained variants of `recipe` at one budget."""
    bccd = f"{shared()}/bccd"
    budget = ["training.steps=300", "data.min_size=320", "data.max_size=480"]
    detail = ", selective-search proposals" if proposals else ""
    return Row(
        name,
        f"BCCD blood cells, train / val splits{detail}",
        lambda folder, seed: [
            voc(bccd, split, f"{folder}/{split}", proposals) for split in ("train", "val")
        ],
        {
            "scratch": Variant(recipe, [SCRATCH, *budget]),
            "pretrained": Variant(recipe, [WEIGHTS, *budget]),
        },
        {},
        "map",
        paper,
    )


def rows() -> dict[str, Row]:
    """The table's rows (commands as run from the repository root)."""
    s = shared()
    isbi, pets = f"{s}/isbi2012_membrane", f"{s}/oxford_pets_sample"
    # 300 steps in one epoch: one validation pass over the 298 test photos (minutes on 2 cores)
    # instead of one per 50 steps, and best.keras is the last weights, not the epoch that
    # scored best on the very photos the table reports.
    pets_budget = shlex.split(
        "data.crop_size=160 training.batch_size=4 training.epochs=1 training.steps_per_epoch=300"
    )

    # The decoder's BatchNorm statistics are re-estimated before each validation (precise BN):
    # 200 steps at momentum 0.99 leave them far behind the weights.
    isbi_budget = shlex.split(
        "training.epochs=4 training.steps_per_epoch=50 training.precise_bn_steps=20"
    )

    isbi_data = "ISBI 2012 membranes, 25 train / 5 val slices, 512 px"
    isbi_paper = "warping error 0.000353 on the ISBI test set (paper scale; not an IoU)"

    def isbi_pairs(folder: str, seed: int) -> list[list[str]]:
        return [
            pairs(
                f"{isbi}/train/image",
                f"{isbi}/train/label",
                "membrane,cell",
                ["255:1"],
                f"apps/splits/isbi2012_{split}.txt",
                f"{folder}/{split}",
            )
            for split in ("train", "val")
        ]

    pets_splits = (("trainval", "train"), ("test", "val"))

    def pets_photos(split: str) -> str:
        return f"{DATA}/pets_photos_{PETS_SIDE}/{split}"

    def downscale_pets() -> None:
        for split, _ in pets_splits:
            listing = REPO / f"{pets}/annotations/{split}.txt"
            trimaps = f"{pets}/annotations/trimaps"
            downscaled_pairs(
                REPO / f"{pets}/images",
                REPO / trimaps,
                listing,
                PETS_SIDE,
                REPO / pets_photos(split),
            )

    def pets_pairs(folder: str, seed: int) -> list[list[str]]:
        converts = []
        for split, name in pets_splits:
            listing = f"{pets}/annotations/{split}.txt"
            images, masks = f"{pets_photos(split)}/images", f"{pets_photos(split)}/masks"
            output, remap = f"{folder}/{name}", ["2:0", "3:255"]
            converts.append(pairs(images, masks, "background,pet", remap, listing, output))
        return converts

    def shapes(folder: str, seed: int) -> list[list[str]]:
        return [
            shlex.split(
                f"convert shapes --num-images {n} --size 64 --seed {2 * seed + i} "
                f"--output {folder}/{split}"
            )
            for i, (n, split) in enumerate((("1000", "train"), ("100", "val")))
        ]

    return {
        "shapes": Row(
            "shapes",
            "synthetic shapes, 1000 train / 100 val, 64 px, a fresh set per seed",
            shapes,
            {"scratch": Variant("apps/shapes_demo.toml", [])},
            {"crf": ["--crf"], "tta": ["--tta", "flip", "--scales", "0.75,1,1.25"]},
            "mean_iou",
            "— (synthetic)",
            fresh_data=True,
        ),
        "isbi": Row(
            "isbi",
            isbi_data,
            isbi_pairs,
            {
                "scratch": Variant(
                    "apps/unet_vgg16_isbi.toml",
                    [SCRATCH, *isbi_budget],
                ),
                "pretrained": Variant(
                    "apps/unet_vgg16_isbi.toml",
                    [WEIGHTS, *isbi_budget],
                ),
            },
            {"tta": ["--tta", "flip"]},
            "mean_iou",
            isbi_paper,
        ),
        # The paper's U-Net (valid padding, greyscale, SGD at momentum 0.99) at a quarter of
        # its width: from scratch only, it has no pretrained encoder.
        "isbi_unet": Row(
            "isbi_unet",
            isbi_data,
            isbi_pairs,
            {
                "scratch": Variant(
                    "apps/unet_isbi.toml",
                    shlex.split(
                        "model.kwargs.filters=16 training.epochs=4 training.steps_per_epoch=50"
                    ),
                ),
            },
            {"tta": ["--tta", "flip"]},
            "mean_iou",
            isbi_paper,
        ),
        "pets": Row(
            "pets",
            f"Oxford-IIIT Pet sample, 300 trainval / 298 test photos at {PETS_SIDE} px",
            pets_pairs,
            {
                "scratch": Variant("apps/deeplab_v1_pets.toml", [SCRATCH, *pets_budget]),
                "pretrained": Variant("apps/deeplab_v1_pets.toml", [WEIGHTS, *pets_budget]),
            },
            {"crf": ["--crf"], "tta": ["--tta", "flip"]},
            "mean_iou",
            "— (no published figure for this sample)",
            prepare=downscale_pets,
        ),
        "bccd_fast": bccd_row(
            "bccd_fast",
            "apps/fast_rcnn_bccd.toml",
            True,
            "— (Fast R-CNN VGG16 on VOC07: 66.9 mAP, paper scale)",
        ),
        "bccd_fpn": bccd_row(
            "bccd_fpn",
            "apps/faster_rcnn_fpn_bccd.toml",
            False,
            "— (Faster R-CNN FPN ResNet-50 on COCO: 33.9 AP, paper scale)",
        ),
    }


def run_cli(args: list[str], share_gpu: bool = False) -> float:
    """Runs `keras-dense ARGS` in a fresh process from the repository root; returns seconds.

    `share_gpu` lets the process allocate GPU memory as it needs it, so that several share one.
    """
    start = time.monotonic()
    env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true"} if share_gpu else None
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dense.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"keras-dense {shlex.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.monotonic() - start


def evaluate(
    output: str, data: str, label: str, extra: list[str], metric: str, share_gpu: bool = False
):
    """Evaluates `output/best.keras`; returns (argv, seconds, metric value or error dict)."""
    argv = ["evaluate", "--model", f"{output}/best.keras", "--data", data]
    argv += ["--output", f"{output}/eval_{label}", *extra]
    try:
        seconds = run_cli(argv, share_gpu)
    except RuntimeError as err:
        return argv, None, {"error": str(err).splitlines()[-1]}
    report = json.loads((REPO / output / f"eval_{label}" / "metrics.json").read_text())
    return argv, seconds, report[metric]


def run_variant(
    row: Row, key: str, seed: int, extra_evaluations: bool, share_gpu: bool = False
) -> dict:
    """Trains one variant with one seed and evaluates it; returns commands, times, metrics.

    The result's `started` holds the configuration fingerprint and commit as they were when
    training started (see `save_record`).
    """
    started = {"configuration": configuration(row, key), "commit": commit()}
    folder, variant = row.folder(seed), row.variants[key]
    output = f"{WORK}/{row.name}/{key}/seed{seed}"
    train = ["train", variant.recipe, "--output", output, "--set", f"seed={seed}"]
    train += ["--set", f'data.train="{folder}/train-*.tfrecord"']
    train += ["--set", f'data.validation="{folder}/val-*.tfrecord"']
    for override in variant.overrides:
        train += ["--set", override]
    seconds = {"train": run_cli(train, share_gpu)}
    commands, metrics = [shlex.join(["keras-dense", *train])], {}
    evaluations = {"plain": [], **(row.evaluations if extra_evaluations else {})}
    for label, extra in evaluations.items():
        argv, took, value = evaluate(
            output, f"{folder}/val-*.tfrecord", label, extra, row.metric, share_gpu
        )
        metrics[label] = value
        if took is not None:
            seconds[f"evaluate_{label}"] = took
            commands.append(shlex.join(["keras-dense", *argv]))
    return {"metrics": metrics, "seconds": seconds, "commands": commands, "started": started}


def converted(argv: list[str]) -> bool:
    """Whether the shards a `convert` command writes are there (their manifest exists)."""
    return (REPO / f"{argv[argv.index('--output') + 1]}.json").is_file()


def configuration(row: Row, key: str) -> str:
    """The fingerprint of one variant's runs: recipe values, overrides, data and evaluations.

    Comments and layout of the recipe file do not count; a changed value, budget, converter
    argument (seed 0's, the data sets' root left out) or evaluation option does, so that
    records of another configuration are never averaged with this one.
    """
    variant = row.variants[key]
    recipe = tomllib.loads((REPO / variant.recipe).read_text())
    converts = json.dumps(row.converts(row.folder(0), 0)).replace(f"{shared()}/", "<datasets>/")
    facts = {
        "recipe": recipe,
        "overrides": variant.overrides,
        "data": row.data,
        "converts": converts,
        "evaluations": row.evaluations,
        "metric": row.metric,
    }
    blob = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_path(row: str, key: str, seed: int) -> pathlib.Path:
    """Where the record of one run lives."""
    return RECORDS / row / f"{key}-seed{seed}.json"


def commit() -> str:
    """The checkout's commit, `+dirty` when tracked files differ from it ("" without git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            # The records and README that results.py writes itself do not count.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
            + [":!benchmarks/results_runs", ":!README.md"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return f"{head}+dirty" if head and dirty else head


def save_record(
    row: Row,
    key: str,
    seed: int,
    run: dict,
    concurrent_runs: int = 1,
    started: dict | None = None,
) -> dict:
    """Writes one finished run's record (temporary file, then rename); returns it.

    Args:
        row: The row.
        key: The variant key.
        seed: The seed.
        run: `run_variant`'s result, with its `setup_commands`.
        concurrent_runs: How many runs went at once.
        started: `configuration` and `commit` as they were when the run started (a recipe
            edited or a commit made during a run of hours must not relabel it); None: now.
    """
    env = environment()
    started = started or {"configuration": configuration(row, key), "commit": commit()}
    record = {
        "row": row.name,
        "variant": key,
        "seed": seed,
        "configuration": started["configuration"],
        **run,
        "machine": describe_machine(env),
        "environment": env,
        "concurrent_runs": concurrent_runs,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": started["commit"],
    }
    path = record_path(row.name, key, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return record


RECORD_FIELDS = ("seed", "configuration", "metrics", "seconds", "commands", "setup_commands")


def read_record(path: pathlib.Path) -> dict:
    """One run record, its fields checked.

    Raises:
        ValueError: The file is not JSON or lacks a field of `RECORD_FIELDS` (both named).
    """
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    lacking = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
    if lacking or not isinstance(record["seed"], int) or "train" not in record["seconds"]:
        raise ValueError(
            f"{path}: not a run record: expected the fields {', '.join(RECORD_FIELDS)} "
            f"(an integer seed, seconds.train); lacking {lacking or 'seconds.train'}"
        )
    return record


def load_records(row: Row) -> tuple[dict[tuple[int, str], dict], list[str]]:
    """A row's records: the current ones by (seed, variant key), and the stale files.

    Raises:
        ValueError: A record that is not valid JSON or lacks the fields of a run (the file
            is named).
    """
    current, stale = {}, []
    for key in row.variants:
        fingerprint = configuration(row, key)
        for path in sorted((RECORDS / row.name).glob(f"{key}-seed*.json")):
            record = read_record(path)
            if path.name != f"{key}-seed{record['seed']}.json":
                raise ValueError(f"{path}: holds seed {record['seed']}, not its name's")
            if record["configuration"] == fingerprint:
                current[record["seed"], key] = record
            else:
                stale.append(os.path.relpath(path, REPO))
    return current, stale


def run_row(
    row: Row,
    seeds: list[int],
    jobs: int = 1,
    reuse: bool = False,
    variants: list[str] | None = None,
    missing: bool = False,
) -> dict:
    """Converts, trains and evaluates variants of one row with seeds; records each run.

    Args:
        row: The row.
        seeds: Initialisation and data-order seeds (and data seeds for `fresh_data` rows).
        jobs: How many (variant, seed) runs go at once; above 1 they share the GPU.
        reuse: Keep existing shards and weight file instead of writing them again.
        variants: The variant keys to run (None: all of the row's).
        missing: Run only the (variant, seed) runs without a current record.

    Returns:
        The row's entry of results.json, from all its current records (earlier ones too).
    """
    keys = [k for k in row.variants if variants is None or k in variants]
    main_variant = "pretrained" if "pretrained" in row.variants else "scratch"
    recorded = load_records(row)[0] if missing else {}
    work = [(seed, key) for seed in seeds for key in keys if (seed, key) not in recorded]
    setup, convert_seconds = {}, 0.0
    first_seeds = sorted({seed for seed, _ in work})
    needed = [
        argv
        for seed in (first_seeds if row.fresh_data else first_seeds[:1])
        for argv in row.converts(row.folder(seed), seed)
    ]
    if row.prepare is not None and not (reuse and all(converted(a) for a in needed)):
        row.prepare()
    if any(key == "pretrained" for _, key in work) and not (
        reuse and (REPO / PRETRAINED).is_file()
    ):
        run_cli(PRETRAINED_COMMAND)
    for seed in sorted({seed for seed, _ in work}):
        converts = row.converts(row.folder(seed), seed)
        if row.fresh_data or not setup:  # the others share the first seed's shards
            start = time.monotonic()
            for argv in converts:
                if not (reuse and converted(argv)):
                    run_cli(argv)
            convert_seconds += time.monotonic() - start
        setup[seed] = [shlex.join(["keras-dense", *argv]) for argv in converts]
    failures = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {
            pool.submit(run_variant, row, key, seed, key == main_variant, jobs > 1): (seed, key)
            for seed, key in work
        }
        for future in concurrent.futures.as_completed(futures):
            seed, key = futures[future]
            try:
                run = {**future.result(), "setup_commands": setup_commands(key, setup[seed])}
            except RuntimeError as err:  # one failed run: keep the others
                failures[seed, key] = str(err)[-2000:]
                continue
            unscored = {k: v for k, v in run["metrics"].items() if not isinstance(v, (int, float))}
            if unscored:  # trained, but an evaluation failed: no record, `--missing` retries
                failures[seed, key] = f"evaluation failed: {unscored}"
                continue
            started = run.pop("started", None)
            save_record(row, key, seed, run, min(max(1, jobs), len(work)), started)
    result = row_from_records(row)
    if result is None or "runs" not in result:
        raise RuntimeError("; ".join(failures.values()) or f"{row.name}: no run recorded")
    result["convert_seconds"] = round(convert_seconds, 1)
    if failures:
        result["failed_runs"] = {f"{key}/seed{seed}": e for (seed, key), e in failures.items()}
    return result


def setup_commands(key: str, converts: list[str]) -> list[str]:
    """A run's set-up commands: the pretrained weight file (that variant only), the shards."""
    pretrained = [shlex.join(["keras-dense", *PRETRAINED_COMMAND])] if key == "pretrained" else []
    return pretrained + converts


def row_from_records(row: Row) -> dict | None:
    """A row's entry of results.json from its current records (None: it has no records).

    A row whose records are all stale gives `{"data", "recipes", "stale_records"}` only: the
    table marks it stale rather than showing a configuration that is no longer the recipe's.
    """
    done, stale = load_records(row)
    if not done:
        if stale:
            recipes = {key: variant.recipe for key, variant in row.variants.items()}
            return {"data": row.data, "recipes": recipes, "stale_records": stale}
        return None
    result = row_result(row, done)
    if stale:
        result["stale_records"] = stale
    return result


def row_result(row: Row, done: dict[tuple[int, str], dict]) -> dict:
    """One row's entry of results.json from its runs' records.

    Args:
        row: The row.
        done: The record of each (seed, variant key) run; a variant keeps the seeds it has.
            The commands shown are each variant's lowest seed's: set-up commands (each once,
            the weight file first), then training and evaluation.
    """
    seeds = sorted({seed for seed, _ in done})
    runs = {key: [done[s, key] for s in seeds if (s, key) in done] for key in row.variants}
    runs = {key: value for key, value in runs.items() if value}
    first = [value[0] for value in runs.values()]
    setup = sorted(
        dict.fromkeys(c for record in first for c in record["setup_commands"]),
        key=lambda c: " pretrained " not in c,  # stable: the shards keep their order
    )
    machines = [r.get("machine", "") for v in runs.values() for r in v]
    return {
        "data": row.data,
        "recipes": {key: variant.recipe for key, variant in row.variants.items()},
        "metric": row.metric,
        "seeds": seeds,
        "main_variant": "pretrained" if "pretrained" in row.variants else "scratch",
        "runs": runs,
        "paper": row.paper,
        "commands": setup + [c for r in first for c in r["commands"]],
        "machine": "; ".join(m for m in dict.fromkeys(machines) if m),
        "concurrent_runs": max(
            (r.get("concurrent_runs", 1) for v in runs.values() for r in v), default=1
        ),
    }


def spread(values: list) -> str:
    """`mean ± half range` of the numbers among `values` ("failed" when none is a number)."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    if not numbers:
        return "failed" if values else "—"
    failed = len(values) - len(numbers)
    note = f" ({failed} failed)" if failed else ""
    if len(numbers) == 1:
        return f"{numbers[0]:.3f} (1 seed){note}"
    half = (max(numbers) - min(numbers)) / 2
    return f"{statistics.mean(numbers):.3f} ± {half:.3f}{note}"


def row_cells(result: dict, default_machine: str) -> list[str]:
    """The table cells of one measured row."""
    runs, main = result["runs"], result["main_variant"]
    columns = [
        spread([r["metrics"].get("plain") for r in runs[k]]) if k in runs else "—" for k in VARIANTS
    ]
    for label in ("crf", "tta"):
        values = [r["metrics"][label] for r in runs.get(main, []) if label in r["metrics"]]
        columns.append(spread(values) if values else "—")
    train = {k: statistics.median(r["seconds"]["train"] for r in v) for k, v in runs.items()}
    budget = ", ".join(f"{VARIANTS[k]} {v:.0f} s" for k, v in train.items())
    where = result.get("machine") or default_machine
    if result.get("concurrent_runs", 1) > 1:
        where += f", {result['concurrent_runs']} runs at once"
    recipes = recipes_cell(result["recipes"].values())
    seeds = len(result["seeds"])
    cells = [recipes, result["data"], result["metric"], str(seeds), *columns]
    return [*cells, f"train {budget} ({where})", result["paper"]]


def describe_machine(env: dict) -> str:
    """`CPU[ (family/model, widest vector extension)], N cores[, GPU], TF x` from `environment()`.

    The family/model and vector extension tell apart machines whose model name is masked.
    """
    widest = (env.get("cpu_vector_extensions") or [""])[0].upper()
    details = ", ".join(d for d in (env.get("cpu_family_model", ""), widest) if d)
    cpu = f"{env['cpu']} ({details})" if details else env["cpu"]
    gpu = f", {env['gpu_name']}" if env.get("gpu_name") else ""
    return f"{cpu}, {env['cpu_count']} cores{gpu}, TF {env['tensorflow']}"


def recipes_cell(recipes) -> str:
    """A row's first table cell: its recipes, each once, in backticks."""
    return " / ".join(f"`{r}`" for r in dict.fromkeys(recipes))


def earlier_rows(block: str) -> dict[str, tuple[str, list[str]]]:
    """The rows of an earlier README block, by row name: (table line, exact commands).

    A row is found by its recipes cell (a failed one by its name), its commands by the `name:`
    heading of the details; the hand-written notes after `NOTES` are not read, and rows of
    `rows()` that the table lacks are left out.
    """
    if NOTES in block:  # the hand-written notes may hold tables of their own
        block = block[: block.index(NOTES)]
    lines, found = block.splitlines(), {}
    for name, row in rows().items():
        recipes = "| " + recipes_cell(v.recipe for v in row.variants.values()) + " |"
        prefixes = (recipes, f"| {name} |")  # a measured row, or a failed one
        line = next((x for x in lines if x.startswith(prefixes)), None)
        if line is None:
            continue
        commands = []
        if f"{name}:" in lines:
            start = lines.index(f"{name}:") + 3  # the heading, a blank line, ```bash
            end = lines.index("```", start) if "```" in lines[start:] else start
            commands = lines[start:end]
        found[name] = (line, commands)
    return found


def line_seeds(line: str) -> int:
    """The seed count of a README table line (0 for a failed row's line)."""
    counted = line.split("|")[4].strip()
    digits = counted.split()[0] if counted else ""
    return int(digits) if digits.isdigit() else 0


def column_needs(line: str, row: Row) -> dict[str, int]:
    """The recorded seeds each variant column of a README line stands for.

    `(1 seed)` stands for one, a `mean ± half range` for at least two (at most the line's seed
    count), `—` or an empty cell for none.
    """
    seeds = line_seeds(line)
    columns = [cell.strip() for cell in line.split("|")[5 : 5 + len(VARIANTS)]]
    needs = {}
    for key, column in zip(VARIANTS, columns):
        if key in row.variants and column not in ("", "—"):
            needs[key] = 1 if "(1 seed)" in column else min(seeds, 2)
    return needs


def shortfalls(line: str, done: dict[tuple[int, str], dict], row: Row) -> list[str]:
    """What a row's records lack to show at least what its README line shows, in words.

    Each variant column the line fills needs the seeds it stands for (`column_needs`), and the
    row as many seeds in all as the line counts. A line measured before records existed, or at
    an earlier configuration, stays until nothing is lacking: a first seed of a new budget must
    not replace two seeds of the old one. A line made from the current records lacks nothing.
    """
    lacking = []
    for key, need in column_needs(line, row).items():
        have = sorted(s for s, k in done if k == key)
        if len(have) < need:
            lacking.append(f"{key} {len(have)} of {need} seeds (recorded: {have or 'none'})")
    if len({seed for seed, _ in done}) < line_seeds(line):
        lacking.append(f"{line_seeds(line)} seeds in all")
    return lacking


def covers(line: str, done: dict[tuple[int, str], dict], row: Row) -> bool:
    """Whether a row's records show at least what its README line shows (see `shortfalls`)."""
    return not shortfalls(line, done, row)


def pending_runs(row: Row, done: dict[tuple[int, str], dict], line: str) -> str:
    """What a row still lacks before its records replace its README line, in words."""
    seeds = " ".join(map(str, range(line_seeds(line))))
    return (
        "the README line stays until the current configuration's records cover it: "
        + "; ".join(shortfalls(line, done, row))
        + f" (e.g. --rows {row.name} --seeds {seeds} --missing)"
    )


def table(
    results: dict, default_machine: str, earlier: str = "", pending: dict | None = None
) -> str:
    """The Markdown block for the README (rows without a recorded machine: `default_machine`).

    Rows that `results` lacks keep their line and commands from `earlier`, the README's block
    before this run: results.json lives under the git-ignored `runs/`, so a fresh checkout that
    re-measures one row must not drop the others. A kept row named in `pending` (row name: what
    its re-measurement still lacks) says in its seeds cell that it is an earlier configuration,
    being re-measured.
    """
    kept = {k: v for k, v in earlier_rows(earlier).items() if k not in results}
    lines = [
        START,
        "Measured by `benchmarks/results.py`: mean ± half range over the seeds "
        "(initialisation and data order; the shapes row draws a fresh data set per seed). "
        'Every row has the same budget in steps, batch and crop on every machine. "Pretrained '
        'trunk" starts the VGG16 convolutions from `keras-dense pretrained hed-vgg16` '
        "(ImageNet, then BSDS500 edges; no network) and trains with the same steps, batch and "
        'crop as "from scratch"; + CRF and + TTA evaluate the pretrained variant '
        "(the scratch one in a row without it). Paper figures "
        "are at paper scale (ImageNet weights, GPU, full schedules) and are not comparable. "
        "Each run's record (scores, times, commands, machine, commit) is a file under "
        "`benchmarks/results_runs/`; a row averages the current records of its recipe and "
        "budget, whichever session measured them.",
        "",
        "| recipe | data | metric | seeds | from scratch | pretrained trunk | + CRF | + TTA | "
        "median training wall per run (machine) | paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [n for n in rows() if n in results or n in kept]:
        if name in kept:
            line = kept[name][0]
            if name in (pending or {}):
                cells = line.split("|")
                cells[4] = f" {line_seeds(line)} (an earlier configuration, being re-measured) "
                line = "|".join(cells)
            lines.append(line)
            continue
        result = results[name]
        if "error" in result:
            lines.append(f"| {name} | {result.get('data', '')} | | | failed | | | | | |")
            continue
        if "runs" not in result:  # every record stale
            recipes = recipes_cell(result["recipes"].values())
            why = f"stale: {len(result['stale_records'])} records of an earlier configuration"
            lines.append(f"| {recipes} | {result['data']} | | 0 | {why} | | | | | |")
            continue
        lines.append("| " + " | ".join(row_cells(result, default_machine)) + " |")
    summary = "Exact commands (each variant's first seed; the others set another seed)"
    lines += ["", f"<details><summary>{summary}</summary>", ""]
    for name in [n for n in rows() if n in results or n in kept]:
        commands = kept[name][1] if name in kept else results[name].get("commands", [])
        if commands:  # a failed row may have none
            lines += [f"{name}:", "", "```bash", *commands, "```", ""]
    lines += ["</details>", END]
    return "\n".join(lines)


def readme_block() -> str:
    """The README's current results block ("" when it has none)."""
    text = (REPO / "README.md").read_text()
    return text[text.index(START) : text.index(END)] if START in text and END in text else ""


def write_readme(block: str) -> None:
    """Replaces the results block of README.md (temporary file, then rename).

    Text after the `NOTES` marker inside the old block is kept, after the new table.
    """
    readme = REPO / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        old = text[text.index(START) : text.index(END)]
        if NOTES in old:  # keep the notes: the new table goes before them
            block = block[: block.index(END)] + "\n" + old[old.index(NOTES) :] + END
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    tmp = readme.with_name(f"README.md.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", nargs="*", choices=list(rows()), help="default: all (none with --merge)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="default: each row's all"
    )
    parser.add_argument(
        "--missing", action="store_true", help="run only the runs without a current record"
    )
    parser.add_argument("--jobs", type=int, default=1, help="(variant, seed) runs at once")
    parser.add_argument("--reuse", action="store_true", help="keep existing shards and weights")
    parser.add_argument(
        "--merge", nargs="*", default=[], help="results.json files whose rows join the table"
    )
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.rows is None:
        args.rows = [] if args.merge else list(rows())
    args.seeds = list(dict.fromkeys(args.seeds))  # a seed twice would train one folder twice
    try:  # every record readable before hours of training
        for row in rows().values():
            load_records(row)
    except ValueError as err:
        parser.error(str(err))
    earlier = earlier_rows(readme_block())
    results, measured, failed = {}, {}, {}
    for path in args.merge:  # rows measured elsewhere, for rows without records here
        results.update(load_rows(pathlib.Path(path)))
    for name in args.rows:
        row = rows()[name]
        try:
            measured[name] = run_row(
                row, args.seeds, args.jobs, args.reuse, args.variants, args.missing
            )
        except (RuntimeError, OSError) as err:  # the other rows still run
            failed[name] = {"data": row.data, "error": str(err)[-2000:]}
            continue
    # Every row with current records is rebuilt from them, earlier sessions' runs included,
    # unless they do not yet cover what its README line shows (then that line stays).
    pending = {}
    for name, row in rows().items():
        if name in earlier and name not in results:  # a merged row replaces its line
            current, stale = load_records(row)  # this run's records too
            if not covers(earlier[name][0], current, row):
                if current or stale:  # measured at another configuration than the current
                    pending[name] = pending_runs(row, current, earlier[name][0])
                    print(f"{name}: {pending[name]}", file=sys.stderr)
                if "failed_runs" in measured.get(name, {}):
                    error = str(measured[name]["failed_runs"])
                    failed[name] = {"data": row.data, "error": error}
                measured.pop(name, None)
                continue
        recorded_row = measured.get(name) or row_from_records(row)
        if recorded_row is not None:
            results[name] = recorded_row
        elif name in failed and name not in earlier:  # a failure never hides a result
            results[name] = failed[name]
    for name, failure in failed.items():
        print(f"{name}: {failure['error'][-500:]}", file=sys.stderr)
    results = {k: v for k, v in results.items() if {"runs", "error", "stale_records"} & set(v)}
    write_json(REPO / WORK / "results.json", results)
    env = environment()
    report = {"results": results, "failed": failed, "pending": pending, "environment": env}
    print(json.dumps({**report, "load_average": os.getloadavg()}))
    if args.write_readme:
        write_readme(table(results, describe_machine(env), readme_block(), pending))


def load_rows(path: pathlib.Path) -> dict:
    """The rows of a results.json; a row without its machine gets the file's environment."""
    report = json.loads(path.read_text())
    rows_ = report["results"]
    if "environment" in report:
        for row in rows_.values():
            if "runs" in row:
                row.setdefault("machine", describe_machine(report["environment"]))
    return rows_


def write_json(path: pathlib.Path, results: dict) -> None:
    """Saves the results so far (temporary file, then rename): a long run keeps every row."""
    report = {"results": results, "environment": environment(), "load_average": os.getloadavg()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
