"""How much a pretrained trunk knows about a data set: a per-pixel linear probe of its features.

For each VGG16 block (conv3_3, conv4_3, conv5_3) the features of the training crops are
L2-normalised per pixel and a logistic regression (one dense layer, Adam, full batch epochs)
is fitted to the mask labels at the feature resolution (nearest-neighbour downsampled, ignore
label left out); it is scored on the test crops by pixel accuracy and mIoU. The same probe
runs on the same architecture with random (Glorot) weights, in the same run, as the baseline:
a trunk whose features separate the classes no better than random filters gives a fresh head
nothing to start from. This is how the Pets finding in issue 20's note was measured.

    .venv/bin/python benchmarks/trunk_probe.py --train "tfrecords/results/pets/train-*.tfrecord"
        --test "tfrecords/results/pets/val-*.tfrecord" [--weights FILE] [--images 64] [--crop 224]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402

BLOCKS = ("block3_conv3", "block4_conv3", "block5_conv3")


def crops(pattern: str, count: int, crop: int, seed: int):
    """`count` random crops (images "caffe"-normalised, labels) from a shard pattern."""
    import numpy as np

    from keras_dense.data import segmentation_dataset

    dataset = segmentation_dataset(
        pattern,
        1,
        crop_size=crop,
        training=True,
        scale_range=(1.0, 1.0),
        normalization="caffe",
        ignore_label=255,
        seed=seed,
        num_classes=2,
    ).repeat()  # a small set gives several random crops of each image
    images, labels = [], []
    for x, y in dataset:
        images.append(np.asarray(x))
        labels.append(np.asarray(y).reshape(np.asarray(x).shape[:3]))
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def features(trunk, block: str, images):
    """Per-pixel L2-normalised features `(N * h * w, C)` and their grid size."""
    import keras
    import numpy as np

    probe = keras.Model(trunk.input, trunk.get_layer(block).output)
    maps = probe.predict(images, batch_size=8, verbose=0)
    flat = maps.reshape(-1, maps.shape[-1])
    flat = flat / (np.linalg.norm(flat, axis=-1, keepdims=True) + 1e-6)
    return flat, maps.shape[1:3]


def labels_at(labels, size):
    """Labels nearest-neighbour resized to the feature grid, flattened."""
    import tensorflow as tf

    resized = tf.image.resize(labels[..., None].astype("float32"), size, method="nearest")
    return resized.numpy().reshape(-1).astype("int64")


def linear_probe(train_x, train_y, test_x, test_y, seed: int) -> dict:
    """Logistic regression on the training pixels; accuracy and mIoU on the test pixels."""
    import keras
    import numpy as np

    keep, held = train_y != 255, test_y != 255
    keras.utils.set_random_seed(seed)
    head = keras.Sequential(
        [keras.Input((train_x.shape[-1],)), keras.layers.Dense(2, activation="softmax")]
    )
    head.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    head.fit(train_x[keep], train_y[keep], epochs=30, batch_size=4096, verbose=0)
    predicted = head.predict(test_x[held], batch_size=65536, verbose=0).argmax(-1)
    truth = test_y[held]
    ious = [
        float(
            ((predicted == c) & (truth == c)).sum()
            / max(((predicted == c) | (truth == c)).sum(), 1)
        )
        for c in (0, 1)
    ]
    return {
        "pixel_accuracy": round(float((predicted == truth).mean()), 4),
        "mean_iou": round(float(np.mean(ious)), 4),
        "majority_class_accuracy": round(float(max(truth.mean(), 1 - truth.mean())), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--weights", default="runs/results/vgg16_hed_notop.weights.h5")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras

    train_images, train_labels = crops(args.train, args.images, args.crop, args.seed)
    test_images, test_labels = crops(args.test, args.images, args.crop, args.seed + 1)
    results = {}
    for name, weights in (("pretrained", args.weights), ("random", None)):
        keras.utils.set_random_seed(args.seed)
        trunk = keras.applications.VGG16(
            include_top=False, weights=weights, input_shape=(args.crop, args.crop, 3)
        )
        results[name] = {}
        for block in BLOCKS:
            train_x, size = features(trunk, block, train_images)
            test_x, _ = features(trunk, block, test_images)
            results[name][block] = linear_probe(
                train_x,
                labels_at(train_labels, size),
                test_x,
                labels_at(test_labels, size),
                args.seed,
            )
    report = {
        "benchmark": "trunk_probe",
        "train": args.train,
        "test": args.test,
        "weights": args.weights,
        "images": args.images,
        "crop": args.crop,
        "results": results,
        "pretrained_minus_random_mean_iou": {
            block: round(
                results["pretrained"][block]["mean_iou"] - results["random"][block]["mean_iou"], 4
            )
            for block in BLOCKS
        },
        "environment": environment(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
