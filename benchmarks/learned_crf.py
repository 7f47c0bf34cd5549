"""Learned vs Gaussian CRF-as-RNN on a frozen unary network: the direction of Table 2 of
Jampani, Kiefel & Gehler (CVPR 2016, "Learning Sparse High Dimensional Filters").

The paper (VOC12, DeepLab unaries): +2.48 IoU for one Gaussian mean-field step, +2.93 with
learned filters; two "loose" steps (untied): +3.38 / +3.00 Gaussian vs +3.85 / +3.37 learned
(val / test). The claim tested here: learned > Gaussian at equal steps.

Setup, all in one process:

1. `--model` is a trained segmenter (`best.keras`, with the run's `recipe.json` beside it for
   its input normalisation), frozen. Its logits are computed once for every image of `--train`
   and `--val` (full size; a softmax output is turned back into log-probabilities).
2. Each head is a `CrfRnn` on those logits and the raw image, initialised to the Gaussian
   CRF (`pairwise="learned"` starts from the closest general stencil at radius 1), trained
   with Adam on random crops of the training images (`--steps`, `--batch`, `--crop`;
   cross-entropy, label 255 ignored). Heads: Gaussian and learned, with 1 step, 2 steps, and
   2 loose steps. Within a seed every head sees the same crops.
3. Each head is scored on the full `--val` images (our mIoU, 255 ignored) and compared with
   the frozen unary's own mIoU: the gain in IoU points.

Each `--seeds` entry draws other crops (the heads' initialisation is deterministic). Prints
one JSON: per head the gain per seed, mean and half range, train time, and learned minus
Gaussian at equal steps; the unary's mIoU; versions, machine, load average.

    .venv/bin/python benchmarks/learned_crf.py \\
        --model runs/results/pets/pretrained/seed0/best.keras \\
        --train "tfrecords/results/pets/train-*.tfrecord" \\
        --val "tfrecords/results/pets/val-*.tfrecord" [--seeds 0 1] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402

HEADS = {
    "gaussian_1": ("gaussian", 1, False),
    "learned_1": ("learned", 1, False),
    "gaussian_2": ("gaussian", 2, False),
    "learned_2": ("learned", 2, False),
    "gaussian_2_loose": ("gaussian", 2, True),
    "learned_2_loose": ("learned", 2, True),
}
IGNORE = 255


def load_unary(model_path: str):
    """The frozen model and its input normalisation (from the run's recipe.json)."""
    import keras

    import keras_dense  # noqa: F401  (registers the layers)

    model = keras.models.load_model(model_path, compile=False)
    model.trainable = False
    recipe = os.path.join(os.path.dirname(model_path), "recipe.json")
    normalization = "caffe"
    if os.path.isfile(recipe):
        with open(recipe) as f:
            normalization = json.load(f).get("data", {}).get("normalization", normalization)
    return model, normalization


def unary_logits(model, normalization: str | None, pattern: str) -> list[dict]:
    """Every record's image, mask and the frozen model's logits (full size)."""
    import tensorflow as tf

    from keras_dense.data.reader import read_examples
    from keras_dense.utils.normalization import normalize

    items = []
    for example in read_examples(pattern):
        image = example["image"]
        output = model(normalize(tf.constant(image[None]), normalization), training=False)
        output = np.asarray(output[0], np.float32)
        sums = output.sum(-1)
        if output.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3):  # a softmax output
            output = np.log(np.clip(output, 1e-8, 1.0))
        if output.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"{example['source_id']}: the model's output {output.shape[:2]} is not the "
                f"image's size {image.shape[:2]}"
            )
        items.append({"image": image.astype(np.float32), "mask": example["mask"], "logits": output})
    if not items:
        raise ValueError(f"no records in {pattern!r}")
    return items


def crops(items: list[dict], count: int, size: int, rng: np.random.Generator):
    """`count` random crops (padded where an image is smaller): logits, image, mask."""
    logits, images, masks = [], [], []
    for _ in range(count):
        item = items[rng.integers(len(items))]
        h, w = item["mask"].shape
        top, left = rng.integers(max(1, h - size + 1)), rng.integers(max(1, w - size + 1))
        window = np.s_[top : top + size, left : left + size]
        pad = ((0, size - min(size, h - top)), (0, size - min(size, w - left)))
        logits.append(np.pad(item["logits"][window], pad + ((0, 0),)))
        images.append(np.pad(item["image"][window], pad + ((0, 0),)))
        masks.append(np.pad(item["mask"][window], pad, constant_values=IGNORE))
    return np.stack(logits), np.stack(images), np.stack(masks).astype(np.int32)


def train_head(head: str, classes: int, args, crop_set) -> tuple:
    """Trains one CRF head on the crops; returns the layer and the training seconds."""
    import keras

    from keras_dense.layers import CrfRnn

    pairwise, steps, loose = HEADS[head]
    keras.utils.set_random_seed(0)
    layer = CrfRnn(
        classes,
        theta_alpha=args.theta_alpha,
        theta_beta=args.theta_beta,
        theta_gamma=args.theta_gamma,
        num_iterations=steps,
        pairwise=pairwise,
        loose=loose,
        implementation="tf",
    )
    inputs = [keras.Input((None, None, classes)), keras.Input((None, None, 3))]
    model = keras.Model(inputs, layer(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE),
    )
    logits, images, masks = crop_set
    start = time.perf_counter()
    model.fit([logits, images], masks, batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
    return layer, time.perf_counter() - start


def score(layer, items, classes) -> float:
    """mIoU of the head on full images (None: the unary's own argmax), label 255 ignored."""
    from keras_dense.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores

    total = np.zeros((classes, classes), np.int64)
    for item in items:
        logits = item["logits"]
        if layer is not None:
            logits = np.asarray(layer([logits[None], item["image"][None]]))[0]
        total += confusion_matrix(item["mask"], logits.argmax(-1), classes, IGNORE)
    return segmentation_scores(total)["mean_iou"]


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "half_range": round((max(values) - min(values)) / 2, 4),
        "per_seed": [round(v, 4) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--theta-alpha", type=float, default=40.0)
    parser.add_argument("--theta-beta", type=float, default=13.0)
    parser.add_argument("--theta-gamma", type=float, default=3.0)
    args = parser.parse_args()

    model, normalization = load_unary(args.model)
    start = time.perf_counter()
    train_items = unary_logits(model, normalization, args.train)
    val_items = unary_logits(model, normalization, args.val)
    classes = train_items[0]["logits"].shape[-1]
    unary_seconds = time.perf_counter() - start
    unary = score(None, val_items, classes)

    gains = {head: [] for head in args.heads}
    seconds = {head: [] for head in args.heads}
    scores = {head: [] for head in args.heads}
    for seed in args.seeds:
        crop_set = crops(
            train_items, args.steps * args.batch, args.crop, np.random.default_rng(seed)
        )
        for head in args.heads:
            layer, took = train_head(head, classes, args, crop_set)
            value = score(layer, val_items, classes)
            scores[head].append(value)
            gains[head].append(100.0 * (value - unary))
            seconds[head].append(round(took, 1))
            print(f"seed {seed} {head}: mIoU {value:.4f} ({gains[head][-1]:+.2f})", file=sys.stderr)
    report = {
        "benchmark": "learned_crf",
        "model": args.model,
        "train": args.train,
        "val": args.val,
        "val_images": len(val_items),
        "unary_val_miou": round(unary, 4),
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "train", "val")},
        "gain_iou_points": {head: spread(values) for head, values in gains.items()},
        "val_miou": {head: spread(values) for head, values in scores.items()},
        "train_seconds": seconds,
        "unary_seconds": round(unary_seconds, 1),
    }
    comparisons = {}
    for steps in ("1", "2", "2_loose"):
        learned, gaussian = f"learned_{steps}", f"gaussian_{steps}"
        if learned in gains and gaussian in gains:
            differences = [a - b for a, b in zip(gains[learned], gains[gaussian])]
            comparisons[f"learned_minus_gaussian_{steps}"] = spread(differences)
    report["learned_minus_gaussian"] = comparisons
    report["paper_table2_voc12_val"] = {
        "gaussian_1": 2.48,
        "learned_1": 2.93,
        "gaussian_2_loose": 3.38,
        "learned_2_loose": 3.85,
    }
    report["environment"] = environment()
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
