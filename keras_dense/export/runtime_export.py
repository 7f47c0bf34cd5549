"""Checked ONNX and OpenVINO exports: converted, run in their own runtime, compared, then written.

`keras-dense export --format onnx|openvino` converts a `.keras` model with Keras 3's exporter
(`keras_dense.export.runtimes`). The converted model takes normalised float32 images
`(N, H, W, C)`, normalised as the model card says: N is free, H and W are fixed at the
model's, the card's training tile or `input_size`, or free with `dynamic=True`.

Before anything is written, the converted model runs in its own runtime (onnxruntime's CPU
provider; OpenVINO's CPU plugin in float32) on real images of the `data` shards or on
generated ones, and is compared with the Keras model by the task's `export_agreement`: the
class agreement of the argmax per pixel (segmenters) or per image (the WSL classifier's
scores), or for a Faster R-CNN with RoIAlign (inputs `images`, `image_shape`, `scale`; raw
heads out) the share of final detections matched at IoU >= 0.9 with the same class; and the
largest absolute output difference. Below the task's minimum (99.9 %, detectors 99 %) the
export is refused (`RuntimeCheckError`) and nothing is written. So is a model with operations
its format cannot express (`RuntimeUnsupportedError`, naming them), and a model its task
cannot export (`Task.export_unsupported`, e.g. Fast R-CNN). CRF-as-RNN and RoI pooling take
their stock-TF paths (`portable_model`) before the conversion.

Written: `NAME.onnx`, or `NAME.bin` and `NAME.xml`, then the check report `NAME.onnx.json` /
`NAME.xml.json` last. Every file is first copied beside its target under a temporary name;
an earlier report is removed before the first rename, and the renames follow one another.
The report names each file with its SHA-256 (`files`), so an export interrupted between the
two OpenVINO renames cannot pass for complete: it has no report, or its sums differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from keras_dense.export.check_images import (
    ConversionCheckError,
    refuse_disagreement,
    resolve_input_size,
    sample_images,
)
from keras_dense.export.model_checks import check_finite_weights, portable_model
from keras_dense.export.runtimes import RUNTIMES, RuntimeUnsupportedError
from keras_dense.tasks import get_task
from keras_dense.tasks.model_loading import load_model_with_card
from keras_dense.utils.files import atomic_write_bytes
from keras_dense.utils.progress import Progress
from keras_dense.utils.version import __version__

FORMATS = tuple(RUNTIMES)
MIN_AGREEMENT = 0.999
DEFAULT_CHECK_IMAGES = 8
REPORT_FORMAT = "keras_dense.runtime_check/1"


class RuntimeCheckError(ConversionCheckError):
    """The ONNX or OpenVINO model disagrees with the Keras model; nothing was written."""


@dataclasses.dataclass(frozen=True)
class RuntimeExportResult:
    """What `export_runtime` wrote.

    Attributes:
        path: The model file (`.onnx`, or OpenVINO's `.xml`).
        files: Every file of the model (OpenVINO: the `.bin` weights, then the `.xml`).
        report_path: The JSON check report beside it.
        report: The report's content.
    """

    path: str
    files: tuple[str, ...]
    report_path: str
    report: dict


def _outputs(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The Keras model's outputs on `inputs`, in batches of 8, flattened in output order."""
    count = len(inputs[0])
    parts = [
        tf.nest.flatten(
            model(
                [x[i : i + 8] for x in inputs] if len(inputs) > 1 else inputs[0][i : i + 8],
                training=False,
            )
        )
        for i in range(0, count, 8)
    ]
    return [np.concatenate([np.asarray(part[k]) for part in parts]) for k in range(len(parts[0]))]


def export_runtime(
    model_path: str,
    output_dir: str,
    output_format: str,
    data: str | None = None,
    input_size=None,
    dynamic: bool = False,
    check_images: int = DEFAULT_CHECK_IMAGES,
    min_agreement: float | None = None,
    progress: bool = False,
) -> RuntimeExportResult:
    """Converts a saved model to ONNX or OpenVINO, checks it in that runtime, then writes it.

    Args:
        model_path: The `.keras` model, its card beside it.
        output_dir: The folder for the model files and the report (created).
        output_format: "onnx" or "openvino".
        data: Glob pattern of TFRecord shards whose images check the conversion, or None
            (generated images).
        input_size: `(H, W)`: the input size (with `dynamic`, only the check's), or None for
            the model's or card's.
        dynamic: Leave the input height and width free in the converted model.
        check_images: Images the check compares.
        min_agreement: The lowest class agreement accepted (default `MIN_AGREEMENT`).
        progress: Show a progress bar over the steps (on a terminal only).

    Returns:
        What was written.

    Raises:
        ValueError: Bad arguments, an unknown input size, non-finite weights, or a task
            without this export (the message says why).
        RuntimeUnsupportedError: Operations the format cannot express (named).
        RuntimeCheckError: The converted model's agreement is below the minimum, or its
            outputs differ in shape or are not finite.
        ImportError: The format's extra is missing (named).
    """
    if output_format not in RUNTIMES:
        raise ValueError(f"--format {output_format!r}: expected one of {FORMATS}")
    if check_images < 1:
        raise ValueError(f"--check-images {check_images}: the check needs at least one image")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"--min-agreement {min_agreement!r}: expected a fraction in [0, 1]")
    runtime = RUNTIMES[output_format]
    model, card = load_model_with_card(model_path)
    task = get_task(card["task"])
    reason = task.export_unsupported(card, output_format, model=model)
    if reason:
        raise ValueError(f"--model {model_path}: {reason}")
    runtime.require()  # before the conversion, which takes a while
    check_finite_weights(model)
    model = portable_model(model)
    default_size = task.export_input_size(card)
    if default_size is not None and not card.get("input_size"):
        card = {**card, "input_size": list(default_size)}
    size = resolve_input_size(model, card, input_size)
    channels = int(model.inputs[0].shape[-1])
    spec_size = (None, None) if dynamic else size
    spec = tf.TensorSpec((None, *spec_size, channels), tf.float32, name="images")
    stem = os.path.splitext(os.path.basename(model_path))[0]
    bar = Progress(3, f"exporting {stem}{runtime.suffix}", progress, "step")
    images, source = sample_images(card, size, check_images, data)
    scratch = tempfile.mkdtemp(prefix="keras_dense_export_")
    try:
        converted = os.path.join(scratch, stem + runtime.suffix)
        try:
            runtime.convert(model, task.export_specs(model, spec), converted)
            missing = runtime.unsupported_ops(converted)
        except RuntimeUnsupportedError as error:
            missing = str(error).split(", ")
        if missing:
            raise RuntimeUnsupportedError(
                f"--model {model_path}: {runtime.title} cannot express the operations "
                f"{', '.join(missing)} of this model; nothing was written (export a "
                "SavedModel instead: keras-dense export --format savedmodel)"
            )
        bar.update()
        inputs = task.export_inputs(model, images)
        got = runtime.run(converted, inputs)
        bar.update()
        want = _outputs(model, inputs)
        report = {
            "format": REPORT_FORMAT,
            "runtime": output_format,
            "model": model_path,
            "input_shape": [None, *spec_size, channels],
            "input_name": "images",
            "inputs": [
                {"name": spec.name, "shape": list(spec.shape)}
                for spec in task.export_specs(model, spec)
            ],
            "outputs": sorted(model.output) if isinstance(model.output, dict) else None,
            **task.export_report_fields(model, card),
            "input_dtype": "float32",
            "normalization": card.get("normalization"),
            "classes": card.get("classes"),
            "task": task.name,
            "tensorflow_version": tf.__version__,
            "keras_dense_version": __version__,
        }
        if output_format == "openvino":
            report["inference_precision"] = runtime.precision
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
            raise RuntimeCheckError(
                f"--model {model_path}: the {runtime.title} model outputs "
                f"{[g.shape for g in got]}, the Keras model {[w.shape for w in want]}; "
                "nothing was written",
                report,
            )
        stats = task.export_agreement(model, got, want, inputs)
        bar.update()
        bar.close()
        minimum = task.export_min_agreement if min_agreement is None else float(min_agreement)
        differences = [float(np.max(np.abs(g - w))) if g.size else 0.0 for g, w in zip(got, want)]
        report["check"] = {
            "images": int(len(images)),
            "size": list(size),
            "source": source,
            "agreement": stats["agreement"],
            "compared": stats["compared"],
            "max_abs_diff": max(differences),
            "min_agreement": minimum,
        }
        if "max_box_diff" in stats:  # detectors: the raw heads are compared index by index,
            # and proposals of near-equal score may come in another order
            report["check"]["max_box_diff"] = stats["max_box_diff"]
        refuse_disagreement(
            RuntimeCheckError,
            model_path,
            f"the {runtime.title} model",
            stats["agreement"],
            stats["compared"],
            report["check"]["max_abs_diff"],
            minimum,
            report,
        )
        os.makedirs(output_dir, exist_ok=True)
        sources = runtime.files(converted)
        written = [os.path.join(output_dir, os.path.basename(f)) for f in sources]
        report["files"] = {os.path.basename(f): _sha256(f) for f in sources}
        report_path = written[-1] + ".json"
        _replace_together(sources, written, report_path)
        atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return RuntimeExportResult(written[-1], tuple(written), report_path, report)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_together(sources: list[str], targets: list[str], report_path: str) -> None:
    """Copies every source beside its target, removes the old report, then renames them all
    (module docstring); temporaries left by a failure are removed."""
    temporaries = [f"{target}.{os.getpid()}.tmp" for target in targets]
    try:
        for source, temporary in zip(sources, temporaries):
            shutil.copyfile(source, temporary)
        if os.path.exists(report_path):
            os.remove(report_path)  # no report may vouch for a half-replaced pair
        for temporary, target in zip(temporaries, targets):
            os.replace(temporary, target)
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.remove(temporary)
