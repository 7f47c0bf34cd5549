"""`keras-dense train RECIPE.toml [--set key=value ...] [--output DIR]`."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    """Adds the `train` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "train",
        help="train a model from a TOML recipe",
        description="Trains the model of a TOML recipe (see apps/*.toml). Running the same "
        "command again after an interruption resumes after the last finished epoch.",
    )
    parser.add_argument("recipe", help="the recipe, e.g. apps/shapes_demo.toml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set training.epochs=3 --set optimizer.name=adamw "
        "(values are TOML; repeatable)",
    )
    parser.add_argument(
        "--output",
        help="output folder (default: runs/<recipe name>)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Loads the recipe, trains it and prints a summary."""
    from keras_dense.training import load_config, train

    recipe = load_config(args.recipe, args.overrides)  # parsed and checked once
    output = args.output or os.path.join("runs", os.path.splitext(os.path.basename(args.recipe))[0])
    summary = train(recipe, output)
    best = summary["best"]
    best_text = "n/a" if best is None else f"{best:.4f}"
    print(
        f"trained {summary['epochs']} epochs in {summary['seconds']:.1f} s; "
        f"best {summary['monitor']} = {best_text}; model: {summary['model']}"
    )
    return 0
