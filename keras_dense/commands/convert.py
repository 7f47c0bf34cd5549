"""`keras-dense convert <format>`: data sets into TFRecord shards."""

from __future__ import annotations

import argparse
import os

from keras_dense.commands.runner_arguments import add_runner_arguments, check_runner_arguments


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def _add_common_convert_args(parser: argparse.ArgumentParser, on_error: bool = True) -> None:
    parser.add_argument(
        "--output",
        required=True,
        help="DIR/NAME: writes DIR/NAME-0000k-of-0000N.tfrecord and DIR/NAME.json",
    )
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards (default 1)")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=min(4, os.cpu_count() or 1),
        help="parallel encoding threads (>= 1)",
    )
    add_runner_arguments(parser, "writing the same shards")
    if on_error:
        parser.add_argument(
            "--on-error",
            choices=("fail", "skip"),
            default="fail",
            help="stop at the first bad input (default) or skip and list it in the manifest",
        )


def register(sub) -> None:
    """Adds the `convert` command to the CLI's subparsers."""
    convert = sub.add_parser("convert", help="convert a data set into TFRecord shards")
    formats = convert.add_subparsers(dest="format", required=True)

    pairs = formats.add_parser("pairs", help="a folder of images and a folder of masks")
    pairs.add_argument("--images", required=True, help="folder of images")
    pairs.add_argument("--masks", required=True, help="folder of single-channel/palette PNGs")
    group = pairs.add_mutually_exclusive_group()
    group.add_argument("--classes", help="comma-separated class names (index = class id)")
    group.add_argument("--classes-file", help="file with one class name per line")
    pairs.add_argument(
        "--remap",
        nargs="+",
        default=[],
        metavar="SRC:DST",
        help="remap mask values, e.g. 11:255 (void -> ignore), 255:1",
    )
    pairs.add_argument("--ignore-label", type=int, default=255)
    pairs.add_argument("--mask-suffix", default="", help="suffix after the stem in mask names")
    pairs.add_argument("--split-file", help="file listing the stems to convert")
    pairs.add_argument(
        "--class-from-prefix",
        action="store_true",
        help="each image's class is its file name up to the last '_' (Oxford-IIIT Pet: "
        "Bengal_12.jpg -> Bengal); masks must be binary after --remap (1 = object, which "
        "gets that class's id); classes = background + the sorted prefixes; also writes "
        "image/class/label. Not with --classes / --classes-file",
    )
    _add_common_convert_args(pairs)

    instances = formats.add_parser(
        "instances",
        help="a folder of images and a folder of instance-id masks (0 background, 1..N)",
    )
    instances.add_argument("--images", required=True, help="folder of images")
    instances.add_argument(
        "--masks",
        required=True,
        help="folder of single-channel/palette PNGs of instance ids (Penn-Fudan layout)",
    )
    instances.add_argument(
        "--mask-suffix", default="_mask", help="suffix after the stem in mask names (default _mask)"
    )
    group = instances.add_mutually_exclusive_group()
    group.add_argument("--class-name", help="the class of every instance (default: object)")
    group.add_argument(
        "--classes-file",
        help="CSV of STEM,INSTANCE_ID,CLASS lines ('*' wildcards; the most specific line wins)",
    )
    instances.add_argument(
        "--max-instances",
        type=int,
        default=100,
        help="a mask with more instances is an error (default 100, at most 255)",
    )
    instances.add_argument("--split-file", help="file listing the stems to convert")
    _add_common_convert_args(instances)

    voc = formats.add_parser("voc", help="PASCAL VOC devkit layout")
    voc.add_argument("--root", required=True, help="folder with JPEGImages/, Annotations/, ...")
    voc.add_argument("--task", choices=("segmentation", "detection"), required=True)
    voc.add_argument("--split", help="ImageSets split name (default: every annotation)")
    voc.add_argument("--classes", help="comma-separated class names")
    voc.add_argument("--proposals", choices=("none", "selective_search"), default="none")
    voc.add_argument(
        "--coordinates",
        choices=("one-based", "zero-based"),
        default="one-based",
        help="detection boxes: VOC 1-based pixel indices (default; the devkit, LabelImg) or "
        "continuous 0-based corners (CVAT, Datumaro: a whole-image box is 0 0 W H)",
    )
    _add_common_convert_args(voc)

    coco = formats.add_parser("coco", help="COCO instances JSON")
    coco.add_argument("--annotations", required=True, help="instances_*.json")
    coco.add_argument("--images", required=True, help="image folder")
    coco.add_argument(
        "--semantic-masks",
        action="store_true",
        help="also write semantic masks (needs pycocotools)",
    )
    coco.add_argument(
        "--no-instance-masks",
        dest="instance_masks",
        action="store_false",
        default=None,
        help="leave out the per-object masks (written by default when the file has segmentations)",
    )
    _add_common_convert_args(coco)

    folders = formats.add_parser(
        "folders", help="one sub-folder of images per class (image-level labels only)"
    )
    folders.add_argument("--root", required=True, help="folder of class sub-folders")
    _add_common_convert_args(folders)

    shapes = formats.add_parser("shapes", help="the built-in synthetic shapes set")
    shapes.add_argument("--num-images", type=int, required=True)
    shapes.add_argument("--size", type=int, default=128)
    shapes.add_argument("--seed", type=int, default=0)
    _add_common_convert_args(shapes, on_error=False)
    convert.set_defaults(run=run)


def _convert(args: argparse.Namespace) -> dict:
    from keras_dense import data

    common = {
        "output": args.output,
        "num_shards": args.num_shards,
        "workers": args.workers,
        "progress": True,
        "runner": args.runner,
        "beam_options": args.beam_option,
    }
    check_runner_arguments(args)
    if args.format == "pairs":
        return data.convert_pairs(
            args.images,
            args.masks,
            classes=args.classes,
            classes_file=args.classes_file,
            remap=args.remap,
            ignore_label=args.ignore_label,
            mask_suffix=args.mask_suffix,
            split_file=args.split_file,
            class_from_prefix=args.class_from_prefix,
            on_error=args.on_error,
            **common,
        )
    if args.format == "instances":
        return data.convert_instances(
            args.images,
            args.masks,
            mask_suffix=args.mask_suffix,
            class_name=args.class_name,
            classes_file=args.classes_file,
            max_instances=args.max_instances,
            split_file=args.split_file,
            on_error=args.on_error,
            **common,
        )
    if args.format == "voc":
        return data.convert_voc(
            args.root,
            task=args.task,
            split=args.split,
            classes=args.classes,
            proposals=args.proposals,
            coordinates=args.coordinates,
            on_error=args.on_error,
            **common,
        )
    if args.format == "coco":
        return data.convert_coco(
            args.annotations,
            args.images,
            semantic_masks=args.semantic_masks,
            instance_masks=args.instance_masks,
            on_error=args.on_error,
            **common,
        )
    if args.format == "folders":
        return data.convert_folders(args.root, on_error=args.on_error, **common)
    return data.convert_shapes(num_images=args.num_images, size=args.size, seed=args.seed, **common)


def run(args: argparse.Namespace) -> int:
    """Runs the conversion and prints its summary."""
    from keras_dense.data.writer import summarize

    manifest = _convert(args)
    print(summarize(manifest))
    print(f"manifest: {args.output}.json")
    return 0
