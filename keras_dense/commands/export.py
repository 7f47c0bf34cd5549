"""`keras-dense export --model M --output saved_models/NAME [--version N]`, or a checked TFLite,
ONNX or OpenVINO file: `keras-dense export --format tflite [--quantize none|float16|int8]
--model M --output DIR [--data PATTERN] [--input-size H,W]`, `keras-dense export --format
onnx|openvino --model M --output DIR [--data PATTERN] [--input-size H,W] [--dynamic]`."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os

from keras_dense.commands.applicable_options import (
    CommandOptions,
    OptionScope,
    is_given,
    stored_card,
)
from keras_dense.commands.tta_arguments import add_tta_arguments
from keras_dense.tasks.export_options import check_values, declared_fields, flag_of

_SAVEDMODEL = ("savedmodel",)
_RUNTIMES = ("onnx", "openvino")
_CHECKED = ("tflite", *_RUNTIMES)
# Where the options that are not export option declarations apply (their default is None in
# the parser, filled in from the defaults).
_FIXED_SCOPES = (
    OptionScope("version", "--version", formats=_SAVEDMODEL),
    OptionScope("allow_different_model", "--allow-different-model", formats=_SAVEDMODEL),
    OptionScope("quantize", "--quantize", formats=("tflite",)),
    OptionScope("data", "--data", formats=_CHECKED),
    OptionScope("input_size", "--input-size", formats=_CHECKED),
    OptionScope("dynamic", "--dynamic", formats=_RUNTIMES),
    OptionScope("check_images", "--check-images", formats=_CHECKED),
    OptionScope("representative_images", "--representative-images", formats=("tflite",)),
    OptionScope("min_agreement", "--min-agreement", formats=_CHECKED),
)
_FIXED_DEFAULTS = {
    "quantize": "none",
    "check_images": 8,
    "representative_images": 32,
    "dynamic": False,
}


@functools.cache
def declared_options() -> dict[str, tuple[dataclasses.Field, tuple[str, ...]]]:
    """Every task's export option declarations: name -> (field, the tasks declaring it).

    In task order, each name once (tasks declaring the same name share its declaration:
    `keras_dense.tasks.export_options`).
    """
    from keras_dense.tasks import get_task, task_names

    found: dict[str, tuple[dataclasses.Field, tuple[str, ...]]] = {}
    for task in task_names():
        for name, field in declared_fields(get_task(task).export_options).items():
            first, tasks = found.get(name, (field, ()))
            found[name] = (first, (*tasks, task))
    return found


def _is_tta(field: dataclasses.Field) -> bool:
    return field.metadata.get("type") is None and field.metadata.get("parse") is None


def _shown_default(field: dataclasses.Field) -> str:
    meta = field.metadata
    if meta.get("shown_default") is not None:
        return meta["shown_default"]
    return str(field.default)


@functools.cache
def _options() -> CommandOptions:
    """The command's scopes and defaults: the fixed ones plus one per declared option."""
    from keras_dense.tasks import task_names

    every = set(task_names())
    scopes, defaults = list(_FIXED_SCOPES), dict(_FIXED_DEFAULTS)
    for name, (field, tasks) in declared_options().items():
        field_of = None if set(tasks) == every else name
        dests = ("tta", "scales") if _is_tta(field) else (name,)
        for dest in dests:
            scopes.append(
                OptionScope(dest, flag_of(dest), formats=_SAVEDMODEL, export_field=field_of)
            )
        if _is_tta(field):
            defaults["tta"] = "none"
        elif field.default is not None:
            shown = field.metadata.get("shown_default")
            defaults[name] = shown if field.metadata.get("parse") else field.default
    return CommandOptions("export", tuple(scopes), defaults)


def add_declared_options(parser: argparse.ArgumentParser) -> None:
    """One option per declared export option field: flag, type, choices and help from it.

    Each is None when left out (the task's default then applies); the help names the default
    and, when only some tasks declare it, those tasks.
    """
    from keras_dense.tasks import task_names

    every = set(task_names())
    for name, (field, tasks) in declared_options().items():
        meta = field.metadata
        which = "" if set(tasks) == every else f"{' and '.join(tasks)} models: "
        if _is_tta(field):  # --tta and --scales, read by keras_dense.utils.tta
            add_tta_arguments(parser, f"{which}{meta['help']}")
            continue
        parser.add_argument(
            flag_of(name),
            type=meta["type"] or str,
            choices=meta["choices"],
            default=None,
            help=f"{which}{meta['help']} (default {_shown_default(field)})".replace("%", "%%"),
        )


def register(subparsers) -> None:
    """Adds the `export` command to the `keras-dense` parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model as a TF Serving SavedModel version, or a checked TFLite, "
        "ONNX or OpenVINO model",
        description="savedmodel (default): writes OUTPUT/<version>/ (the layout TF Serving "
        "reads) atomically, with the signatures serving_default (JPEG/PNG bytes) and "
        "serving_tensor (float images); refuses non-finite weights, non-stock ops, existing "
        "versions and a folder whose versions serve another model (task, classes or "
        "signatures). tflite: converts at a fixed input size, runs the result with the LiteRT "
        "interpreter on images of --data (or generated ones) and writes OUTPUT/NAME.tflite "
        "plus NAME.tflite.json only when its per-pixel classes agree with the Keras model's "
        "(99.9%% for none/float16, 98%% for int8). Segmentation models only. onnx / openvino: "
        "converts with Keras's exporter (input size fixed, or free with --dynamic), runs the "
        "result in onnxruntime / OpenVINO's CPU plugin on the same images and writes "
        "OUTPUT/NAME.onnx (NAME.xml + NAME.bin) plus a .json check only at 99.9%% class "
        "agreement (segmenters, WSL classifiers) or 99%% box agreement (Faster R-CNN with "
        "RoIAlign, ONNX only); operations the format lacks are named. "
        "Options that do not apply to the format or the model's task are refused.",
    )
    parser.add_argument(
        "--format",
        choices=("savedmodel", "tflite", *_RUNTIMES),
        default="savedmodel",
        help="TF Serving SavedModel version (default), one TFLite file, an ONNX file or an "
        "OpenVINO IR",
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
    add_declared_options(parser)
    tflite = parser.add_argument_group("tflite, onnx, openvino")
    tflite.add_argument(
        "--quantize",
        choices=("none", "float16", "int8"),
        default=None,
        help="tflite: float32 (none, default), float16 weights, or int8 weights and "
        "activations calibrated on --data",
    )
    tflite.add_argument(
        "--data",
        help="tflite, onnx, openvino: glob pattern of TFRecord shards whose images check the "
        "conversion and calibrate int8 (default: generated images)",
    )
    tflite.add_argument(
        "--input-size",
        help="tflite, onnx, openvino: input H,W (default: the model card's input_size, the "
        "training tile); with --dynamic, the check's size",
    )
    tflite.add_argument(
        "--check-images",
        type=int,
        default=None,
        help="tflite, onnx, openvino: images the check compares (8)",
    )
    tflite.add_argument(
        "--dynamic",
        action="store_true",
        default=None,
        help="onnx, openvino: leave the input height and width free (the batch always is)",
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
        help="tflite, onnx, openvino: lowest class agreement with the Keras model accepted "
        "(default 0.999; 0.98 for int8; detectors: box agreement, default 0.99)",
    )
    parser.set_defaults(run=run)


def check_options(args: argparse.Namespace) -> dict:
    """Refuses options that do not apply, fills in the defaults and checks the values.

    Returns:
        The given export option values by field name (parsed: `max_request_memory` in bytes,
        `tta` a `TestTimeAugmentation`), for `export_saved_model`.

    Raises:
        ValueError: An option that does not apply to `--format` or to the model's task
            (named), or a bad value.
    """
    from keras_dense.tasks import get_task
    from keras_dense.utils.tta import parse_tta

    task, card = stored_card(args.model)
    options = _options()
    options.check(args, task=task, output_format=args.format)
    if is_given(args, "representative_images", options.defaults) and args.quantize != "int8":
        raise ValueError(
            "--representative-images does not apply without --quantize int8 (only int8 "
            "calibrates on representative images); leave it out"
        )
    if args.version is not None and args.version < 1:
        raise ValueError(f"--version {args.version}: expected a positive integer")
    values = {}
    for name, (field, tasks) in declared_options().items():
        if _is_tta(field):
            if is_given(args, "tta", options.defaults) or args.scales is not None:
                values[name] = parse_tta(args.tta, args.scales)
            continue
        value = getattr(args, name, None)
        if value is None or (task is not None and task not in tasks):
            continue  # left out, or filled in with a default that does not apply
        parse = field.metadata.get("parse")
        values[name] = parse(value, flag_of(name)) if parse else value
        check_values(get_task(tasks[0]).export_options, {name: values[name]}, flag_of)
    if task is not None and args.format == "savedmodel":
        get_task(task).export_options(**values).check_with_card(card)
    return values


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
    _print_check(f"{result.path} ({args.quantize}", result.report, result.report_path)
    return 0


def _print_check(written: str, report: dict, report_path: str) -> None:
    """The one line a checked export prints: what it wrote and how well it agrees."""
    check = report["check"]
    if "max_box_diff" in check:  # a detector: final boxes compared, not raw heads
        agreement = f"box agreement {check['agreement']:.4%} over {check['compared']} detections"
        difference = f"max box difference {check['max_box_diff']:.3g} px"
    else:
        agreement = f"class agreement {check['agreement']:.4%}"
        difference = f"max output difference {check['max_abs_diff']:.3g}"
    print(
        f"exported {written}, input {report['input_shape']}): {agreement} with the Keras model "
        f"on {check['images']} images ({check['source']}), {difference}; check: {report_path}"
    )


def run_runtime(args: argparse.Namespace) -> int:
    """Runs `keras-dense export --format onnx|openvino`."""
    from keras_dense.export.check_images import parse_input_size
    from keras_dense.export.runtime_export import export_runtime

    size = parse_input_size(args.input_size) if args.input_size else None
    result = export_runtime(
        args.model,
        args.output,
        args.format,
        data=args.data,
        input_size=size,
        dynamic=bool(args.dynamic),
        check_images=args.check_images,
        min_agreement=args.min_agreement,
        progress=True,
    )
    _print_check(f"{', '.join(result.files)} ({args.format}", result.report, result.report_path)
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs `keras-dense export`."""
    values = check_options(args)
    if args.format == "tflite":
        return run_tflite(args)
    if args.format in _RUNTIMES:
        return run_runtime(args)
    from keras_dense.export.saved_model_export import export_saved_model

    output = os.path.normpath(args.output)
    name = os.path.basename(output)
    if not name or name in (".", ".."):
        raise ValueError(f"--output {args.output!r}: expected a folder such as saved_models/NAME")
    # Options that are also model card fields (a detector's min_size / max_size, its
    # training scale) are recorded in the exported card as given.
    card = stored_card(args.model)[1]
    overrides = {key: value for key, value in values.items() if key in card}
    result = export_saved_model(
        args.model,
        os.path.dirname(output) or ".",
        name=name,
        version=args.version,
        card=overrides or None,
        allow_different_model=args.allow_different_model,
        **values,
    )
    budget = result.memory_budget
    print(
        f"exported {result.task} model {result.name!r} version {result.version} to "
        f"{result.path} (signatures: {', '.join(result.signatures)}); request budget: "
        f"{budget.describe()}"
    )
    return 0
