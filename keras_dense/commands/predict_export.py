"""`keras-dense predict --model EXPORT_DIR`: an exported SavedModel over image files.

Locally, or on Apache Beam with `--runner beam` (RunInference, `keras_dense.prediction.
beam_prediction`); both write the same files per image (`keras_dense.prediction.
export_prediction`) and list the inputs that failed in `OUTPUT/errors.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# What an export bakes in (or cannot do): these options are refused with one.
_MODEL_OPTIONS = ("data", "max_memory", "tiled", "tile_size", "tta", "scales", "score_threshold")


def check_export_arguments(args: argparse.Namespace) -> None:
    """Refuses the options that apply to a `.keras` model only, naming them."""
    given = [name for name in _MODEL_OPTIONS if getattr(args, name, None) not in (None, False)]
    if args.crf:
        given.append("crf")
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(
            f"{options}: not for an export ({args.model} is a SavedModel, which bakes in its "
            "sizes, test-time augmentation and thresholds when exported); leave them out, or "
            "predict with the .keras model"
        )
    if not args.inputs:
        raise ValueError("nothing to predict: give image files or folders")


def export_inputs(inputs: list[str]) -> list[str]:
    """Image files from files, folders (their images) and glob patterns, on any gfile path.

    Raises:
        BadInputError: A pattern or folder that holds no image, naming it.
    """
    from keras_dense.data.errors import BadInputError
    from keras_dense.data.image_io import list_images
    from keras_dense.data.storage import glob_files, is_folder

    files = []
    for item in inputs:
        if is_folder(item):
            found = list_images(item)
        elif any(char in item for char in "*?["):
            found = glob_files(item)
        else:
            found = [item]
        if not found:
            raise BadInputError(item, "matches no image file")
        files.extend(found)
    return files


def run_export(args: argparse.Namespace, files: list[str], stems: list[str]) -> int:
    """Predicts `files` with the export `args.model` into `args.output`; 1 if any failed."""
    from keras_dense.prediction.beam_prediction import DEAD_LETTERS, predict_export_beam, write_file
    from keras_dense.prediction.export_prediction import ServingModel, predict_file

    if args.runner == "beam":
        failures = predict_export_beam(args.model, files, stems, args.output, args.beam_option)
    else:
        model = ServingModel(args.model)
        os.makedirs(args.output, exist_ok=True)
        failures = []
        for path, stem in zip(files, stems):
            try:
                written = predict_file(model, path, stem)
            except ValueError as err:  # BadInputError names the file
                failures.append({"input": path, "reason": getattr(err, "reason", str(err))})
                print(f"keras-dense predict: error: {err}", file=sys.stderr)
                continue
            for name, data in written.items():
                write_file(os.path.join(args.output, name), data)
            print(f"{path} -> {', '.join(sorted(written))}")
        if failures:
            lines = "".join(json.dumps(f) + "\n" for f in failures)
            write_file(os.path.join(args.output, DEAD_LETTERS), lines.encode())
    print(f"predicted {len(files) - len(failures)} of {len(files)} inputs into {args.output}")
    if failures:
        print(
            f"keras-dense predict: {len(failures)} input(s) failed, listed in "
            f"{os.path.join(args.output, 'errors.jsonl')}",
            file=sys.stderr,
        )
        return 1
    return 0
