"""`keras-dense evaluate --model M --data PATTERN [--crf] [--tiled] [--tta flip] [--scales S]
[--output DIR]`."""

from __future__ import annotations

import argparse
import json
import math
import os

from keras_dense.commands.applicable_options import CommandOptions, stored_card
from keras_dense.commands.runner_arguments import add_runner_arguments, check_runner_arguments
from keras_dense.commands.slice_arguments import add_slice_arguments, slice_options, tile_memory
from keras_dense.commands.tta_arguments import add_tta_arguments
from keras_dense.prediction.inference import DEFAULT_MAX_MEMORY

_DEFAULT_MEMORY = f"{DEFAULT_MAX_MEMORY / 2**30:g}GiB"
# Options that need a capability of the model's task (`Task.capabilities`); left out they are
# None.
_DEFAULTS = {
    "tta": "none",
    "pointing_tolerance": 3.0,
    "max_memory": _DEFAULT_MEMORY,
    "runner": "local",
}
_OPTIONS = CommandOptions.task_specific(
    "evaluate",
    {
        "crf": ("crf",),
        "tiled": ("tiled_inference",),
        "use_07_metric": ("voc_ap",),
        "tta": ("score_tta", "map_tta"),
        "scales": ("score_tta", "map_tta"),
        "pointing_tolerance": ("pointing_game",),
        "max_memory": ("memory_planning", "tile_batches"),
        "runner": ("beam_evaluation",),
        "slice": ("scored_detections",),
        "overlap": ("scored_detections",),
        "merge": ("scored_detections",),
        "merge_iou": ("scored_detections",),
    },
    _DEFAULTS,
)


def register(sub) -> None:
    """Adds the `evaluate` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "evaluate",
        help="score a saved model on TFRecord shards (mIoU, or VOC mAP for detection)",
        description="Segmentation: per-class IoU, mean IoU, pixel accuracy and "
        "frequency-weighted IoU over the confusion matrix (ignore label skipped), written as "
        "JSON plus a confusion-matrix PNG. Detection: PASCAL VOC mAP as JSON. Options that do "
        "not apply to the model's task are refused.",
    )
    parser.add_argument("--model", required=True, help="the saved model (X.keras, card X.json)")
    parser.add_argument("--data", required=True, help="glob pattern of TFRecord shards")
    add_slice_arguments(parser, "score sliced detection")
    parser.add_argument(
        "--crf",
        action="store_true",
        help="dense-CRF refinement (segmentation), with the parameters keras-dense tune-crf "
        "wrote into the model card (DeepLab's defaults when it has none)",
    )
    parser.add_argument(
        "--tiled",
        action="store_true",
        help="overlap-tile inference for every image (default: only for large images)",
    )
    parser.add_argument(
        "--use-07-metric", action="store_true", help="detection: VOC2007 11-point AP"
    )
    add_tta_arguments(parser)
    parser.add_argument(
        "--pointing-tolerance",
        type=float,
        default=None,
        help="classification: pointing-game tolerance in pixels (default 3, for images up "
        "to about 128 px; 18 is the usual value on VOC)",
    )
    parser.add_argument(
        "--max-memory",
        default=None,
        help="segmentation: memory one image may take (e.g. 2GiB), planned as predict plans "
        "it: larger images are evaluated tile by tile, or refused naming the record when even "
        f"that does not fit (default {_DEFAULT_MEMORY}); detection with --slice: memory of "
        "one model call, which takes as many tiles as fit (default: one tile per call)",
    )
    add_runner_arguments(parser, "scoring segmentation with the same numbers", default=None)
    parser.add_argument(
        "--output",
        help="folder for metrics.json, confusion_matrix.png and report.html (default: beside "
        "the model, <model name>_eval/)",
    )
    parser.set_defaults(run=run)


def _json_safe(value):
    """NaN (e.g. the mean over no class) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Evaluates, writes the JSON (and the task's files) atomically and prints the headline."""
    from keras_dense.signatures.memory_budget import parse_memory
    from keras_dense.tasks import EvaluateOptions, get_task
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.utils.files import atomic_write_bytes
    from keras_dense.utils.tta import parse_tta

    task_name = stored_card(args.model)[0]
    # Before the defaults are filled in; a model without a card is refused by the check below.
    budget = tile_memory(args, get_task(task_name)) if task_name else None
    _OPTIONS.check(args, task=task_name)
    check_runner_arguments(args)
    if not (math.isfinite(args.pointing_tolerance) and args.pointing_tolerance >= 0):
        raise ValueError(
            f"--pointing-tolerance {args.pointing_tolerance}: expected a finite number of "
            "pixels >= 0"
        )
    sliced = slice_options(args)  # a bad --slice, --overlap or --merge fails before any work
    max_memory = parse_memory(args.max_memory, "--max-memory")
    tta = parse_tta(args.tta, args.scales)
    model, card = load_model_with_card(args.model)
    task = get_task(card["task"])
    output = args.output or os.path.splitext(args.model)[0] + "_eval"
    os.makedirs(output, exist_ok=True)
    options = EvaluateOptions(
        crf=args.crf,
        tiled=True if args.tiled else None,
        use_07_metric=args.use_07_metric,
        tta=tta,
        progress=True,
        pointing_tolerance=args.pointing_tolerance,
        max_memory=max_memory,
        runner=args.runner,
        beam_options=tuple(args.beam_option),
        model_path=args.model,
        slice=sliced.tile,
        overlap=sliced.overlap,
        merge=sliced.merge,
        merge_iou=sliced.merge_iou,
        tile_memory=budget,
    )
    report = {"model": args.model, "data": args.data, "task": task.name}
    report.update(task.evaluate(model, card, args.data, options))
    written = []
    for name, content in task.evaluation_files(report, card, os.path.basename(args.model)).items():
        atomic_write_bytes(os.path.join(output, name), content)
        written.append(name)
    for line in task.report_lines(report):
        print(line)
    # Keys starting with "_" (report.html's gallery images) are not metrics.
    metrics = {key: value for key, value in report.items() if not key.startswith("_")}
    text = json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(os.path.join(output, "metrics.json"), text.encode())
    print(f"wrote {output}/metrics.json")
    if "report.html" in written:
        print(f"wrote {output}/report.html")
    return 0
