"""`keras-dense tune-threshold --model CLS.keras --data VAL_PATTERN [--crf] [--grid T,...]`:
the background threshold of a weakly supervised classifier's pseudo-labels, chosen on
held-out masks and written into its model card."""

from __future__ import annotations

import argparse
import json

from keras_dense.commands.applicable_options import OptionScope, refuse_task

# What the model's task must support.
_NEEDS = OptionScope("model", "--model", needs=("class_maps",))


def register(sub) -> None:
    """Adds the `tune-threshold` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "tune-threshold",
        help="choose a classifier's pseudo-label background threshold on held-out masks; "
        "writes it into the card",
        description="Pseudo-labels every record of --data (held-out shards with true masks, "
        "class list starting with 'background') at each threshold of the grid and keeps the "
        "threshold with the highest mean IoU against the masks (the smallest on ties). It goes "
        "into the model card as background_threshold (with --crf: background_threshold_crf, "
        "scored on CRF-refined pseudo-masks with the card's CRF parameters), which "
        "keras-dense pseudo-label then uses by default.",
    )
    parser.add_argument("--model", required=True, help="a wsl_classifier (X.keras, card X.json)")
    parser.add_argument("--data", required=True, help="glob pattern of held-out TFRecord shards")
    parser.add_argument("--crf", action="store_true", help="score CRF-refined pseudo-masks")
    parser.add_argument(
        "--grid",
        default=None,
        metavar="T1,T2,...",
        help="thresholds to try, each in [0, 1] (default 0.05, 0.10, ..., 0.95)",
    )
    parser.add_argument(
        "--crf-parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --crf: a dense_crf parameter (theta_alpha, theta_beta, theta_gamma, "
        "spatial_weight, bilateral_weight, num_iterations) over the card's 'crf', also written "
        "into it; e.g. theta_alpha=15 theta_beta=20 theta_gamma=1 for 64-px images; repeatable",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="score the first N records only"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the result without writing the card"
    )
    parser.add_argument(
        "--max-memory",
        default="2GiB",
        help="memory one image's class maps may take (e.g. 2GiB, the default): larger images "
        "are refused, naming the record",
    )
    parser.set_defaults(run=run)


def parse_thresholds(text: str | None) -> tuple[float, ...]:
    """`"0.1,0.2"` -> `(0.1, 0.2)`; None -> the default grid.

    Raises:
        ValueError: A value is not a number in [0, 1].
    """
    from keras_dense.evaluation.threshold_tuning import THRESHOLD_GRID

    if text is None:
        return THRESHOLD_GRID
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--grid {text}: {item!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--grid {text}: {value:g} is outside [0, 1]")
        values.append(value)
    return tuple(values)


def parse_crf_parameters(items: list[str]) -> dict:
    """`["theta_alpha=15", ...]` -> `{"theta_alpha": 15.0, ...}`, checked by name and type.

    Raises:
        ValueError: An item is not KEY=NUMBER or names no dense_crf parameter.
    """
    from keras_dense.crf.card_parameters import CRF_PARAMETERS

    parameters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in CRF_PARAMETERS:
            raise ValueError(
                f"--crf-parameter {item}: expected KEY=VALUE with KEY one of "
                f"{sorted(CRF_PARAMETERS)}"
            )
        try:
            parameters[key] = CRF_PARAMETERS[key](value)
        except ValueError:
            raise ValueError(f"--crf-parameter {item}: {value!r} is not a number") from None
    return parameters


def run(args: argparse.Namespace) -> int:
    """Chooses the threshold, prints the curve and updates the card."""
    from keras_dense.crf.card_parameters import card_crf_parameters
    from keras_dense.evaluation.threshold_tuning import choose_background_threshold
    from keras_dense.localization import BACKGROUND_THRESHOLD_KEY, CRF_BACKGROUND_THRESHOLD_KEY
    from keras_dense.signatures.memory_budget import parse_memory
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.utils.card_fields import check_card_fields
    from keras_dense.utils.model_card import model_card_path, write_model_card

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: expected a positive integer")
    grid = parse_thresholds(args.grid)
    overrides = parse_crf_parameters(args.crf_parameter)
    if overrides and not args.crf:
        raise ValueError("--crf-parameter applies with --crf only")
    max_memory = parse_memory(args.max_memory, "--max-memory")
    model, card = load_model_with_card(args.model)
    refuse_task("tune-threshold", card["task"], _NEEDS, f" (--model {args.model})")
    check_card_fields(card, int(model.outputs[0].shape[-1]), model_card_path(args.model))
    crf_parameters = {**card_crf_parameters(card), **overrides} if args.crf else None
    choice = choose_background_threshold(
        model, card, args.data, grid, args.crf, crf_parameters, args.max_images, max_memory
    )
    curve = ", ".join(f"{t:g}: {v:.4f}" for t, v in choice.mean_iou_by_threshold.items())
    print(f"pseudo-mask mIoU by threshold over {choice.images} images: {curve}")
    print(
        f"best background threshold {choice.threshold:g} (mIoU {choice.mean_iou:.4f}, "
        f"crf: {'on' if args.crf else 'off'})"
    )
    if args.dry_run:
        return 0
    path = model_card_path(args.model)
    with open(path) as f:
        stored = json.load(f)
    key = CRF_BACKGROUND_THRESHOLD_KEY if args.crf else BACKGROUND_THRESHOLD_KEY
    if overrides:
        stored["crf"] = {**(stored.get("crf") or {}), **overrides}
    stored[key] = choice.threshold
    stored[f"{key}_search"] = {
        "tuned_on": args.data,
        "images": choice.images,
        "mean_iou": choice.mean_iou,
        "mean_iou_by_threshold": {f"{t:g}": v for t, v in choice.mean_iou_by_threshold.items()},
        "crf_parameters": crf_parameters,
    }
    write_model_card(args.model, stored)
    print(f"wrote {key!r} into {path}")
    return 0
