"""`export_saved_model`: a Keras model to a TF Serving version folder, checked and atomic.

The SavedModel holds two signatures (see `segmentation_signatures` / `detection_signatures`):
`serving_default` on encoded image bytes and `serving_tensor` on normalised float images.
Its `assets.extra/model_card.json` (ignored by TF Serving) is the model card plus what the
export decided (signatures, input geometry, versions of the tools).

Checks, in order: the task and classes must be those of the version the new one succeeds
(`keras_dense.export.served_models`, `DifferentModelError`); weights must be finite (else
`NonFiniteWeightsError` naming them); CRF and RoIPooling layers are switched to their pure-TF
implementations; once the signatures are built, they must still serve what that version
served; after writing, the op audit walks the graph and all nested functions (`OpAuditError`
on a non-stock op); the SavedModel is reloaded and its `serving_tensor` compared with the
in-memory model. Only then is the temporary folder renamed to `OUTPUT_ROOT/NAME/<version>`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf

from keras_dense.export.model_checks import check_finite_weights, portable_model
from keras_dense.export.op_audit import audit_saved_model
from keras_dense.export.served_models import (
    CARD_ASSET,
    ServedModel,
    check_same_model,
    describe_signatures,
    read_signatures,
)
from keras_dense.export.versions import atomic_version_dir, check_model_name, resolve_version
from keras_dense.signatures.memory_budget import PixelBudget
from keras_dense.tasks import ExportOptions, get_task, task_names
from keras_dense.tasks.capabilities import unsupported_error
from keras_dense.tasks.export_options import declared_fields, default_of
from keras_dense.tasks.model_loading import load_model_with_card
from keras_dense.utils.normalization import check_mode
from keras_dense.utils.version import __version__

_VERIFY_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_saved_model` wrote.

    Attributes:
        path: The version folder, `OUTPUT_ROOT/NAME/<version>`.
        name: The model name (TF Serving's `model_name`).
        version: The version number.
        task: "segmentation" or "detection".
        signatures: Signature names in the SavedModel.
        memory_budget: The pixel budget written into `serving_default`.
    """

    path: str
    name: str
    version: int
    task: str
    signatures: tuple[str, ...]
    memory_budget: PixelBudget | None = None


def _in_memory_card(model: keras.Model, card: dict | None) -> dict:
    """The card of an in-memory model: `card`'s fields over the defaults of its task.

    The task is `card["task"]` ("segmentation" when not given): it is never guessed from the
    model's inputs.
    """
    card = dict(card or {})
    task = get_task(card.get("task", "segmentation"))
    count = int(model.outputs[0].shape[-1]) - task.background_outputs
    full = {
        "task": task.name,
        "normalization": "caffe",
        "classes": [f"class_{i}" for i in range(count)],
        "ignore_label": 255,
        "input_channels": int(model.inputs[0].shape[-1]),
        "background_outputs": task.background_outputs,
        "builder": None,
        "builder_kwargs": {},
        "recipe": None,
        "keras_dense_version": None,
    }
    full.update(card)
    return full


def _load(model_or_path, card: dict | None) -> tuple[keras.Model, dict, str]:
    """The model, its card (file card, then `card` overrides) and a default name."""
    if isinstance(model_or_path, keras.Model):
        model = model_or_path
        full_card = _in_memory_card(model, card)
        default_name = model.name
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_or_path={path!r}: no such model file")
        # A card given by the caller that says how to feed the model stands in for the file's.
        required = not (card and "normalization" in card)
        model, full_card = load_model_with_card(path, required_card=required)
        full_card.update(card or {})
        default_name = os.path.splitext(os.path.basename(path))[0]
    else:
        raise ValueError(
            f"model_or_path: expected a keras.Model or a .keras path, got {type(model_or_path)}"
        )
    get_task(full_card["task"])  # a registered task, or a ValueError naming the known ones
    check_mode(full_card["normalization"])
    return model, full_card, default_name


def task_export_options(task, options: ExportOptions | None, values: dict) -> ExportOptions:
    """The task's export options: `options`, with `values` (field keywords) set on them.

    The one place where keyword arguments become the task's typed options (the
    `export_saved_model` keywords of before the options were typed keep working).

    Args:
        task: The model's `keras_dense.tasks.Task`.
        options: An instance of `task.export_options`, or None for its defaults.
        values: Field name -> value; None values are left at the default (`tta=None`: none).

    Raises:
        ValueError: Options of another task's class, or a field this task does not declare
            (the message names the tasks that do), or a bad value.
    """
    cls = task.export_options
    if options is None:
        options = cls()
    elif type(options) is not cls:
        raise ValueError(
            f"options: a {type(options).__name__}, expected the {task.name} task's {cls.__name__}"
        )
    declared = declared_fields(cls)
    given = {key: value for key, value in values.items() if value is not None}
    for key, value in list(given.items()):
        if key in declared:
            continue
        others = [declared_fields(get_task(n).export_options).get(key) for n in task_names()]
        if any(field is not None and default_of(field) == value for field in others):
            del given[key]  # another task's option at its default says nothing
            continue
        error = unsupported_error(
            key,
            task.name,
            lambda other, key=key: key in declared_fields(other.export_options),
            f"the export option {key}",
        )
        raise error or ValueError(f"{key}: not an export option of {task.name} models")
    return dataclasses.replace(options, **given)


def export_saved_model(
    model_or_path,
    output_root: str | os.PathLike,
    name: str | None = None,
    version: int | None = None,
    *,
    card: dict | None = None,
    options: ExportOptions | None = None,
    verify: bool = True,
    allow_different_model: bool = False,
    **option_values,
) -> ExportResult:
    """Exports a model as a TF Serving SavedModel version, `output_root/NAME/<version>/`.

    Args:
        model_or_path: A Keras model, or the path of a `.keras` file (its model card `X.json`
            beside it is read; see `keras_dense.utils.model_card`).
        output_root: Folder holding one sub-folder per served model (e.g. `saved_models`).
        name: Model name; default: the file's stem, or the model's name.
        version: Positive int; default: one more than the largest existing version. An
            existing version is never overwritten.
        card: Model card fields overriding the file's (or the defaults for an in-memory model:
            segmentation, "caffe" normalisation, classes `class_i`).
        options: The task's export options (an instance of its `Task.export_options`, e.g.
            `SegmentationExportOptions(batch_mode="pad")`); None: its defaults. Every task
            has `max_pixels` (largest image accepted) and `max_request_memory` (bytes one
            request may take: the export measures the model's memory per input pixel,
            `keras_dense.signatures.memory_budget`, and writes the resulting pixel budget
            into `serving_default`, which refuses larger requests before decoding them).
        verify: Reload the SavedModel and compare `serving_tensor` with the model.
        allow_different_model: Add the version although the version it succeeds (the newest
            below its number) serves another task, class list or signatures that drop or
            change what that version served (`keras_dense.export.served_models`); refused
            otherwise: the task and classes before anything is built, the signatures before
            anything is saved, and all again right before the rename, under the folder's lock
            (`keras_dense.export.versions`). A version chosen automatically that another
            export takes meanwhile becomes the next free number.
        **option_values: The fields of `options` as keywords instead (`batch_mode="pad"`,
            `tta=...`, `min_size=...`); a field the task does not declare is refused.

    Returns:
        An `ExportResult`.

    Raises:
        ValueError: A bad argument or card; `NonFiniteWeightsError`, `OpAuditError`,
            `VersionExistsError` and `DifferentModelError` are ValueErrors too.
        FileNotFoundError: `model_or_path` does not exist.
    """
    model, full_card, default_name = _load(model_or_path, card)
    task = get_task(full_card["task"])
    options = task_export_options(task, options, option_values)
    name = check_model_name(default_name if name is None else name)
    model_dir = os.path.join(os.fspath(output_root), name)
    chosen = version is None
    version = resolve_version(model_dir, version)
    identity = ServedModel(task.name, tuple(full_card["classes"]), {})
    check_same_model(model_dir, identity, version, allow_different_model)
    check_finite_weights(model)
    model = portable_model(model)
    signatures, serving, budget = task.export_signatures(model, full_card, options)
    identity = dataclasses.replace(identity, signatures=describe_signatures(signatures))
    check_same_model(model_dir, identity, version, allow_different_model)
    serving.update(
        batch_mode=getattr(options, "batch_mode", "per_image"),
        max_pixels=budget.max_image_pixels,
        memory_budget=dataclasses.asdict(budget),
        signatures=sorted(signatures),
    )

    module = tf.Module()
    module.model_variables = [getattr(v, "value", v) for v in model.variables]

    # Checked again right before the rename, as saved: a version may have landed meanwhile.
    def same_model(final_version: int) -> None:
        check_same_model(model_dir, identity, final_version, allow_different_model)

    with atomic_version_dir(model_dir, version, chosen, same_model) as pending:
        tmp = pending.path
        tf.saved_model.save(module, tmp, signatures=signatures)
        audit_saved_model(tmp)
        if verify:
            task.verify_export(tf.saved_model.load(tmp), model, serving, _VERIFY_TOLERANCE)
        identity = dataclasses.replace(identity, signatures=read_signatures(tmp))
        exported_card = dict(full_card)
        exported_card["serving"] = serving
        exported_card["exported_with"] = {
            "keras_dense": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, CARD_ASSET), "w") as f:
            json.dump(exported_card, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
    return ExportResult(
        path=os.path.join(model_dir, str(pending.version)),
        name=name,
        version=pending.version,
        task=task.name,
        signatures=tuple(sorted(signatures)),
        memory_budget=budget,
    )
