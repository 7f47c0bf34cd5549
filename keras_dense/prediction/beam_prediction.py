"""`predict --runner beam`: an export run over any number of images with Beam's RunInference.

Beam's stock TensorFlow model handlers import `tensorflow_hub` and load with `tf.keras`, which
cannot load a Keras 3 SavedModel; `ExportModelHandler` loads the export's `serving_default`
with `tf.saved_model.load` instead (`ServingModel`). RunInference batches the elements
(`--beam-option` has no say there: `min_batch_size` / `max_batch_size` are this module's
arguments); inside a batch each image is still run alone, so every output file equals the one
`keras-dense predict --model EXPORT_DIR` writes. Files go to the output folder through
`tf.io.gfile` (temporary name, then rename); inputs that cannot be read or decoded go to
`errors.jsonl` there, one `{"input", "reason"}` line each, in input order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import tensorflow as tf

from keras_dense.data.beam_options import pipeline_options, require_beam
from keras_dense.data.errors import BadInputError
from keras_dense.data.storage import join
from keras_dense.prediction.export_prediction import ServingModel, predict_file

DEAD_LETTERS = "errors.jsonl"


def write_file(path: str, data: bytes) -> None:
    """Writes `data` to `path` through gfile under a temporary name, then renames it."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def export_model_handler(export_dir: str, min_batch_size: int, max_batch_size: int):
    """A RunInference `ModelHandler` of `(index, path, stem)` elements (Beam imported lazily)."""
    require_beam()
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class ExportModelHandler(ModelHandler):
        """Loads the export once per worker; predicts each element's image file."""

        def load_model(self) -> ServingModel:
            return ServingModel(export_dir)

        def run_inference(self, batch, model, inference_args=None):
            results = []
            for element in batch:
                _, path, stem = element
                try:
                    outcome = predict_file(model, path, stem)
                except BadInputError as err:
                    outcome = {"error": err.reason}
                results.append(PredictionResult(element, outcome))
            return results

        def batch_elements_kwargs(self):
            return {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    return ExportModelHandler()


def predict_export_beam(
    export_dir: str,
    files: Sequence[str],
    stems: Sequence[str],
    output: str,
    beam_options: Sequence[str] = (),
    min_batch_size: int = 1,
    max_batch_size: int = 16,
) -> list[dict]:
    """Runs an export over `files` on a Beam pipeline; returns the failed inputs.

    Args:
        export_dir: The SavedModel folder.
        files: Image files (any `tf.io.gfile` path).
        stems: The output stem of each file (unique).
        output: The output folder.
        beam_options: `KEY=VALUE` pipeline options.
        min_batch_size: RunInference's smallest batch.
        max_batch_size: RunInference's largest batch.

    Returns:
        `{"input", "reason"}` of each input that failed, in input order (also written to
        `output/errors.jsonl` when there are any).
    """
    beam = require_beam()
    from apache_beam.ml.inference.base import RunInference

    ServingModel(export_dir)  # a wrong export is named here, before any worker starts
    tf.io.gfile.makedirs(output)
    options, runner = pipeline_options(beam_options)
    handler = export_model_handler(export_dir, min_batch_size, max_batch_size)
    failures_path = join(output, f".failures-{uuid.uuid4().hex[:12]}.json")

    def write_outputs(result):
        index, path, _ = result.example
        if "error" in result.inference:
            return [{"index": index, "input": path, "reason": result.inference["error"]}]
        for name, data in result.inference.items():
            write_file(join(output, name), data)
        return []

    def write_failures(failures):
        write_file(failures_path, json.dumps(sorted(failures, key=lambda f: f["index"])).encode())

    elements = [(index, path, stem) for index, (path, stem) in enumerate(zip(files, stems))]
    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            _ = (
                pipeline
                | "Inputs" >> beam.Create(elements, reshuffle=True)
                | "Predict" >> RunInference(handler)
                | "Write" >> beam.FlatMap(write_outputs)
                | "Failures" >> beam.combiners.ToList()
                | "WriteFailures" >> beam.Map(write_failures)
            )
        with tf.io.gfile.GFile(failures_path, "rb") as f:
            failures = [{"input": x["input"], "reason": x["reason"]} for x in json.loads(f.read())]
    finally:
        if tf.io.gfile.exists(failures_path):
            tf.io.gfile.remove(failures_path)
    if failures:
        lines = "".join(json.dumps(f) + "\n" for f in failures)
        write_file(join(output, DEAD_LETTERS), lines.encode())
    return failures
