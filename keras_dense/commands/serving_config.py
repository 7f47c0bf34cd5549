"""`keras-dense serving-config --models saved_models --output saved_models`."""

from __future__ import annotations

import argparse
import sys

from keras_dense.serving.configs import (
    DEFAULT_BASE_PATH,
    PROMETHEUS_PATH,
    BatchingOptions,
    write_serving_configs,
)


def register(subparsers) -> None:
    """Adds the `serving-config` command to the `keras-dense` parser."""
    parser = subparsers.add_parser(
        "serving-config",
        help="write TF Serving's models.config, batching.config and monitoring.config",
        description="Lists every exported model (NAME/<version>/) in models.config with its "
        "two newest versions labelled stable (older) and canary (newest), and writes "
        "batching and Prometheus monitoring configs; each file is validated by parsing.",
    )
    parser.add_argument("--models", required=True, help="folder of exported models")
    parser.add_argument("--output", required=True, help="folder to write the configs to")
    parser.add_argument(
        "--base-path",
        default=DEFAULT_BASE_PATH,
        help="the models folder as the server sees it (default /models, the docker mount)",
    )
    defaults = BatchingOptions()
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--batch-timeout-micros", type=int, default=defaults.batch_timeout_micros)
    parser.add_argument("--max-enqueued-batches", type=int, default=defaults.max_enqueued_batches)
    parser.add_argument(
        "--num-batch-threads", type=int, default=None, help="default: the CPU count"
    )
    parser.add_argument("--prometheus-path", default=PROMETHEUS_PATH)
    parser.add_argument(
        "--allow-different-model",
        action="store_true",
        help="label a model's two newest versions stable and canary even when they serve "
        "different models (another task, class list or signatures)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Runs `keras-dense serving-config`."""
    for flag, value in (
        ("--max-batch-size", args.max_batch_size),
        ("--batch-timeout-micros", args.batch_timeout_micros),
        ("--max-enqueued-batches", args.max_enqueued_batches),
        ("--num-batch-threads", args.num_batch_threads),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: expected a positive integer")
    if not args.prometheus_path.startswith("/"):
        raise ValueError(
            f"--prometheus-path {args.prometheus_path}: expected a URL path starting with '/' "
            f"(default {PROMETHEUS_PATH})"
        )
    batching = BatchingOptions(
        max_batch_size=args.max_batch_size,
        batch_timeout_micros=args.batch_timeout_micros,
        max_enqueued_batches=args.max_enqueued_batches,
        num_batch_threads=args.num_batch_threads,
    )
    written = write_serving_configs(
        args.models,
        args.output,
        args.base_path,
        batching,
        args.prometheus_path,
        args.allow_different_model,
    )
    for note in written.notes:
        print(f"keras-dense serving-config: note: {note}", file=sys.stderr)
    for name, versions in written.models.items():
        print(f"{name}: versions {versions}")
    print(f"wrote {written.models_config}, {written.batching_config}, {written.monitoring_config}")
    if not written.models_config_validated:
        print(
            "warning: tensorflow-serving-api is not installed, models.config was not validated "
            "(pip install 'keras-dense[serving]')",
            file=sys.stderr,
        )
    return 0
