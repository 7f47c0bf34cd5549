"""TF Serving config files for a folder of exported models (`saved_models/NAME/<version>/`).

- `models.config` (`--model_config_file`, `ModelServerConfig`): one `model_config_list`
  entry per model, serving its two newest versions (`specific` version policy) labelled
  `stable` (the older of the two) and `canary` (the newest); with a single version both labels
  name it. Clients address a label as `/v1/models/NAME/labels/stable:predict` (REST) or
  `model_spec.version_label` (gRPC). TF Serving only accepts labels of versions it has
  loaded, unless started with `--allow_version_labels_for_unavailable_models=true`, which
  the labels of a config read at startup need.
- `batching.config` (`--batching_parameters_file`, `BatchingParameters`).
- `monitoring.config` (`--monitoring_config_file`, `MonitoringConfig`): Prometheus metrics
  on the REST port at `PROMETHEUS_PATH`.

Each file is checked by parsing it with the TF Serving protos (`tensorflow-serving-api` for
`models.config`, `keras_dense.serving.proto_schemas` for the other two).
"""

from __future__ import annotations

import dataclasses
import json
import os

from google.protobuf import text_format

from keras_dense.export.served_models import CARD_ASSET, DifferentModelError
from keras_dense.export.versions import check_model_name
from keras_dense.serving.proto_schemas import batching_parameters_class, monitoring_config_class
from keras_dense.utils.files import atomic_write_bytes

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
MONITORING_CONFIG = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_BASE_PATH = "/models"  # where the docker command mounts saved_models


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Server-side batching (`BatchingParameters`).

    Attributes:
        max_batch_size: Largest batch the server forms (requests are merged up to it).
        batch_timeout_micros: Longest wait for a batch to fill (microseconds).
        max_enqueued_batches: Queue length, in batches, before requests are refused.
        num_batch_threads: Threads running batches (default: the machine's CPU count).
    """

    max_batch_size: int = 8
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 64
    num_batch_threads: int | None = None

    def allowed_batch_sizes(self) -> list[int]:
        """Powers of two below `max_batch_size`, then `max_batch_size` itself."""
        sizes = []
        size = 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        return [*sizes, self.max_batch_size]


# TF Serving's versions are int64.
MAX_VERSION = 2**63 - 1


def _model_versions(model_dir: str, notes: list[str]) -> list[int]:
    """The served versions of one model folder; what is left out is described in `notes`.

    Raises:
        ValueError: Two folders name one version (`7` and `007`), or a version is beyond int64.
    """
    versions: dict[int, str] = {}
    for entry in sorted(os.scandir(model_dir), key=lambda e: e.name):
        path = os.path.join(model_dir, entry.name)
        if entry.name.startswith(".") or ".tmp-" in entry.name:
            continue  # hidden, or an export in progress (keras_dense.export.versions)
        if not entry.name.isdigit():
            if entry.is_dir():
                notes.append(f"{path}: not a version number, left out (TF Serving ignores it)")
            continue
        version = int(entry.name)
        if version > MAX_VERSION:
            raise ValueError(
                f"{path}: version {version} is beyond TF Serving's largest version {MAX_VERSION} "
                "(int64); rename the folder"
            )
        if version in versions:
            raise ValueError(
                f"{model_dir}: the folders {versions[version]!r} and {entry.name!r} both name "
                f"version {version}; TF Serving would load one of them: remove or rename the other"
            )
        if not entry.is_dir():
            notes.append(f"{path}: not a folder, left out")
            continue
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            notes.append(
                f"{path}: no saved_model.pb (an export that did not finish, or a damaged one), "
                "left out"
            )
            continue
        versions[version] = entry.name
    return sorted(versions)


def scan_models(models_dir: str | os.PathLike) -> tuple[dict[str, list[int]], list[str]]:
    """Exported models under `models_dir` and what was left out.

    A model is a sub-folder with at least one integer-named version holding `saved_model.pb`;
    its name must be one TF Serving serves (`keras_dense.export.versions.check_model_name`).

    Returns:
        `({name: sorted versions}, notes)`: one note per folder left out (a version without
        `saved_model.pb`, a folder that is not a version, a model folder without versions).

    Raises:
        FileNotFoundError: `models_dir` does not exist.
        ValueError: A model's name is unusable, two folders name one version, or a version is
            beyond int64.
    """
    if not os.path.isdir(models_dir):
        raise FileNotFoundError(f"{models_dir}: no such folder of exported models")
    found, notes = {}, []
    for entry in sorted(os.scandir(models_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        path = os.path.join(os.fspath(models_dir), entry.name)
        versions = _model_versions(path, notes)
        if not versions:
            notes.append(f"{path}: no version folder with saved_model.pb, left out")
            continue
        try:
            check_model_name(entry.name)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; rename the folder") from None
        found[entry.name] = versions
    return found, notes


def find_models(models_dir: str | os.PathLike) -> dict[str, list[int]]:
    """Exported models under `models_dir`: `{name: sorted versions}` (see `scan_models`)."""
    return scan_models(models_dir)[0]


def _not_one_model(models_dir: str) -> str:
    """The message for a folder without models, with a hint when it is one model's folder."""
    versions = sorted(
        int(name)
        for name in os.listdir(models_dir)
        if name.isdigit() and os.path.isfile(os.path.join(models_dir, name, "saved_model.pb"))
    )
    reason = "no exported model found (expected NAME/<version>/saved_model.pb)"
    if not versions:
        return f"{models_dir}: {reason}"
    parent = os.path.dirname(os.path.abspath(models_dir))
    return (
        f"{models_dir}: {reason}; the folder holds versions {versions} of one model: pass the "
        f"folder above it, {parent}"
    )


def saved_model_problem(version_dir: str) -> str | None:
    """Why a version's `saved_model.pb` is not a SavedModel TF Serving can load, or None."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(version_dir, "saved_model.pb")
    try:
        with open(path, "rb") as f:
            saved_model_pb2.SavedModel().ParseFromString(f.read())
    except (OSError, DecodeError) as err:
        return (
            f"{path}: cannot be read as a SavedModel ({err}): a damaged or unfinished export; "
            "remove the version or export it again"
        )
    return None


def _served_model(version_dir: str) -> tuple | None:
    """`(task, classes)` from a version's keras-dense model card, None without a card."""
    try:
        with open(os.path.join(version_dir, CARD_ASSET)) as f:
            card = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(card, dict) or card.get("task") is None:
        return None
    classes = card.get("classes")
    return card["task"], list(classes) if isinstance(classes, list) else classes


def _served_differences(old: tuple, new: tuple) -> list[str]:
    """What differs between two versions that both have a keras-dense card: task, classes.

    (Their signatures were compared by `keras-dense export` when the newer was added.)
    """
    found = []
    if old[0] != new[0]:
        found.append(f"task {old[0]!r} and {new[0]!r}")
    if old[1] != new[1]:
        found.append(f"classes {old[1]} and {new[1]}")
    return found


def check_labelled_versions(
    models_dir: str | os.PathLike,
    models: dict[str, list[int]],
    allow_different_model: bool = False,
) -> None:
    """Refuses served versions that are not SavedModels, or stable and canary that differ.

    Clients take the two labels of one name for the same model (retrained); a folder where
    a U-Net and a detector follow each other would be served as one. Versions are compared by
    their model cards (`assets.extra/model_card.json`: task and classes); versions without a
    keras-dense card are not compared, nor any with `allow_different_model`.

    Raises:
        ValueError: A served version's `saved_model.pb` cannot be parsed (naming it).
        DifferentModelError: Naming the folder, the versions and what differs (a ValueError).
    """
    for name, versions in models.items():
        stable, canary = stable_and_canary(versions)
        folder = os.path.join(os.fspath(models_dir), name)
        for version in sorted({stable, canary}):
            problem = saved_model_problem(os.path.join(folder, str(version)))
            if problem:
                raise ValueError(problem)
        if stable == canary or allow_different_model:
            continue
        old = _served_model(os.path.join(folder, str(stable)))
        new = _served_model(os.path.join(folder, str(canary)))
        if old is None or new is None:
            continue
        found = _served_differences(old, new)
        if found:
            raise DifferentModelError(
                f"{folder}: version {stable} (stable) and version {canary} (canary) serve "
                f"different models: {'; '.join(found)}. Clients take the labels of one name for "
                "one model: export the other model under another name, or pass "
                "--allow-different-model to label them anyway"
            )


def stable_and_canary(versions: list[int]) -> tuple[int, int]:
    """`(stable, canary)`: the older and the newer of the two newest versions."""
    if not versions:
        raise ValueError("versions: expected at least one version")
    newest = sorted(versions)[-2:]
    return newest[0], newest[-1]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def models_config_text(models: dict[str, list[int]], base_path: str) -> str:
    """The `models.config` text (ModelServerConfig).

    Args:
        models: `{name: versions}`, e.g. from `find_models`.
        base_path: The folder holding the models as the server sees it (`/models` in the
            docker command); each model's base_path is `base_path/NAME`.

    Returns:
        The text-format config.
    """
    if not models:
        raise ValueError("models: no exported model found (expected NAME/<version>/ folders)")
    lines = ["model_config_list {"]
    for name, versions in sorted(models.items()):
        stable, canary = stable_and_canary(versions)
        served = sorted({stable, canary})
        lines += [
            "  config {",
            f"    name: {_quote(name)}",
            f"    base_path: {_quote(base_path.rstrip('/') + '/' + name)}",
            '    model_platform: "tensorflow"',
            "    model_version_policy {",
            "      specific {",
            *(f"        versions: {v}" for v in served),
            "      }",
            "    }",
            f'    version_labels {{ key: "stable" value: {stable} }}',
            f'    version_labels {{ key: "canary" value: {canary} }}',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def batching_config_text(options: BatchingOptions) -> str:
    """The `batching.config` text (BatchingParameters)."""
    threads = options.num_batch_threads
    if threads is None:
        threads = os.cpu_count() or 1
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches"):
        value = getattr(options, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field}={value!r}: expected a positive integer")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"num_batch_threads={threads!r}: expected a positive integer")
    lines = [
        f"max_batch_size {{ value: {options.max_batch_size} }}",
        f"batch_timeout_micros {{ value: {options.batch_timeout_micros} }}",
        f"max_enqueued_batches {{ value: {options.max_enqueued_batches} }}",
        f"num_batch_threads {{ value: {threads} }}",
        *(f"allowed_batch_sizes: {size}" for size in options.allowed_batch_sizes()),
        # Detection requests carry proposal arrays of different lengths: pad them to merge.
        "pad_variable_length_inputs: true",
    ]
    return "\n".join(lines) + "\n"


def monitoring_config_text(path: str = PROMETHEUS_PATH) -> str:
    """The `monitoring.config` text (MonitoringConfig with Prometheus enabled).

    Raises:
        ValueError: `path` is not a URL path (starting with '/').
    """
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError(
            f"prometheus path {path!r}: expected a URL path starting with '/' and without spaces "
            f"(e.g. {PROMETHEUS_PATH})"
        )
    return f"prometheus_config {{\n  enable: true\n  path: {_quote(path)}\n}}\n"


def parse_models_config(text: str):
    """Parses `models.config` text into a `ModelServerConfig` and checks the labels.

    Raises:
        ImportError: tensorflow-serving-api is not installed.
        text_format.ParseError: Not a valid ModelServerConfig.
        ValueError: A label names a version the policy does not serve.
    """
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    for model in config.model_config_list.config:
        served = set(model.model_version_policy.specific.versions)
        for label, version in model.version_labels.items():
            if served and version not in served:
                raise ValueError(f"model {model.name!r}: label {label!r} -> unserved {version}")
    return config


def parse_batching_config(text: str):
    """Parses `batching.config` text into `BatchingParameters` and checks its rules.

    Raises:
        text_format.ParseError: Not valid BatchingParameters.
        ValueError: `allowed_batch_sizes` not increasing or not ending at `max_batch_size`.
    """
    params = text_format.Parse(text, batching_parameters_class()())
    sizes = list(params.allowed_batch_sizes)
    if sizes and (
        sizes != sorted(set(sizes)) or sizes[-1] != params.max_batch_size.value or sizes[0] < 1
    ):
        raise ValueError(
            f"allowed_batch_sizes={sizes}: must increase and end at max_batch_size "
            f"({params.max_batch_size.value})"
        )
    return params


def parse_monitoring_config(text: str):
    """Parses `monitoring.config` text into `MonitoringConfig`."""
    return text_format.Parse(text, monitoring_config_class()())


@dataclasses.dataclass(frozen=True)
class ServingConfigs:
    """Paths written by `write_serving_configs`, and the models listed."""

    models_config: str
    batching_config: str
    monitoring_config: str
    models: dict
    models_config_validated: bool
    notes: tuple[str, ...] = ()


def write_serving_configs(
    models_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    base_path: str = DEFAULT_BASE_PATH,
    batching: BatchingOptions | None = None,
    prometheus_path: str = PROMETHEUS_PATH,
    allow_different_model: bool = False,
) -> ServingConfigs:
    """Writes `models.config`, `batching.config` and `monitoring.config`, each validated.

    Args:
        models_dir: Folder of exported models (`NAME/<version>/`).
        output_dir: Where to write the three files (created if needed).
        base_path: `models_dir` as the server sees it (`/models` for the docker command;
            an absolute local path for a local `tensorflow_model_server`).
        batching: Batching options (defaults: `BatchingOptions()`).
        prometheus_path: URL path of the Prometheus metrics.
        allow_different_model: Label versions that serve different models (another task,
            class list or signatures) stable and canary all the same.

    Returns:
        A `ServingConfigs`. `models_config_validated` is False when tensorflow-serving-api is
        not installed (the file is then written unchecked); `notes` name the folders left out.

    Raises:
        ValueError: No model is found (naming the folder, with a hint when it is one model's
            folder), a model folder is unusable (see `scan_models`), a served version is not a
            SavedModel, or its stable and canary versions serve different models
            (`check_labelled_versions`).
    """
    models, notes = scan_models(models_dir)
    if not models:
        raise ValueError(_not_one_model(os.fspath(models_dir)))
    check_labelled_versions(models_dir, models, allow_different_model)
    texts = {
        MODELS_CONFIG: models_config_text(models, base_path),
        BATCHING_CONFIG: batching_config_text(batching or BatchingOptions()),
        MONITORING_CONFIG: monitoring_config_text(prometheus_path),
    }
    parse_batching_config(texts[BATCHING_CONFIG])
    parse_monitoring_config(texts[MONITORING_CONFIG])
    try:
        parse_models_config(texts[MODELS_CONFIG])
        validated = True
    except ImportError:
        validated = False
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for file_name, text in texts.items():
        paths[file_name] = os.path.join(os.fspath(output_dir), file_name)
        atomic_write_bytes(paths[file_name], text.encode())
    return ServingConfigs(
        paths[MODELS_CONFIG],
        paths[BATCHING_CONFIG],
        paths[MONITORING_CONFIG],
        models,
        validated,
        tuple(notes),
    )
