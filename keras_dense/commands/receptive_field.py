"""`keras-dense receptive-field --model M --layer L [--data PATTERN] [--output PNG]`."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    """Adds the `receptive-field` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "receptive-field",
        help="theoretical (and, with --data, empirical) receptive field of a layer",
        description="Prints the theoretical receptive field (size, jump, start per axis, in "
        "input pixels) of a layer's units; with --data also the empirical (effective) field of "
        "the centre unit, measured from input gradients on the first --images records, and "
        "writes its gradient map as a PNG.",
    )
    parser.add_argument("--model", required=True, help="a saved model (X.keras)")
    parser.add_argument("--layer", required=True, help="layer name, e.g. class_maps")
    parser.add_argument("--data", help="glob pattern of TFRecord shards for the empirical field")
    parser.add_argument("--images", type=int, default=8, help="records used (default 8)")
    parser.add_argument(
        "--fraction", type=float, default=0.95, help="gradient mass inside the square (0.95)"
    )
    parser.add_argument(
        "--output", help="PNG of the empirical map (default: <model>_<layer>_erf.png)"
    )
    parser.set_defaults(run=run)


def _images(pattern: str, count: int, normalization):
    """The first `count` images of the shards, cropped or padded to the first one's size."""
    import itertools

    import numpy as np
    import tensorflow as tf

    from keras_dense.data import read_examples
    from keras_dense.utils.normalization import normalize

    if count < 1:
        raise ValueError(f"--images {count}: expected at least 1")
    rgbs = [r["image"] for r in itertools.islice(read_examples(pattern), count)]
    height, width = rgbs[0].shape[:2]
    batch = np.stack([tf.image.resize_with_crop_or_pad(rgb, height, width).numpy() for rgb in rgbs])
    return np.asarray(normalize(tf.constant(batch), normalization))


def run(args: argparse.Namespace) -> int:
    """Prints the fields and writes the empirical map."""
    import numpy as np

    from keras_dense.analysis import empirical_receptive_field, receptive_field
    from keras_dense.data.image_io import encode_png
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.utils.files import atomic_write_bytes

    model, card = load_model_with_card(args.model, required_card=False)
    field = receptive_field(model, args.layer)
    print(
        f"{args.layer}: theoretical receptive field size {field.size[0]}x{field.size[1]} px, "
        f"jump {field.jump[0]}x{field.jump[1]}, start ({field.start[0]:g}, {field.start[1]:g})"
    )
    if not args.data:
        return 0
    images = _images(args.data, args.images, card.get("normalization"))
    measured = empirical_receptive_field(model, args.layer, images, args.fraction)
    print(
        f"{args.layer}: empirical receptive field {measured.size} px ({measured.fraction:g} of "
        f"the gradient mass of unit {measured.unit}, centred at {measured.centre}) over "
        f"{len(images)} image(s) of {images.shape[1]}x{images.shape[2]}"
    )
    output = args.output or f"{os.path.splitext(args.model)[0]}_{args.layer}_erf.png"
    pixels = np.clip(np.rint(measured.map * 255), 0, 255).astype(np.uint8)
    atomic_write_bytes(output, encode_png(pixels))
    print(f"wrote {output}")
    return 0
