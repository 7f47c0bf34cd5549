"""Apache Beam pipeline options from `--beam-option KEY=VALUE` pairs, and the local runner.

Beam is imported only here and in the Beam paths (the optional `beam` extra). Without a
`runner` option a pipeline runs on Beam's FnApiRunner, pinned explicitly: Beam's default
DirectRunner first tries its Prism runner, which downloads a binary at run time and fails on a
machine without network. Locally the FnApiRunner uses `direct_num_workers` worker processes
(`direct_running_mode=multi_processing`, default 2 here). Any other runner (`runner=DataflowRunner`
with `project=...`, `region=...`, `temp_location=gs://...`; `runner=FlinkRunner`;
`runner=SparkRunner`) is passed through to Beam as given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

LOCAL_WORKERS = 2
RUNNERS = ("local", "beam")


def require_beam():
    """Imports `apache_beam`, or raises ImportError saying which extra installs it."""
    try:
        import apache_beam
    except ImportError as err:
        raise ImportError(
            "the Beam runner needs Apache Beam: pip install 'keras_dense[beam]' "
            "(apache-beam >= 2.69)"
        ) from err
    return apache_beam


def parse_beam_options(pairs: Sequence[str]) -> dict[str, str]:
    """`["direct_num_workers=4", ...]` as a dict, checked.

    Args:
        pairs: `KEY=VALUE` strings; keys may start with `--`. A key given twice keeps the last.

    Returns:
        `{key: value}` with the dashes removed from the keys.

    Raises:
        ValueError: A pair without `=` or with an empty key, naming it.
    """
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(
                f"--beam-option {pair!r}: expected KEY=VALUE, e.g. direct_num_workers=4 or "
                "runner=DataflowRunner"
            )
        options[key] = value
    return options


def pipeline_options(pairs: Sequence[str] = ()):
    """`PipelineOptions` for `pairs`, with the local defaults where no runner is named.

    Args:
        pairs: `KEY=VALUE` strings (see `parse_beam_options`).

    Returns:
        `(options, runner)`: Beam's `PipelineOptions`, and the runner object to pass to
        `beam.Pipeline` (the FnApiRunner when `pairs` names none; None to let Beam pick the
        named one).
    """
    require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    options = parse_beam_options(pairs)
    runner = None
    if "runner" not in options:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        options.setdefault("direct_num_workers", str(LOCAL_WORKERS))
        options.setdefault("direct_running_mode", "multi_processing")
        options.setdefault("default_sdk_harness_log_level", "WARNING")
        runner = FnApiRunner()
    # The driver's Beam INFO lines (one per worker and stage) would bury the converter's output.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    flags = [f"--{key}={value}" for key, value in options.items()]
    return PipelineOptions(flags), runner
