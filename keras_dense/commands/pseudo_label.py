"""`keras-dense pseudo-label --model CLS.keras --data PATTERN --output DIR/NAME [--crf]
[--background-threshold T]`: segmentation shards from a weakly supervised classifier."""

from __future__ import annotations

import argparse

from keras_dense.commands.applicable_options import OptionScope, refuse_task

# What the model's task must support.
_NEEDS = OptionScope("model", "--model", needs=("class_maps",))


def register(sub) -> None:
    """Adds the `pseudo-label` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "pseudo-label",
        help="write segmentation shards whose masks come from a classifier's class maps",
        description="For every record of --data, the class maps of the classes the image is "
        "labelled with (from its mask, boxes or image/class/label) give its mask: background "
        "where every labelled class's map is below T times its peak, else the class with the "
        "highest normalised map; absent classes never claim a pixel. With --crf the masks are "
        "refined by the dense CRF (the model card's parameters). Class ids: 0 background, "
        "then the classifier's classes.",
    )
    parser.add_argument("--model", required=True, help="a wsl_classifier (X.keras, card X.json)")
    parser.add_argument("--data", required=True, help="glob pattern of TFRecord shards")
    parser.add_argument("--output", required=True, help="DIR/NAME of the pseudo-label shards")
    parser.add_argument("--crf", action="store_true", help="dense-CRF refinement")
    parser.add_argument(
        "--background-threshold",
        type=float,
        default=None,
        help="fraction of each labelled class's peak below which a pixel is background "
        "(default: the model card's, as chosen by keras-dense tune-threshold: with --crf its "
        "background_threshold_crf, else its background_threshold; else 0.5)",
    )
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards (default 1)")
    parser.add_argument(
        "--max-memory",
        default="2GiB",
        help="memory one image's class maps may take (e.g. 2GiB, the default): larger images "
        "are refused, naming the record, before any is written",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Writes the pseudo-label shards and prints their summary."""
    from keras_dense.crf.card_parameters import card_crf_parameters
    from keras_dense.data.class_lists import check_classifier_classes
    from keras_dense.data.writer import summarize
    from keras_dense.localization import card_background_threshold, write_pseudo_labels
    from keras_dense.signatures.memory_budget import parse_memory
    from keras_dense.tasks.model_loading import load_model_with_card
    from keras_dense.utils.card_fields import check_card_fields
    from keras_dense.utils.model_card import model_card_path

    if args.num_shards < 1:
        raise ValueError(f"--num-shards {args.num_shards}: expected an integer >= 1")
    max_memory = parse_memory(args.max_memory, "--max-memory")
    model, card = load_model_with_card(args.model)
    refuse_task("pseudo-label", card["task"], _NEEDS, f" (--model {args.model})")
    check_card_fields(card, int(model.outputs[0].shape[-1]), model_card_path(args.model))
    check_classifier_classes(args.data, card)
    if args.background_threshold is not None:
        threshold, source = args.background_threshold, "--background-threshold"
    else:
        threshold, source = card_background_threshold(card, args.crf)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--background-threshold {threshold}: expected a value in [0, 1]")
    manifest = write_pseudo_labels(
        model,
        args.data,
        args.output,
        card["classes"],
        card.get("normalization"),
        threshold=threshold,
        crf=args.crf,
        crf_parameters=card_crf_parameters(card) if args.crf else None,
        provenance={"model": args.model, "threshold_from": source},
        ignore_label=255 if card.get("ignore_label") is None else int(card["ignore_label"]),
        num_shards=args.num_shards,
        max_memory=max_memory,
    )
    print(summarize(manifest))
    print(f"background threshold {threshold:g} ({source}), crf: {'on' if args.crf else 'off'}")
    print(f"manifest: {args.output}.json")
    return 0
