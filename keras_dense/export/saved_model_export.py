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
from keras_dense.signatures.batch_modes import check_batch_mode
from keras_dense.signatures.image_bytes import DEFAULT_MAX_PIXELS
from keras_dense.signatures.memory_budget import DEFAULT_MAX_REQUEST_MEMORY, PixelBudget
from keras_dense.tasks import ExportOptions, get_task
from keras_dense.tasks.model_loading import load_model_with_card
from keras_dense.utils.normalization import check_mode
from keras_dense.utils.tta import TestTimeAugmentation
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


def export_saved_model(
    model_or_path,
    output_root: str | os.PathLike,
    name: str | None = None,
    version: int | None = None,
    *,
    card: dict | None = None,
    batch_mode: str = "per_image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_request_memory: int = DEFAULT_MAX_REQUEST_MEMORY,
    min_size: int = 600,
    max_size: int = 1000,
    score_threshold: float = 0.05,
    nms_iou: float = 0.3,
    max_detections: int = 100,
    verify: bool = True,
    tta: TestTimeAugmentation | None = None,
    allow_different_model: bool = False,
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
        batch_mode: "per_image" or "pad", how batches of mixed image sizes are run
            (`keras_dense.signatures.batch_modes`).
        max_pixels: Largest image (height * width) the signature accepts.
        max_request_memory: Bytes one request may take: the export measures the model's
            memory per input pixel (`keras_dense.signatures.memory_budget`) and writes the
            resulting pixel budget (summed over a request's images) into `serving_default`,
            which refuses larger requests before decoding them.
        min_size: Detection: shorter image side fed to the model (the training scale).
        max_size: Detection: cap on the longer side.
        score_threshold: Detection: minimum class probability reported.
        nms_iou: Detection: per-class NMS IoU threshold.
        max_detections: Detection: detections per image (padded length of the outputs).
        verify: Reload the SavedModel and compare `serving_tensor` with the model.
        tta: Segmentation: test-time augmentation baked into the signatures (flip and
            scales, `keras_dense.signatures.segmentation_signatures`); the measured bytes per
            pixel are multiplied by `tta.pixel_factor`. None: none.
        allow_different_model: Add the version although the version it succeeds (the newest
            below its number) serves another task, class list or signatures that drop or
            change what that version served (`keras_dense.export.served_models`); refused
            otherwise: the task and classes before anything is built, the signatures before
            anything is saved, and all again right before the rename, under the folder's lock
            (`keras_dense.export.versions`). A version chosen automatically that another
            export takes meanwhile becomes the next free number.

    Returns:
        An `ExportResult`.

    Raises:
        ValueError: A bad argument or card; `NonFiniteWeightsError`, `OpAuditError`,
            `VersionExistsError` and `DifferentModelError` are ValueErrors too.
        FileNotFoundError: `model_or_path` does not exist.
    """
    check_batch_mode(batch_mode)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels!r}: expected a positive int")
    model, full_card, default_name = _load(model_or_path, card)
    name = check_model_name(default_name if name is None else name)
    model_dir = os.path.join(os.fspath(output_root), name)
    chosen = version is None
    version = resolve_version(model_dir, version)
    task = get_task(full_card["task"])
    identity = ServedModel(task.name, tuple(full_card["classes"]), {})
    check_same_model(model_dir, identity, version, allow_different_model)
    check_finite_weights(model)
    model = portable_model(model)
    options = ExportOptions(
        batch_mode=batch_mode,
        max_pixels=max_pixels,
        max_request_memory=max_request_memory,
        min_size=min_size,
        max_size=max_size,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
        max_detections=max_detections,
        tta=tta or TestTimeAugmentation(),
    )
    signatures, serving, budget = task.export_signatures(model, full_card, options)
    identity = dataclasses.replace(identity, signatures=describe_signatures(signatures))
    check_same_model(model_dir, identity, version, allow_different_model)
    serving.update(
        batch_mode=batch_mode,
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
