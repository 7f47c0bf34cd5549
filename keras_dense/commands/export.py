"""`keras-dense export --model M --output saved_models/NAME [--version N]`, or a checked TFLite
file: `keras-dense export --format tflite [--quantize none|float16|int8] --model M --output DIR
[--data PATTERN] [--input-size H,W]`."""

from __future__ import annotations

import argparse
import os

from keras_dense.commands.applicable_options import (
    CommandOptions,
    OptionScope,
    is_given,
    stored_card,
)
from keras_dense.commands.tta_arguments import add_tta_arguments
from keras_dense.signatures.batch_modes import BATCH_MODES
from keras_dense.signatures.image_bytes import DEFAULT_MAX_PIXELS
from keras_dense.signatures.memory_budget import DEFAULT_MAX_REQUEST_MEMORY

_DEFAULT_REQUEST_MEMORY = f"{DEFAULT_MAX_REQUEST_MEMORY / 2**30:g}GiB"
# Where each option applies (its default is None in the parser, filled in from `_DEFAULTS`).
_SCOPES = (
    OptionScope("version", "--version", formats=("savedmodel",)),
    OptionScope("batch_mode", "--batch-mode", task_specific=True, formats=("savedmodel",)),
    OptionScope("max_pixels", "--max-pixels", formats=("savedmodel",)),
    OptionScope("max_request_memory", "--max-request-memory", formats=("savedmodel",)),
    OptionScope("min_size", "--min-size", task_specific=True, formats=("savedmodel",)),
    OptionScope("max_size", "--max-size", task_specific=True, formats=("savedmodel",)),
    OptionScope("tta", "--tta", task_specific=True, formats=("savedmodel",)),
    OptionScope("scales", "--scales", task_specific=True, formats=("savedmodel",)),
    OptionScope("allow_different_model", "--allow-different-model", formats=("savedmodel",)),
    OptionScope("quantize", "--quantize", formats=("tflite",)),
    OptionScope("data", "--data", formats=("tflite",)),
    OptionScope("input_size", "--input-size", formats=("tflite",)),
    OptionScope("check_images", "--check-images", formats=("tflite",)),
    OptionScope("representative_images", "--representative-images", formats=("tflite",)),
    OptionScope("min_agreement", "--min-agreement", formats=("tflite",)),
)
_DEFAULTS = {
    "batch_mode": "per_image",
    "max_pixels": DEFAULT_MAX_PIXELS,
    "max_request_memory": _DEFAULT_REQUEST_MEMORY,
    "tta": "none",
    "quantize": "none",
    "check_images": 8,
    "representative_images": 32,
}
_OPTIONS = CommandOptions("export", _SCOPES, _DEFAULTS)
# Detection: the training scale when the model card has none (Fast R-CNN's).
_DEFAULT_MIN_SIZE, _DEFAULT_MAX_SIZE = 600, 1000


def register(subparsers) -> None:
    """Adds the `export` command to the `keras-dense` parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model as a TF Serving SavedModel version or a checked .tflite",
        description="savedmodel (default): writes OUTPUT/<version>/ (the layout TF Serving "
        "reads) atomically, with the signatures serving_default (JPEG/PNG bytes) and "
        "serving_tensor (float images); refuses non-finite weights, non-stock ops, existing "
        "versions and a folder whose versions serve another model (task, classes or "
        "signatures). tflite: converts at a fixed input size, runs the result with the LiteRT "
        "interpreter on images of --data (or generated ones) and writes OUTPUT/NAME.tflite "
        "plus NAME.tflite.json only when its per-pixel classes agree with the Keras model's "
        "(99.9%% for none/float16, 98%% for int8). Segmentation models only. Options that do "
        "not apply to the format or the model's task are refused.",
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
        "--allow-different-model",
        action="store_true",
        help="add the version although the folder's versions serve another task, class list "
        "or signatures (TF Serving's stable/canary labels then name different models)",
    )
    parser.add_argument(
        "--batch-mode",
        choices=BATCH_MODES,
        default=None,
        help="mixed-size batches: run each image alone (exact, default) or pad to the largest "
        "(segmentation and detection)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help=f"largest image (height * width) the signature accepts (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--max-request-memory",
        default=None,
        help="memory one request may take (e.g. 2GiB, 512MiB): the export measures the model's "
        "memory per pixel and refuses requests above the resulting pixel budget (default "
        f"{_DEFAULT_REQUEST_MEMORY})",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="detection: shorter side fed to the model (default: the model card's training "
        f"scale, else {_DEFAULT_MIN_SIZE})",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="detection: cap on the longer side (default: the model card's, else "
        f"{_DEFAULT_MAX_SIZE})",
    )
    add_tta_arguments(parser)
    tflite = parser.add_argument_group("tflite")
    tflite.add_argument(
        "--quantize",
        choices=("none", "float16", "int8"),
        default=None,
        help="tflite: float32 (none, default), float16 weights, or int8 weights and "
        "activations calibrated on --data",
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
        "--check-images", type=int, default=None, help="tflite: images the check compares (8)"
    )
    tflite.add_argument(
        "--representative-images",
        type=int,
        default=None,
        help="tflite, --quantize int8: images the int8 calibration sees (32)",
    )
    tflite.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="tflite: lowest per-pixel class agreement with the Keras model accepted "
        "(default 0.999 for none/float16, 0.98 for int8)",
    )
    parser.set_defaults(run=run)


def check_options(args: argparse.Namespace) -> dict:
    """Refuses options that do not apply, fills in the defaults and checks the numbers.

    `--min-size` / `--max-size` left out become the model card's (its training scale), else
    600 / 1000.

    Returns:
        The model card fields the export overrides: the detection sizes given.

    Raises:
        ValueError: An option that does not apply to `--format` or to the model's task
            (named), or a bad value.
    """
    task, card = stored_card(args.model)
    _OPTIONS.check(args, task=task, output_format=args.format)
    if is_given(args, "representative_images", _DEFAULTS) and args.quantize != "int8":
        raise ValueError(
            "--representative-images does not apply without --quantize int8 (only int8 "
            "calibrates on representative images); leave it out"
        )
    for flag, value in (("--min-size", args.min_size), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: expected a positive number of pixels")
    min_size = args.min_size or card.get("min_size") or _DEFAULT_MIN_SIZE
    max_size = args.max_size or card.get("max_size") or _DEFAULT_MAX_SIZE
    if max_size < min_size:
        raise ValueError(
            f"--max-size {max_size} is below --min-size {min_size}: expected the cap on the "
            "longer side to be at least the shorter side's size"
        )
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels {args.max_pixels}: expected a positive number of pixels")
    if args.version is not None and args.version < 1:
        raise ValueError(f"--version {args.version}: expected a positive integer")
    given = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    args.min_size, args.max_size = min_size, max_size
    return given


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
    from keras_dense.signatures.memory_budget import parse_memory
    from keras_dense.utils.tta import parse_tta

    overrides = check_options(args)
    if args.format == "tflite":
        return run_tflite(args)
    from keras_dense.export.saved_model_export import export_saved_model

    output = os.path.normpath(args.output)
    name = os.path.basename(output)
    if not name or name in (".", ".."):
        raise ValueError(f"--output {args.output!r}: expected a folder such as saved_models/NAME")
    max_request_memory = parse_memory(args.max_request_memory, "--max-request-memory")
    tta = parse_tta(args.tta, args.scales)
    # The served scale is the card's (the training scale) unless --min-size / --max-size say
    # otherwise; the exported card records the sizes given.
    result = export_saved_model(
        args.model,
        os.path.dirname(output) or ".",
        name=name,
        version=args.version,
        card=overrides or None,
        batch_mode=args.batch_mode,
        max_pixels=args.max_pixels,
        max_request_memory=max_request_memory,
        min_size=args.min_size,
        max_size=args.max_size,
        tta=tta,
        allow_different_model=args.allow_different_model,
    )
    budget = result.memory_budget
    print(
        f"exported {result.task} model {result.name!r} version {result.version} to "
        f"{result.path} (signatures: {', '.join(result.signatures)}); request budget: "
        f"{budget.describe()}"
    )
    return 0
