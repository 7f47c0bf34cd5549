"""Checked TFLite export: a Keras model to one `.tflite` file, compared before it is written.

The converted model takes one normalised float32 image `(1, H, W, C)` at a fixed size (the
model card's training tile `input_size`, or `input_size=`), normalised as the card says
(`keras_dense.utils.normalization`), and returns the Keras model's outputs (float32; with
`quantize="int8"` weights and activations are int8 inside, the interface stays float32).

Before anything is written, the converted model runs with the LiteRT interpreter
(`ai-edge-litert`, the `tflite` extra) on real images of the `data` shards (resized to the
input size), or on generated ones when no shards are given, and is compared with the Keras
model: the task's `conversion_check` gives the per-pixel (or per-image) class agreement of the
argmax and the largest absolute output difference. Below `MIN_AGREEMENT[quantize]` the
export is refused (`TFLiteCheckError`) and nothing is written. Otherwise `NAME.tflite` and
`NAME.tflite.json` (the check, plus what a client needs from the card) are written
atomically, `NAME` being the model's file stem and the quantization.

Tasks decide whether their models can be converted (`Task.export_unsupported`): detection
models are refused by name (`TFLiteUnsupportedError`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_dense.export.check_images import (  # noqa: F401 - parse_input_size: the CLI's
    ConversionCheckError,
    parse_input_size,
    refuse_disagreement,
    resolve_input_size,
    sample_images,
)
from keras_dense.export.model_checks import check_finite_weights, portable_model
from keras_dense.tasks import get_task
from keras_dense.tasks.model_loading import load_model_with_card
from keras_dense.utils.files import atomic_write_bytes
from keras_dense.utils.native_logs import filtered_native_stderr
from keras_dense.utils.progress import Progress
from keras_dense.utils.version import __version__

QUANTIZATIONS = ("none", "float16", "int8")

# Lowest per-pixel class agreement with the Keras model that is accepted by default.
# Float models must match to 99.9 %: "none" is the same float32 arithmetic (the tiny test
# U-Net matches 100 %, max logit difference ~1e-4), float16 rounds the weights only (99.93 to
# 100 %, max difference 0.05-0.2 on logits of magnitude 50-300). int8 rounds every
# activation to 256 levels per tensor, so pixels whose two best logits lie within that
# rounding flip; flips sit on class boundaries, so 2 % of the pixels costs up to about
# 2 mIoU points, the most post-training quantization is usually allowed to lose. Measured:
# 4-16-filter U-Nets on 32x32 shapes images reach only 89-98.6 % (their logits lie close
# together), so they are refused at 98 % unless `min_agreement` is lowered knowingly.
INT8_MIN_AGREEMENT = 0.98
MIN_AGREEMENT = {"none": 0.999, "float16": 0.999, "int8": INT8_MIN_AGREEMENT}

DEFAULT_CHECK_IMAGES = 8
DEFAULT_REPRESENTATIVE_IMAGES = 32
REPORT_FORMAT = "keras_dense.tflite_check/1"
_EXTRA_HINT = "pip install 'keras-dense[tflite]' (the ai-edge-litert package)"


class TFLiteUnsupportedError(ValueError):
    """The model's task has no TFLite export (e.g. detection); the message says why."""


class TFLiteCheckError(ConversionCheckError):
    """The converted TFLite model disagrees with the Keras model; nothing was written."""


@dataclasses.dataclass(frozen=True)
class TFLiteResult:
    """What `export_tflite` wrote.

    Attributes:
        path: The `.tflite` file.
        report_path: The JSON check report beside it.
        report: The report's content.
    """

    path: str
    report_path: str
    report: dict


def _require_litert() -> None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        raise ImportError(
            f"checking a TFLite export needs the LiteRT interpreter: {_EXTRA_HINT}"
        ) from None


def litert_interpreter(model_content: bytes):
    """A LiteRT interpreter for a converted model, its tensors allocated.

    Raises:
        ImportError: `ai-edge-litert` is not installed (the message names the extra).
    """
    _require_litert()
    from ai_edge_litert.interpreter import Interpreter

    with filtered_native_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter = Interpreter(model_content=model_content)
        interpreter.allocate_tensors()
    return interpreter


def run_tflite(model_content: bytes, images: np.ndarray) -> np.ndarray:
    """Runs a converted single-image model on each image of a batch.

    Args:
        model_content: The `.tflite` flatbuffer.
        images: (N, H, W, C) normalised float32 images at the model's input size.

    Returns:
        The stacked outputs, (N, ...) float32.
    """
    interpreter = litert_interpreter(model_content)
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    outputs = []
    for image in np.asarray(images, np.float32):
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(target["index"]), np.float32)[0])
    return np.stack(outputs)


def convert_to_tflite(
    model: keras.Model,
    input_shape,
    quantize: str = "none",
    representative: np.ndarray | None = None,
) -> bytes:
    """Converts a model at a fixed input shape to a TFLite flatbuffer.

    The model's call is traced at `(1, *input_shape)` and its variables frozen into
    constants (a converted function that still reads resource variables runs on
    uninitialised memory).

    Args:
        model: The Keras model.
        input_shape: `(H, W, C)`.
        quantize: `"none"`, `"float16"` (float16 weights) or `"int8"` (int8 weights and
            activations, calibrated on `representative`; float32 input and output).
        representative: (n, H, W, C) normalised images, for `"int8"`.

    Returns:
        The `.tflite` bytes.

    Raises:
        ValueError: Unknown `quantize`, or `"int8"` without representative images.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize {quantize!r}: expected one of {QUANTIZATIONS}")
    if quantize == "int8" and (representative is None or not len(representative)):
        raise ValueError("--quantize int8 needs representative images")

    @tf.function(input_signature=[tf.TensorSpec((1, *input_shape), tf.float32, name="images")])
    def serve(images):
        return model(images, training=False)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        samples = np.asarray(representative, np.float32)
        converter.representative_dataset = lambda: ([image[None]] for image in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with filtered_native_stderr():  # the converter prints statistics to stderr
        return converter.convert()


def tflite_output_name(model_path: str, quantize: str) -> str:
    """`X.keras` -> `X.tflite` (no quantization), `X_float16.tflite`, `X_int8.tflite`."""
    stem = os.path.splitext(os.path.basename(model_path))[0]
    return stem + ("" if quantize == "none" else f"_{quantize}") + ".tflite"


def export_tflite(
    model_path: str,
    output_dir: str,
    quantize: str = "none",
    data: str | None = None,
    input_size=None,
    check_images: int = DEFAULT_CHECK_IMAGES,
    representative_images: int = DEFAULT_REPRESENTATIVE_IMAGES,
    min_agreement: float | None = None,
    progress: bool = False,
) -> TFLiteResult:
    """Converts a saved model to TFLite, checks it against the Keras model, then writes it.

    With `data`, the int8 calibration uses its first `representative_images` records and the
    check its last `check_images` of those read (the two sets are disjoint when the shards
    hold enough records); without it, generated images.

    Args:
        model_path: The `.keras` model, its card beside it.
        output_dir: The folder for `NAME.tflite` and `NAME.tflite.json` (created).
        quantize: One of `QUANTIZATIONS`.
        data: Glob pattern of TFRecord shards (segmentation records), or None.
        input_size: `(H, W)`, or None for the model's or card's.
        check_images: Images the check compares.
        representative_images: Images the int8 calibration sees.
        min_agreement: The lowest class agreement accepted (default:
            `MIN_AGREEMENT[quantize]`).
        progress: Show a progress bar over the steps (on a terminal only).

    Returns:
        What was written.

    Raises:
        TFLiteUnsupportedError: The model's task has no TFLite export.
        TFLiteCheckError: The converted model's agreement is below `MIN_AGREEMENT`, or
            its outputs are not finite.
        ImportError: The LiteRT interpreter (the `tflite` extra) is missing.
        ValueError: Bad arguments, an unknown input size, or non-finite weights.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize {quantize!r}: expected one of {QUANTIZATIONS}")
    if check_images < 1 or representative_images < 1:
        raise ValueError("the check and the int8 calibration need at least one image each")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"--min-agreement {min_agreement!r}: expected a fraction in [0, 1]")
    model, card = load_model_with_card(model_path)
    task = get_task(card["task"])
    reason = task.export_unsupported(card, "tflite")
    if reason:
        raise TFLiteUnsupportedError(f"--model {model_path}: {reason}")
    _require_litert()  # before the conversion, which takes a while
    check_finite_weights(model)
    model = portable_model(model)
    size = resolve_input_size(model, card, input_size)
    channels = int(model.inputs[0].shape[-1])
    bar = Progress(3, f"exporting {tflite_output_name(model_path, quantize)}", progress, "step")

    wanted = check_images + (representative_images if quantize == "int8" else 0)
    images, source = sample_images(card, size, wanted, data)
    check_set = images[-check_images:]
    representative = images[:representative_images] if quantize == "int8" else None
    content = convert_to_tflite(model, (*size, channels), quantize, representative)
    bar.update()
    got = run_tflite(content, check_set)
    bar.update()
    want = np.concatenate(
        [
            np.asarray(model(check_set[i : i + 8], training=False))
            for i in range(0, len(check_set), 8)
        ]
    )
    stats = task.conversion_check(got, want)
    bar.update()
    bar.close()
    minimum = MIN_AGREEMENT[quantize] if min_agreement is None else float(min_agreement)
    report = {
        "format": REPORT_FORMAT,
        "model": model_path,
        "quantize": quantize,
        "input_shape": [1, *size, channels],
        "input_dtype": "float32",
        "normalization": card.get("normalization"),
        "classes": card.get("classes"),
        "task": task.name,
        "check": {
            "images": int(len(check_set)),
            "source": source,
            "representative_images": 0 if representative is None else int(len(representative)),
            "agreement": stats["agreement"],
            "max_abs_diff": stats["max_abs_diff"],
            "compared": stats["compared"],
            "min_agreement": minimum,
        },
        "tensorflow_version": tf.__version__,
        "keras_dense_version": __version__,
    }
    refuse_disagreement(
        TFLiteCheckError,
        model_path,
        f"the {quantize!r} TFLite conversion",
        stats["agreement"],
        stats["compared"],
        stats["max_abs_diff"],
        minimum,
        report,
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, tflite_output_name(model_path, quantize))
    report_path = path + ".json"
    atomic_write_bytes(path, content)
    atomic_write_bytes(report_path, (json.dumps(report, indent=2) + "\n").encode())
    return TFLiteResult(path=path, report_path=report_path, report=report)
