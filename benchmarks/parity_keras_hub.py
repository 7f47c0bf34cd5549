"""Parity with a reference implementation: keras-hub's DeepLabV3+ and ours at equal budget.

Both are built from scratch (no weights, no network) with a ResNet-50 trunk, fed the same
batches from our `tf.data` pipeline (`keras_dense.data.segmentation_dataset`: the same shards,
crop, random scale, flip and photometric jitter, "caffe" normalisation, one seed per run for
initialisation and data order), trained with the same loss (our masked cross-entropy, ignore
label 255), optimiser (SGD with momentum, poly decay), steps and batch, and scored by the
evaluator `keras-dense evaluate` uses (`keras_dense.evaluation.evaluate_segmentation`) on the
test split. keras-hub's model only accepts sizes divisible by 32 (fixed-factor upsampling), so
it is wrapped in a functional model that pads the input bottom-right to a multiple of 32 and
crops the logits back: `(B, H, W, classes)` at the input size, as our evaluator expects.

The data are the Oxford-IIIT Pet sample converted exactly as the README's "pets" row does
(`keras-dense convert pairs ... --remap 2:0 3:255`), from copies of its photos downscaled to
`--side` pixels on their longer side (masks by nearest neighbour; `--side 0` converts them as
they are) so that four ResNet-50 runs fit a shared 2-core budget. Runs are interleaved (seed 0
of both, then seed 1) so both implementations see the same machine load. Prints one JSON (and
rewrites `--output` after every run): mIoU per run, mean, min/max and std per implementation,
the difference, and whether it is within the seed-to-seed spread. Not part of `make test`.

    nice -n 5 .venv/bin/python benchmarks/parity_keras_hub.py [--steps 150] [--side 192]
        [--seeds 0 1] [--output FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import downscaled_pairs, environment  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["background", "pet"]
IGNORE = 255
NORMALIZATION = "caffe"  # ResNet's (our family's); keras-hub's model takes what it is fed
# Our evaluator plans each image's memory from the model's layers, which it cannot do for the
# keras-hub wrapper (its nested model's layers were built on another input): the wrapper is
# given this figure instead (about a ResNet-50 DeepLab's activations per input pixel), and
# both models are scored with a `max_memory` under which every test photo is predicted whole.
HUB_BYTES_PER_PIXEL = 16 * 1024
MAX_MEMORY = 16 * 1024**3


def shared_pets() -> pathlib.Path:
    """The Oxford Pets sample in the shared data sets folder."""
    root = os.environ.get("KERAS_DENSE_DATA") or str(REPO.parent / "shared" / "datasets")
    return pathlib.Path(root) / "oxford_pets_sample"


def convert(images: pathlib.Path, trimaps: pathlib.Path, split: pathlib.Path, output: str):
    """`keras-dense convert pairs` as the README's pets row runs it (in-process)."""
    from keras_dense.cli import main

    argv = ["convert", "pairs", "--images", str(images), "--masks", str(trimaps)]
    argv += ["--classes", ",".join(CLASSES), "--remap", "2:0", f"3:{IGNORE}"]
    argv += ["--split-file", str(split), "--output", output]
    status = main(argv)
    if status:
        raise RuntimeError(f"keras-dense {' '.join(argv)} exited with status {status}")


def prepare_shards(work: pathlib.Path, side: int) -> tuple[str, str]:
    """Train and test shard patterns (converted once, then reused)."""
    pets = shared_pets()
    annotations = pets / "annotations"
    patterns = []
    for split in ("trainval", "test"):
        output = work / "pets" / f"{split}{side or ''}"
        if not list(output.parent.glob(f"{output.name}-*.tfrecord")):
            images, trimaps = pets / "images", annotations / "trimaps"
            if side:
                images, trimaps = downscaled_pairs(
                    images, trimaps, annotations / f"{split}.txt", side, work / f"{split}_{side}"
                )
            convert(images, trimaps, annotations / f"{split}.txt", str(output))
        patterns.append(f"{output}-*.tfrecord")
    return patterns[0], patterns[1]


def keras_hub_deeplab(num_classes: int, canvas: int):
    """keras-hub's DeepLabV3+ on a from-scratch ResNet-50 v1 (the layout of its
    "deeplab_v3_plus_resnet50_pascalvoc" preset: ASPP on P5, decoder on P2), wrapped so that any
    input up to `canvas` (a multiple of 32) on a side gives `(B, H, W, num_classes)` logits."""
    import keras
    from models import keras_hub_deeplab as hub_segmenter

    from keras_dense.prediction import inference

    segmenter = hub_segmenter(num_classes, None)  # benchmarks/models.py's, any input size

    class PadToCanvas(keras.layers.Layer):
        """Zero-pads H and W at the bottom/right to a fixed `canvas` (static shape): keras-hub's
        decoder upsamples by factors computed from static sizes and fails on unknown ones."""

        def __init__(self, canvas: int, **kwargs):
            super().__init__(**kwargs)
            self.canvas = canvas

        def call(self, x):
            shape = keras.ops.shape(x)
            pad_h, pad_w = self.canvas - shape[1], self.canvas - shape[2]
            padded = keras.ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
            return keras.ops.reshape(padded, (-1, self.canvas, self.canvas, x.shape[-1]))

        def compute_output_shape(self, shape):
            return (shape[0], self.canvas, self.canvas, shape[3])

    class CropLike(keras.layers.Layer):
        """Crops the first input to the height and width of the second."""

        def call(self, inputs):
            y, x = inputs
            shape = keras.ops.shape(x)
            return y[:, : shape[1], : shape[2], :]

        def compute_output_shape(self, shapes):
            return (shapes[0][0], shapes[1][1], shapes[1][2], shapes[0][3])

    inputs = keras.Input((None, None, 3))
    logits = CropLike()([segmenter(PadToCanvas(canvas)(inputs)), inputs])
    model = keras.Model(inputs, logits, name="keras_hub_deeplabv3plus_resnet50")
    inference._BYTES_PER_PIXEL[model] = HUB_BYTES_PER_PIXEL
    return model


def our_deeplab(num_classes: int):
    """Ours: `keras_dense.apps.deeplab`, DeepLabv3+ on ResNet-50 at output stride 16."""
    from keras_dense.apps import deeplab

    return deeplab(num_classes, backbone="resnet50", output_stride=16, backbone_weights=None)


def train_and_score(build, seed: int, args, train: str, test: str) -> dict:
    """Trains one model from scratch and scores it on the test shards."""
    import keras

    from keras_dense.data import segmentation_dataset
    from keras_dense.evaluation.evaluator import evaluate_segmentation
    from keras_dense.losses.masked_cross_entropy import MaskedSparseCrossEntropy
    from keras_dense.training.schedules import build_schedule

    keras.utils.set_random_seed(seed)
    model = build(len(CLASSES))
    dataset = segmentation_dataset(
        train,
        args.batch,
        crop_size=args.crop,
        training=True,
        scale_range=tuple(args.scale_range),
        normalization=NORMALIZATION,
        ignore_label=IGNORE,
        cache=True,
        seed=seed,
        num_classes=len(CLASSES),
    ).repeat()
    schedule = {"name": "poly", "power": 0.9, "end_learning_rate": 0.0}
    model.compile(
        optimizer=keras.optimizers.SGD(
            build_schedule(schedule, args.lr, args.steps),
            momentum=0.9,
            weight_decay=args.weight_decay,
        ),
        loss=MaskedSparseCrossEntropy(ignore_label=IGNORE),
    )
    losses: list[float] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
    )
    start = time.monotonic()
    model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[record])
    train_seconds = time.monotonic() - start
    card = {
        "classes": CLASSES,
        "ignore_label": IGNORE,
        "normalization": NORMALIZATION,
        "input_size": [args.crop, args.crop],
    }
    start = time.monotonic()
    _, scores = evaluate_segmentation(model, card, test, tiled=False, max_memory=MAX_MEMORY)
    evaluate_seconds = time.monotonic() - start
    tail = max(1, len(losses) // 10)
    precise = {}
    if args.precise_bn:
        # The same weights, BatchNorm statistics re-estimated on training batches (both models).
        from keras_dense.training.precise_batch_norm import recalibrate_batch_norm

        recalibrate_batch_norm(model, dataset, args.precise_bn)
        _, rescored = evaluate_segmentation(model, card, test, tiled=False, max_memory=MAX_MEMORY)
        precise = {
            "mean_iou_precise_bn": round(float(rescored["mean_iou"]), 4),
            "per_class_iou_precise_bn": rescored.get("per_class_iou"),
        }
    return {
        "seed": seed,
        "mean_iou": round(float(scores["mean_iou"]), 4),
        **precise,
        "pixel_accuracy": round(float(scores.get("pixel_accuracy", float("nan"))), 4),
        "per_class_iou": scores.get("per_class_iou"),
        "first_loss": round(statistics.fmean(losses[:tail]), 4),
        "last_loss": round(statistics.fmean(losses[-tail:]), 4),
        "parameters": int(model.count_params()),
        "train_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(evaluate_seconds, 1),
        "test_images": scores["images"],
    }


def summary(runs: list[dict]) -> dict:
    """Mean, min, max and std of the runs' mIoU."""
    values = [r["mean_iou"] for r in runs]
    precise = [r["mean_iou_precise_bn"] for r in runs if "mean_iou_precise_bn" in r]
    return {
        "mean_iou_mean": round(statistics.fmean(values), 4),
        **(
            {"mean_iou_precise_bn_mean": round(statistics.fmean(precise), 4)}
            if len(precise) == len(runs)
            else {}
        ),
        "mean_iou_min": min(values),
        "mean_iou_max": max(values),
        "mean_iou_std": round(statistics.pstdev(values), 4),
        "runs": runs,
    }


def comparison(results: dict) -> dict:
    """The difference of the mean mIoUs and whether it is within the seed-to-seed spread."""
    ours, hub = results.get("ours"), results.get("keras_hub")
    if not ours or not hub:
        return {}
    spread = max(
        ours["mean_iou_max"] - ours["mean_iou_min"], hub["mean_iou_max"] - hub["mean_iou_min"]
    )
    difference = ours["mean_iou_mean"] - hub["mean_iou_mean"]
    return {
        "difference_ours_minus_keras_hub": round(difference, 4),
        "seed_spread": round(spread, 4),
        "ours_within_spread": bool(difference >= -spread),
    }


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.007)
    parser.add_argument("--weight-decay", type=float, default=4e-5)
    parser.add_argument("--scale-range", type=float, nargs=2, default=[0.5, 2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--precise-bn",
        type=int,
        default=0,
        help="also score both after re-estimating BatchNorm statistics on this many batches",
    )
    parser.add_argument(
        "--side", type=int, default=192, help="longer side of the photos (0: as they are)"
    )
    parser.add_argument("--work", default=str(REPO / "tfrecords" / "parity"))
    parser.add_argument("--only", choices=["ours", "keras_hub"], nargs="+")
    parser.add_argument("--output", help="also write the JSON here (after every run)")
    args = parser.parse_args()
    try:
        import keras_hub
    except ImportError as err:
        message = f"keras_hub is not importable ({err}); install the 'bench' extra"
        print(f"skipped: {message}", file=sys.stderr)
        print(json.dumps({"benchmark": "parity_keras_hub", "skipped": message}))
        return 0
    if args.crop % 32:
        parser.error(f"--crop {args.crop}: keras-hub's DeepLabV3 needs a multiple of 32")
    start = time.monotonic()
    train, test = prepare_shards(pathlib.Path(args.work), args.side)
    # keras-hub's model takes a static canvas (a multiple of 32) that every test photo fits.
    canvas = -(-max(args.crop, args.side or 512) // 32) * 32
    builders = {
        "ours": our_deeplab,
        "keras_hub": functools.partial(keras_hub_deeplab, canvas=canvas),
    }
    names = args.only or list(builders)
    report = {
        "benchmark": "parity_keras_hub",
        "data": {"train": train, "test": test, "longer_side": args.side or "as converted"},
        "budget": {
            "steps": args.steps,
            "batch": args.batch,
            "crop": args.crop,
            "optimizer": f"SGD momentum 0.9, lr {args.lr} poly 0.9, weight decay "
            f"{args.weight_decay}",
            "augmentation": f"scale {args.scale_range}, flip, photometric "
            "(keras_dense.data.segmentation_dataset)",
            "normalization": NORMALIZATION,
            "seeds": args.seeds,
        },
        "models": {
            "ours": "keras_dense.apps.deeplab resnet50, output stride 16, DeepLabv3+ decoder",
            "keras_hub": f"keras_hub {keras_hub.__version__} DeepLabV3ImageSegmenter on "
            "ResNetBackbone (ResNet-50 v1), ASPP on P5 (rates 6/12/18), P2 decoder",
        },
    }
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for seed in args.seeds:  # interleaved: both implementations see the same machine load
        for name in names:
            runs[name].append(train_and_score(builders[name], seed, args, train, test))
            print(f"{name} seed {seed}: {runs[name][-1]}", file=sys.stderr, flush=True)
            report["results"] = {n: summary(r) for n, r in runs.items() if r}
            report.update(comparison(report["results"]))
            report["seconds"] = round(time.monotonic() - start, 1)
            report["environment"] = environment()
            report["load_average"] = os.getloadavg()
            if args.output:
                write_atomically(args.output, json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
