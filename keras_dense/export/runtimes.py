"""The runtimes a checked export converts to and runs in: ONNX (onnxruntime) and OpenVINO.

Each converts with Keras 3's own exporter (`model.export(path, format=...)`, which wraps
tf2onnx and OpenVINO's TensorFlow frontend), names the operations its format cannot express,
and runs a written model in its own runtime on a batch of images.

- ONNX: tf2onnx writes a model even when some TensorFlow operations have no ONNX form; those
  stay as nodes outside every registered ONNX domain, which `unsupported_ops` lists.
- OpenVINO: the frontend raises on an operation without a conversion rule and names it; the
  CPU plugin runs with `INFERENCE_PRECISION_HINT=f32` (on CPUs with bfloat16 units its
  default is bfloat16, which is a different model from the one checked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_dense.ops.permutohedral_tf import for_converters
from keras_dense.utils.native_logs import filtered_native_stderr


class RuntimeUnsupportedError(ValueError):
    """The model holds operations the format cannot express; the message names them."""


@contextlib.contextmanager
def _quiet_converter():
    """Silences the converters' per-node logs and warnings (failures still raise), and traces
    the lattice in operations the converters keep exact (`permutohedral_tf.for_converters`)."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), filtered_native_stderr(), for_converters():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _signature(specs: list) -> list:
    """Keras's `input_signature`: one entry per positional argument of `call`, so a model
    with several inputs takes their list as its one argument."""
    return [list(specs)] if len(specs) > 1 else list(specs)


class OnnxRuntime:
    """ONNX through tf2onnx; checked with onnxruntime's CPU provider."""

    name = "onnx"
    title = "ONNX"
    suffix = ".onnx"
    extra = "pip install 'keras-dense[onnx]' (onnx, onnxruntime, tf2onnx)"

    def require(self) -> None:
        """Raises ImportError naming the extra when a package is missing."""
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import tf2onnx  # noqa: F401
        except ImportError as error:
            raise ImportError(f"the ONNX export needs {self.extra}: {error}") from None

    def files(self, path: str) -> list[str]:
        """Every file a model at `path` consists of."""
        return [path]

    def convert(self, model: keras.Model, specs: list[tf.TensorSpec], path: str) -> None:
        """Writes the model's ONNX form to `path` (inputs as `specs` name them)."""
        with _quiet_converter():
            model.export(path, format="onnx", input_signature=_signature(specs), verbose=False)

    def unsupported_ops(self, path: str) -> list[str]:
        """The model's operations that no registered ONNX domain defines (sorted)."""
        import onnx

        graphs, missing = [onnx.load(path, load_external_data=False).graph], set()
        while graphs:  # the graph and, recursively, the bodies of If / Loop / Scan nodes
            for node in graphs.pop().node:
                if not onnx.defs.has(node.op_type, node.domain):
                    missing.add(node.op_type)
                for attribute in node.attribute:
                    graphs.extend([attribute.g] if attribute.HasField("g") else [])
                    graphs.extend(attribute.graphs)
        return sorted(missing)

    def run(self, path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs on `inputs` (the images (N, H, W, C) first), in output order."""
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {
            given.name: np.asarray(value, np.float32)
            for given, value in zip(session.get_inputs(), inputs)
        }
        return [np.asarray(output) for output in session.run(None, feed)]


class OpenVinoRuntime:
    """OpenVINO IR (`.xml` + `.bin`) through its TensorFlow frontend; checked on its CPU plugin."""

    name = "openvino"
    title = "OpenVINO"
    suffix = ".xml"
    extra = "pip install 'keras-dense[openvino]' (openvino, scipy)"
    # The CPU plugin's precision for the check (and the one the report records).
    precision = "f32"

    def require(self) -> None:
        """Raises ImportError naming the extra when a package is missing."""
        try:
            import openvino  # noqa: F401
            import scipy  # noqa: F401 - Keras's OpenVINO exporter imports it
        except ImportError as error:
            raise ImportError(f"the OpenVINO export needs {self.extra}: {error}") from None

    def files(self, path: str) -> list[str]:
        """The weights first, then the graph that names them."""
        return [os.path.splitext(path)[0] + ".bin", path]

    def convert(self, model: keras.Model, specs: list[tf.TensorSpec], path: str) -> None:
        """Writes the model's OpenVINO IR to `path` (.xml) and its weights beside it (.bin).

        Raises:
            RuntimeUnsupportedError: Operations without a conversion rule (named).
        """
        try:
            with _quiet_converter():
                model.export(
                    path, format="openvino", input_signature=_signature(specs), verbose=False
                )
        except Exception as error:  # noqa: BLE001 - OpConversionFailure is openvino's own
            found = re.search(r"No conversion rule found for operations: ([^\n]+)", str(error))
            if found is None:
                raise
            names = sorted(op.strip() for op in found.group(1).split(","))
            raise RuntimeUnsupportedError(", ".join(names)) from None

    def unsupported_ops(self, path: str) -> list[str]:
        """None: the frontend refuses such operations while converting."""
        return []

    def run(self, path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs on `inputs` (the images (N, H, W, C) first), in output order."""
        import openvino

        compiled = openvino.Core().compile_model(
            path, "CPU", {"INFERENCE_PRECISION_HINT": self.precision}
        )
        results = compiled([np.asarray(value, np.float32) for value in inputs])
        # The function's outputs are its Identity nodes (Identity, Identity_1, ... in the
        # Keras outputs' flattened order); the frontend may expose inner tensors beside them
        # (a shape scalar of a crop, say) and lists outputs in another order.
        ranked = []
        for output in compiled.outputs:
            for name in output.get_names():
                found = re.fullmatch(r"Identity(?:_(\d+))?(?::0)?", name)
                if found:
                    ranked.append((int(found.group(1) or 0), output))
                    break
        outputs = [output for _, output in sorted(ranked, key=lambda item: item[0])]
        return [np.asarray(results[output]) for output in outputs or compiled.outputs]


RUNTIMES = {runtime.name: runtime for runtime in (OnnxRuntime(), OpenVinoRuntime())}
