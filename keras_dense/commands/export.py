"""`keras-dense export --model M --output saved_models/NAME [--version N]`, or a checked TFLite
file: `keras-dense export --format tflite [--quantize none|float16|int8] --model M --output DIR
[--data PATTERN] [--input-size H,W]`."""

from __future__ import annotations

import argparse
import os

from keras_dense.commands.tta_arguments import add_tta_arguments
from keras_dense.signatures.batch_modes import BATCH_MODES
from keras_dense.signatures.image_bytes import DEFAULT_MAX_PIXELS


def register(subparsers) -> None:
    """Adds the `export` command to the `keras-dense` parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model as a TF Serving SavedModel version or a checked .tflite",
        description="savedmodel (default): writes OUTPUT/<version>/ (the layout TF Serving "
        "reads) atomically, with the signatures serving_default (JPEG/PNG bytes) and "
        "serving_tensor (float images); refuses non-finite weights, non-stock ops and existing "
        "versions. tflite: converts at a fixed input size, runs the result with the LiteRT "
        "interpreter on images of --data (or generated ones) and writes OUTPUT/NAME.tflite "
        "plus NAME.tflite.json only when its per-pixel classes agree with the Keras model's "
        "(99.9%% for none/float16, 98%% for int8). Segmentation models only.",
    )
    parser.add_argument(
        "--format",
        choices=("savedmodel", "tflite"),
        default="savedmodel",
        help="TF Serving SavedModel version (default) or one TFLite file",
    )
    parser.add_argument("--model", required=True, help="the .keras model (its card X.json beside)")
    parser.add_argument(
        "--output", required=True, help="the model's serving folder, e.g. saved_models/NAME"
    )
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: the next integer)"
    )
    parser.add_argument(
        "--batch-mode",
        choices=BATCH_MODES,
        default="per_image",
        help="mixed-size batches: run each image alone (exact) or pad to the largest",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image (height * width) the signature accepts",
    )
    parser.add_argument(
        "--max-request-memory",
        default="2GiB",
        help="memory one request may take (e.g. 2GiB, 512MiB): the export measures the model's "
        "memory per pixel and refuses requests above the resulting pixel budget (default 2GiB)",
    )
    parser.add_argument(
        "--min-size", type=int, default=600, help="detection: shorter side fed to the model"
    )
    parser.add_argument(
        "--max-size", type=int, default=1000, help="detection: cap on the longer side"
    )
    add_tta_arguments(parser)
    tflite = parser.add_argument_group("tflite")
    tflite.add_argument(
        "--quantize",
        choices=("none", "float16", "int8"),
        default="none",
        help="tflite: float32 (none), float16 weights, or int8 weights and activations "
        "calibrated on --data",
    )
    tflite.add_argument(
        "--data",
        help="tflite: glob pattern of TFRecord shards whose images calibrate int8 and check "
        "the conversion (default: generated images)",
    )
    tflite.add_argument(
        "--input-size",
        help="tflite: fixed input H,W (default: the model card's input_size, the training tile)",
    )
    tflite.add_argument(
        "--check-images", type=int, default=8, help="tflite: images the check compares"
    )
    tflite.add_argument(
        "--representative-images",
        type=int,
        default=32,
        help="tflite: images the int8 calibration sees",
    )
    tflite.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="tflite: lowest per-pixel class agreement with the Keras model accepted "
        "(default 0.999 for none/float16, 0.98 for int8)",
    )
    parser.set_defaults(run=run)


def run_tflite(args: argparse.Namespace) -> int:
    """Runs `keras-dense export --format tflite`."""
    from keras_dense.export.tflite_export import export_tflite, parse_input_size

    size = parse_input_size(args.input_size) if args.input_size else None
    result = export_tflite(
        args.model,
        args.output,
        quantize=args.quantize,
        data=args.data,
        input_size=size,
        check_images=args.check_images,
        representative_images=args.representative_images,
        min_agreement=args.min_agreement,
        progress=True,
    )
    check = result.report["check"]
    print(
        f"exported {result.path} ({args.quantize}, input {result.report['input_shape']}): "
        f"class agreement {check['agreement']:.4%} with the Keras model on {check['images']} "
        f"images ({check['source']}), max output difference {check['max_abs_diff']:.3g}; "
        f"check: {result.report_path}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs `keras-dense export`."""
    if args.format == "tflite":
        return run_tflite(args)
    from keras_dense.export.saved_model_export import export_saved_model
    from keras_dense.signatures.memory_budget import parse_memory
    from keras_dense.utils.tta import parse_tta

    output = os.path.normpath(args.output)
    name = os.path.basename(output)
    if not name or name in (".", ".."):
        raise ValueError(f"--output {args.output!r}: expected a folder such as saved_models/NAME")
    result = export_saved_model(
        args.model,
        os.path.dirname(output) or ".",
        name=name,
        version=args.version,
        batch_mode=args.batch_mode,
        max_pixels=args.max_pixels,
        max_request_memory=parse_memory(args.max_request_memory),
        min_size=args.min_size,
        max_size=args.max_size,
        tta=parse_tta(args.tta, args.scales),
    )
    budget = result.memory_budget
    print(
        f"exported {result.task} model {result.name!r} version {result.version} to "
        f"{result.path} (signatures: {', '.join(result.signatures)}); request budget: "
        f"{budget.describe()}"
    )
    return 0
