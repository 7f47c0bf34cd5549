"""`keras-dense predict --model M INPUT... --output DIR`: masks and overlays, or boxes."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from keras_dense.commands.applicable_options import CommandOptions, stored_card
from keras_dense.commands.predict_export import (
    check_export_arguments,
    export_inputs,
    run_export,
)
from keras_dense.commands.runner_arguments import add_runner_arguments, check_runner_arguments
from keras_dense.commands.slice_arguments import (
    DEFAULT_MERGE_IOU,
    DEFAULT_OVERLAP,
    add_slice_arguments,
    slice_options,
    tile_memory,
)
from keras_dense.commands.tta_arguments import add_tta_arguments
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import (
    IMAGE_EXTENSIONS,
    image_size_from_header,
    list_images,
    read_image_file,
)
from keras_dense.prediction.inference import DEFAULT_MAX_MEMORY
from keras_dense.signatures.memory_budget import parse_memory
from keras_dense.tasks import PredictOptions, get_task
from keras_dense.utils.files import atomic_write_bytes
from keras_dense.utils.tta import parse_tta

_DEFAULT_MEMORY = f"{DEFAULT_MAX_MEMORY / 2**30:g}GiB"
# Options that need a capability of the model's task (`Task.capabilities`); left out they are
# None, and typed at their default they are the same as left out.
_OPTIONS = CommandOptions.task_specific(
    "predict",
    {
        "max_memory": ("memory_planning", "tile_batches"),
        "tiled": ("tiled_inference",),
        "tile_size": ("tiled_inference",),
        "tta": ("score_tta",),
        "scales": ("score_tta",),
        "score_threshold": ("scored_detections",),
        "slice": ("scored_detections",),
        "overlap": ("scored_detections",),
        "merge": ("scored_detections",),
        "merge_iou": ("scored_detections",),
        "crf": ("crf",),
    },
    {
        "max_memory": _DEFAULT_MEMORY,
        "tiled": "auto",
        "score_threshold": 0.5,
        "tta": "none",
    },
)


def register(sub) -> None:
    """Adds the `predict` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "predict",
        help="run a saved model on image files",
        description="Segmentation: writes NAME_mask.png (VOC palette colours) and "
        "NAME_overlay.png per input; detection: NAME_boxes.png and NAME_detections.json. "
        "Large images go through overlap-tile inference. A bad input is reported on stderr "
        "and skipped; the exit status is 1 if any input failed.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the saved model (X.keras, card X.json), or an export folder (saved_model.pb): "
        "its serving_default signature, locally or with --runner beam",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    parser.add_argument(
        "--data",
        help="glob pattern of TFRecord shards to predict instead of (or besides) files; their "
        "manifest's classes must match the model card's",
    )
    parser.add_argument(
        "--max-memory",
        default=None,
        help="segmentation and classification: memory one image may take (e.g. 2GiB): larger "
        "images are segmented tile by tile, or refused when even that does not fit (a "
        f"classifier's class maps are never tiled) (default {_DEFAULT_MEMORY}); detection "
        "with --slice: memory of one model call, which takes as many tiles as fit (default: "
        "one tile per call)",
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--tiled",
        choices=("auto", "always", "never"),
        default=None,
        help="segmentation: overlap-tile inference: auto (default: images with a side above "
        "1024 px, valid-padding models), always or never",
    )
    parser.add_argument(
        "--tile-size", type=int, help="segmentation: tile size for overlap-tile inference"
    )
    add_tta_arguments(parser)
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="detection: lowest score drawn, in [0, 1] (default 0.5)",
    )
    add_slice_arguments(parser, "run the detector")
    parser.add_argument(
        "--crf",
        action="store_true",
        help="segmentation: dense-CRF refinement with the model card's parameters (see "
        "keras-dense tune-crf; DeepLab's defaults when the card has none)",
    )
    add_runner_arguments(parser, "running an export with RunInference (--model EXPORT_DIR)")
    parser.set_defaults(run=run)


# Entries of an input folder named when some are left out.
_SHOWN_LEFT_OUT = 10


def _note_left_out(folder: str, images: list[str]) -> None:
    """Names on stderr what a folder holds besides its images (hidden entries aside)."""
    chosen = {os.path.basename(path) for path in images}
    others = sorted(
        name for name in os.listdir(folder) if name not in chosen and not name.startswith(".")
    )
    if not others:
        return
    named = [name + ("/" if os.path.isdir(os.path.join(folder, name)) else "") for name in others]
    shown = ", ".join(named[:_SHOWN_LEFT_OUT])
    if len(named) > _SHOWN_LEFT_OUT:
        shown += f", ... ({len(named)} in all)"
    print(
        f"keras-dense predict: note: {folder}: left out {len(others)} entries that are not image "
        f"files ({', '.join(IMAGE_EXTENSIONS)}) or are folders (not searched): {shown}",
        file=sys.stderr,
    )


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given; folders replaced by the images directly inside them.

    What a folder holds besides them (other files, sub-folders) is named on stderr.
    """
    files = []
    for item in inputs:
        if os.path.isdir(item):
            images = list_images(item)
            _note_left_out(item, images)
            files.extend(images)
        else:
            files.append(item)
    return files


def refuse_output_among_inputs(output: str, files: list[str]) -> None:
    """Refuses an output folder that holds one of the input files.

    Outputs are named `STEM_SUFFIX` beside each other, and an input may have such a name (a
    photo `a_mask.png` beside `a.png`): it would be replaced. A rerun would also read the
    outputs of the first run as inputs.

    Raises:
        ValueError: Naming the folder and the input.
    """
    if not os.path.isdir(output):
        return
    for path in files:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(folder) and os.path.samefile(folder, output):
            raise ValueError(
                f"--output {output}: the folder holds the input {path}; predictions written "
                "there could replace input images and would be read as inputs by the next run: "
                "choose another output folder"
            )


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, index = stem, 2
    while candidate in used:
        candidate, index = f"{stem}_{index}", index + 1
    used.add(candidate)
    return candidate


def read_input(path: str) -> np.ndarray:
    """The pixels of an input file, as TF Serving decodes them (EXIF orientation ignored).

    Raises:
        BadInputError: The file is missing, unreadable, or not a decodable image.
    """
    try:
        image = read_image_file(path, apply_exif=False)
    except OSError as err:
        raise BadInputError(path, f"cannot read the file ({err.strerror or err})") from None
    if image.orientation != 1:
        print(
            f"keras-dense predict: warning: {path}: EXIF orientation {image.orientation} "
            "ignored: the outputs follow the stored pixels, as TF Serving decodes them",
            file=sys.stderr,
        )
    return image.rgb


def check_header(
    path: str, task, model, card: dict, max_memory: int, options: PredictOptions | None = None
) -> str:
    """Reads an input's size from its header and plans its prediction before decoding it.

    Returns:
        The task's plan (see `Task.plan_prediction`).

    Raises:
        BadInputError: The file cannot be read, or the image does not fit the budget.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as err:
        raise BadInputError(path, f"cannot read the file ({err.strerror or err})") from None
    size = image_size_from_header(head)
    if size is None:
        return "whole"
    try:
        return task.plan_prediction(model, card, size[0], size[1], max_memory, options)
    except ValueError as err:
        raise BadInputError(path, str(err)) from None


def _options(args) -> PredictOptions:
    return PredictOptions(
        tiled={"auto": None, "always": True, "never": False}[args.tiled or "auto"],
        tile_size=args.tile_size,
        score_threshold=0.5 if args.score_threshold is None else args.score_threshold,
        tta=parse_tta(getattr(args, "tta", "none"), getattr(args, "scales", None)),
        crf=getattr(args, "crf", False),
        slice=getattr(args, "slice", None),
        overlap=DEFAULT_OVERLAP if getattr(args, "overlap", None) is None else args.overlap,
        merge=getattr(args, "merge", None) or "nms",
        merge_iou=DEFAULT_MERGE_IOU if getattr(args, "merge_iou", None) is None else args.merge_iou,
        tile_memory=getattr(args, "tile_memory", None),
    )


def predict_image(model, card: dict, rgb: np.ndarray, output: str, stem: str, args, plan: str):
    """Predicts one image and writes the task's outputs atomically; returns the files."""
    task = get_task(card["task"])
    written = []
    for suffix, data in task.predict_image(model, card, rgb, _options(args), plan).items():
        target = os.path.join(output, stem + suffix)
        atomic_write_bytes(target, data)
        written.append(target)
    return written


def predict_file(model, card: dict, path: str, output: str, stem: str, args) -> list[str]:
    """Predicts one image file within the memory budget; returns the files written.

    Raises:
        BadInputError: The file is missing, unreadable, not a decodable image, or too large.
    """
    max_memory = parse_memory(getattr(args, "max_memory", None) or _DEFAULT_MEMORY, "--max-memory")
    plan = check_header(path, get_task(card["task"]), model, card, max_memory, _options(args))
    rgb = read_input(path)
    try:
        return predict_image(model, card, rgb, output, stem, args, plan)
    except ValueError as err:
        raise BadInputError(path, str(err)) from None


def _record_file_name(source_id, index: int) -> str:
    """The name a record's outputs are named after: the last part of its source_id, or
    `record_N` (its position) when that is empty or would make hidden files."""
    base = os.path.basename(str(source_id).rstrip("/"))
    return (base if base and not base.startswith(".") else f"record_{index}") + ".png"


def _records(pattern: str, card: dict):
    """`(name, source_id, rgb)` of every record of the shards, after checking their classes."""
    from keras_dense.data import read_examples
    from keras_dense.data.class_lists import check_card_classes

    check_card_classes(pattern, card, get_task(card["task"]).class_names, "--data")
    for example in read_examples(pattern):
        yield (
            f"record {example['source_id']!r} of {pattern}",
            example["source_id"],
            example["image"],
        )


def run(args: argparse.Namespace) -> int:
    """Predicts every input; bad inputs are reported and skipped (exit status 1 at the end)."""
    from keras_dense.prediction.export_prediction import is_export
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.utils.card_fields import check_card_fields
    from keras_dense.utils.model_card import model_card_path

    check_runner_arguments(args)
    if is_export(args.model):
        check_export_arguments(args)
        files = export_inputs(args.inputs)  # files, folders and glob patterns, gs:// too
        refuse_output_among_inputs(args.output, files)
        used: set[str] = set()
        return run_export(args, files, [_unique_stem(path, used) for path in files])
    if args.runner == "beam":
        raise ValueError(
            f"--runner beam: {args.model} is not an export; batch prediction on Beam runs an "
            "exported SavedModel (keras-dense export, then --model EXPORT_DIR)"
        )
    task_name = stored_card(args.model)[0]
    # Before the defaults are filled in; a model without a card is refused by the check below.
    args.tile_memory = tile_memory(args, get_task(task_name)) if task_name else None
    _OPTIONS.check(args, task=task_name)
    if args.tile_size is not None and args.tile_size < 1:
        raise ValueError(f"--tile-size {args.tile_size}: expected a positive integer")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(
            f"--score-threshold {args.score_threshold}: expected a probability in [0, 1]"
        )
    slice_options(args)  # a bad --slice, --overlap or --merge fails before any work
    max_memory = parse_memory(args.max_memory, "--max-memory")
    parse_tta(args.tta, args.scales)  # a bad --tta or --scales fails before any work
    if not args.inputs and not args.data:
        raise ValueError("nothing to predict: give image files or folders, or --data PATTERN")
    files = expand_inputs(args.inputs)
    if args.inputs and not files:
        raise BadInputError(
            ", ".join(args.inputs),
            "no image files found (expected .jpg, .jpeg, .png, .bmp, .tif, .ppm or .webp)",
        )
    refuse_output_among_inputs(args.output, files)
    model, card = load_model_with_card(args.model)
    task = get_task(card["task"])
    # The fields every card shares, once; the task checks the class count against its model.
    check_card_fields(card, source=model_card_path(args.model))
    os.makedirs(args.output, exist_ok=True)
    failed, used, total = [], set(), len(files)
    for path in files:
        try:
            written = predict_file(model, card, path, args.output, _unique_stem(path, used), args)
        except BadInputError as err:
            print(f"keras-dense predict: error: {err}", file=sys.stderr)
            failed.append(path)
            continue
        print(f"{path} -> {', '.join(os.path.basename(w) for w in written)}")
    if args.data:
        for index, (name, source_id, rgb) in enumerate(_records(args.data, card)):
            total += 1
            try:
                plan = task.plan_prediction(model, card, *rgb.shape[:2], max_memory, _options(args))
                stem = _unique_stem(_record_file_name(source_id, index), used)
                written = predict_image(model, card, rgb, args.output, stem, args, plan)
            except ValueError as err:
                print(f"keras-dense predict: error: {name}: {err}", file=sys.stderr)
                failed.append(name)
                continue
            print(f"{name} -> {', '.join(os.path.basename(w) for w in written)}")
    print(f"predicted {total - len(failed)} of {total} inputs into {args.output}")
    if failed:
        print(
            f"keras-dense predict: {len(failed)} input(s) failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        return 1
    return 0
