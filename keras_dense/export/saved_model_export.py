"""`export_saved_model`: a Keras model to a TF Serving version folder, checked and atomic.

The SavedModel holds two signatures (see `segmentation_signatures` / `detection_signatures`):
`serving_default` on encoded image bytes and `serving_tensor` on normalised float images.
Its `assets.extra/model_card.json` (ignored by TF Serving) is the model card plus what the
export decided (signatures, input geometry, versions of the tools).

Checks, in order: weights must be finite (else `NonFiniteWeightsError` naming them); CRF
and RoIPooling layers are switched to their pure-TF implementations; after writing, the op
audit walks the graph and all nested functions (`OpAuditError` on a non-stock op); the
SavedModel is reloaded and its `serving_tensor` compared with the in-memory model. Only then
is the temporary folder renamed to `OUTPUT_ROOT/NAME/<version>`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_dense.data.normalization import check_mode
from keras_dense.export.batch_modes import check_batch_mode
from keras_dense.export.geometry import segmenter_geometry
from keras_dense.export.image_bytes import DEFAULT_MAX_PIXELS
from keras_dense.export.model_checks import check_finite_weights, portable_model
from keras_dense.export.op_audit import audit_saved_model
from keras_dense.export.segmentation_signatures import segmentation_signatures
from keras_dense.export.versions import atomic_version_dir, check_model_name, resolve_version
from keras_dense.training.model_card import TASKS, read_model_card

CARD_ASSET = os.path.join("assets.extra", "model_card.json")
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
    """

    path: str
    name: str
    version: int
    task: str
    signatures: tuple[str, ...]


def _default_card(model: keras.Model) -> dict:
    task = "detection" if len(model.inputs) == 2 else "segmentation"
    channels = int(model.outputs[0].shape[-1])
    count = channels - 1 if task == "detection" else channels
    return {
        "task": task,
        "normalization": "caffe",
        "classes": [f"class_{i}" for i in range(count)],
        "ignore_label": 255,
        "input_channels": int(model.inputs[0].shape[-1]),
        "builder": None,
        "builder_kwargs": {},
        "recipe": None,
        "keras_dense_version": None,
    }


def _load(model_or_path, card: dict | None) -> tuple[keras.Model, dict, str]:
    """The model, its card (file card, then `card` overrides) and a default name."""
    if isinstance(model_or_path, keras.Model):
        model = model_or_path
        full_card = _default_card(model)
        default_name = model.name
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_or_path={path!r}: no such model file")
        model = keras.models.load_model(path, compile=False)
        full_card = read_model_card(path, model)
        default_name = os.path.splitext(os.path.basename(path))[0]
    else:
        raise ValueError(
            f"model_or_path: expected a keras.Model or a .keras path, got {type(model_or_path)}"
        )
    full_card.update(card or {})
    if full_card["task"] not in TASKS:
        raise ValueError(f"card task={full_card['task']!r}: expected one of {TASKS}")
    check_mode(full_card["normalization"])
    return model, full_card, default_name


def _probe_inputs(model: keras.Model, task: str, geometry) -> list[np.ndarray]:
    """Small deterministic inputs for the post-export comparison."""
    rng = np.random.default_rng(0)
    if task == "detection":
        image = rng.normal(size=(1, 64, 80, 3)).astype(np.float32)
        rois = np.array([[[4, 4, 40, 60], [10, 20, 60, 70]]], np.float32)
        return [image, rois]
    height, width = geometry.fixed_size or (geometry.input_size(37), geometry.input_size(45))
    return [rng.normal(size=(2, height, width, geometry.channels)).astype(np.float32)]


def _verify(path: str, model: keras.Model, task: str, geometry) -> None:
    """Reloads the SavedModel and checks `serving_tensor` against the in-memory model."""
    loaded = tf.saved_model.load(path)
    inputs = _probe_inputs(model, task, geometry)
    names = ("images", "rois")[: len(inputs)]
    got = loaded.signatures["serving_tensor"](**dict(zip(names, map(tf.constant, inputs))))
    expected = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    expected = keras.tree.flatten(expected)
    keys = ("cls_score", "bbox_pred") if task == "detection" else ("scores",)
    for key, want in zip(keys, expected):
        want = np.asarray(want, np.float32)
        diff = float(np.max(np.abs(got[key].numpy() - want)))
        scale = max(1.0, float(np.max(np.abs(want))))
        if not diff <= _VERIFY_TOLERANCE * scale:
            raise RuntimeError(
                f"export verification failed: the reloaded SavedModel's {key} differs from the "
                f"in-memory model by {diff:g}"
            )


def export_saved_model(
    model_or_path,
    output_root: str | os.PathLike,
    name: str | None = None,
    version: int | None = None,
    *,
    card: dict | None = None,
    batch_mode: str = "per_image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 600,
    max_size: int = 1000,
    score_threshold: float = 0.05,
    nms_iou: float = 0.3,
    max_detections: int = 100,
    verify: bool = True,
) -> ExportResult:
    """Exports a model as a TF Serving SavedModel version, `output_root/NAME/<version>/`.

    Args:
        model_or_path: A Keras model, or the path of a `.keras` file (its model card `X.json`
            beside it is read; see `keras_dense.training.model_card`).
        output_root: Folder holding one sub-folder per served model (e.g. `saved_models`).
        name: Model name; default: the file's stem, or the model's name.
        version: Positive int; default: one more than the largest existing version. An
            existing version is never overwritten.
        card: Model card fields overriding the file's (or the defaults for an in-memory model:
            segmentation, "caffe" normalisation, classes `class_i`).
        batch_mode: "per_image" or "pad", how batches of mixed image sizes are run
            (`keras_dense.export.batch_modes`).
        max_pixels: Largest image (height * width) the signature accepts.
        min_size: Detection: shorter image side fed to the model (the training scale).
        max_size: Detection: cap on the longer side.
        score_threshold: Detection: minimum class probability reported.
        nms_iou: Detection: per-class NMS IoU threshold.
        max_detections: Detection: detections per image (padded length of the outputs).
        verify: Reload the SavedModel and compare `serving_tensor` with the model.

    Returns:
        An `ExportResult`.

    Raises:
        ValueError: A bad argument or card; `NonFiniteWeightsError`, `OpAuditError` and
            `VersionExistsError` are ValueErrors too.
        FileNotFoundError: `model_or_path` does not exist.
    """
    check_batch_mode(batch_mode)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels!r}: expected a positive int")
    model, full_card, default_name = _load(model_or_path, card)
    name = check_model_name(default_name if name is None else name)
    model_dir = os.path.join(os.fspath(output_root), name)
    version = resolve_version(model_dir, version)
    check_finite_weights(model)
    model = portable_model(model)
    task = full_card["task"]
    geometry = None
    if task == "detection":
        from keras_dense.export.detection_signatures import detection_signatures

        signatures = detection_signatures(
            model,
            full_card["normalization"],
            min_size=min_size,
            max_size=max_size,
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            max_detections=max_detections,
            batch_mode=batch_mode,
            max_pixels=max_pixels,
        )
        serving = {"min_size": min_size, "max_size": max_size, "nms_iou": nms_iou}
        serving.update(score_threshold=score_threshold, max_detections=max_detections)
    else:
        geometry = segmenter_geometry(model)
        signatures = segmentation_signatures(
            model, geometry, full_card["normalization"], batch_mode, max_pixels
        )
        serving = {"geometry": dataclasses.asdict(geometry)}
    serving.update(batch_mode=batch_mode, max_pixels=max_pixels, signatures=sorted(signatures))

    module = tf.Module()
    module.model_variables = [getattr(v, "value", v) for v in model.variables]
    with atomic_version_dir(model_dir, version) as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
        audit_saved_model(tmp)
        if verify:
            _verify(tmp, model, task, geometry)
        import keras_dense

        exported_card = dict(full_card)
        exported_card["serving"] = serving
        exported_card["exported_with"] = {
            "keras_dense": keras_dense.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, CARD_ASSET), "w") as f:
            json.dump(exported_card, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
    return ExportResult(
        path=os.path.join(model_dir, str(version)),
        name=name,
        version=version,
        task=task,
        signatures=tuple(sorted(signatures)),
    )
