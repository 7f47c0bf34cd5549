"""`keras-dense tune-crf --model M --data VAL_PATTERN [--grid KEY=V,...] [--max-images N]`."""

from __future__ import annotations

import argparse
import json

from keras_dense.commands.applicable_options import OptionScope

# What the model's task must support.
_NEEDS = OptionScope("model", "--model", needs=("crf",))


def register(sub) -> None:
    """Adds the `tune-crf` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "tune-crf",
        help="tune the dense-CRF post-processing by validation mIoU; writes it into the card",
        description="Computes each validation image's softmax once, then scores a coarse grid "
        "of theta_alpha, theta_beta, bilateral_weight and spatial_weight (plus DeepLab's "
        "defaults) and a finer grid around the best by mean IoU. The best values go into the "
        "model card's 'crf' (written atomically), which evaluate --crf and predict --crf then "
        "use. Prints the mIoU without CRF, with the default CRF and with the tuned one.",
    )
    parser.add_argument("--model", required=True, help="the saved segmenter (X.keras, card X.json)")
    parser.add_argument("--data", required=True, help="glob pattern of validation TFRecord shards")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="coarse values of one parameter (theta_alpha, theta_beta, theta_gamma, "
        "bilateral_weight, spatial_weight), replacing the default list; repeatable",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="tune on the first N records only"
    )
    parser.add_argument(
        "--num-iterations", type=int, default=10, help="mean-field iterations (default 10)"
    )
    parser.add_argument(
        "--coarse-only", action="store_true", help="skip the fine grid around the best point"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the result without writing the card"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Tunes, prints the three mIoUs and the parameters, and updates the card."""
    from keras_dense.commands.applicable_options import refuse_task, stored_card
    from keras_dense.crf.card_parameters import CARD_KEY
    from keras_dense.evaluation.crf_tuning import parse_grid, tune_crf
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.utils.model_card import model_card_path, write_model_card

    if args.num_iterations < 1:
        raise ValueError(f"--num-iterations {args.num_iterations}: expected a positive integer")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: expected a positive integer")
    grid = parse_grid(args.grid)
    task = stored_card(args.model)[0]  # the card only, before the model is loaded
    if task is not None:
        refuse_task("tune-crf", task, _NEEDS, f" (--model {args.model})")
    model, card = load_model_with_card(args.model)
    result = tune_crf(
        model,
        card,
        args.data,
        grid=grid,
        max_images=args.max_images,
        num_iterations=args.num_iterations,
        fine=not args.coarse_only,
        progress=True,
    )
    print(
        f"mIoU over {result.images} images: no CRF {result.baseline_mean_iou:.4f}, default CRF "
        f"{result.default_mean_iou:.4f}, tuned CRF {result.mean_iou:.4f} "
        f"({result.evaluated} parameter sets)"
    )
    print("tuned: " + ", ".join(f"{k}={v:g}" for k, v in result.parameters.items()))
    if args.dry_run:
        return 0
    # The card as stored (not the loader's filled-in defaults), with only its 'crf' replaced.
    path = model_card_path(args.model)
    with open(path) as f:
        stored = json.load(f)
    stored[CARD_KEY] = {
        **result.parameters,
        "mean_iou": result.mean_iou,
        "baseline_mean_iou": result.baseline_mean_iou,
        "default_crf_mean_iou": result.default_mean_iou,
        "tuned_on": args.data,
        "images": result.images,
    }
    write_model_card(args.model, stored)
    print(f"wrote {CARD_KEY!r} into {path}")
    return 0
