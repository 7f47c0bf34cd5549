"""A client of TF Serving for exported keras_dense models, over REST (JSON) or gRPC.

Request building and response parsing are pure functions (`build_rest_request`,
`parse_rest_response`, `build_grpc_request`, `parse_grpc_response`), so they can be checked
without a server; `Client.predict` only adds the transport.

REST: `POST /v1/models/NAME[/versions/N | /labels/L]:predict` with the row ("instances")
format; string inputs travel as `{"b64": ...}` and outputs whose name ends in `_bytes`
(`mask_png_bytes`) come back the same way. gRPC: `PredictionService/Predict` with a
`PredictRequest` (`model_spec.version` or `model_spec.version_label`); needs
`tensorflow-serving-api` (`pip install 'keras-dense[serving]'`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

import numpy as np

IMAGE_INPUT = "image_bytes"
DEFAULT_SIGNATURE = "serving_default"
PROTOCOLS = ("rest", "grpc")


class ServingError(RuntimeError):
    """The server answered with an error (its message is kept)."""


@dataclasses.dataclass(frozen=True)
class RestRequest:
    """A REST predict call: URL path (to append to `http://host:port`) and JSON body."""

    path: str
    body: dict

    def json(self) -> str:
        """The body as JSON text."""
        return json.dumps(self.body)


def encode_image(image) -> bytes:
    """Encoded bytes of one image.

    Args:
        image: Encoded JPEG/PNG `bytes`, a file path, or an (H, W, 3) / (H, W) uint8 RGB
            array (encoded as PNG, lossless).

    Returns:
        The encoded image.
    """
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    array = np.asarray(image)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or array.ndim == 3
        and (array.shape[-1] not in (1, 3))
    ):
        raise ValueError(
            "images: expected encoded bytes, a path or (H, W[, 1 or 3]) uint8 RGB arrays, got "
            f"an array of shape {array.shape} and dtype {array.dtype}"
        )
    import cv2

    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError("images: could not encode an array as PNG")
    return encoded.tobytes()


def _encode_images(images) -> list[bytes]:
    if isinstance(images, (bytes, bytearray, str, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.ndim <= 3
    ):
        images = [images]
    encoded = [encode_image(image) for image in images]
    if not encoded:
        raise ValueError("images: expected at least one image")
    return encoded


def _check_version(version) -> None:
    if version is None or isinstance(version, str) and version:
        return
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"version={version!r}: expected None, a positive int or a label string")


def _model_path(model: str, version) -> str:
    if not isinstance(model, str) or not model or "/" in model:
        raise ValueError(f"model={model!r}: expected a model name")
    _check_version(version)
    if version is None:
        return f"/v1/models/{model}"
    if isinstance(version, str):
        return f"/v1/models/{model}/labels/{version}"
    return f"/v1/models/{model}/versions/{int(version)}"


def _json_value(value):
    """A JSON-ready instance value: bytes as {"b64": ...}, arrays as nested lists."""
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return np.asarray(value).tolist()


def build_rest_request(
    images,
    model: str,
    version: int | str | None = None,
    signature: str = DEFAULT_SIGNATURE,
    extra_inputs: Mapping[str, Sequence] | None = None,
) -> RestRequest:
    """The REST predict request for encoded images (row format, b64 strings).

    Args:
        images: One image or a sequence (see `encode_image`).
        model: Model name.
        version: None (the server's default), a version number, or a label ("stable").
        signature: Signature name.
        extra_inputs: Other inputs of the signature, one row per image (e.g. detection's
            `proposals` and `num_proposals`).

    Returns:
        The `RestRequest`.
    """
    encoded = _encode_images(images)
    instances = [{IMAGE_INPUT: _json_value(data)} for data in encoded]
    for name, rows in (extra_inputs or {}).items():
        if len(rows) != len(encoded):
            raise ValueError(
                f"extra_inputs[{name!r}]: expected one row per image ({len(encoded)}), "
                f"got {len(rows)}"
            )
        for instance, row in zip(instances, rows):
            instance[name] = _json_value(row)
    return RestRequest(
        f"{_model_path(model, version)}:predict",
        {"signature_name": signature, "instances": instances},
    )


def _from_json(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def parse_rest_response(body: Mapping | str | bytes) -> dict[str, np.ndarray]:
    """Outputs of a REST predict response as NumPy arrays (batch first).

    Args:
        body: The response JSON (text or parsed), `{"predictions": [...]}` row format.

    Returns:
        `{output name: array}`; string outputs are object arrays of bytes. A signature with
        a single output gives `{"output": array}`.
    """
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError as err:
            text = body[:200] if isinstance(body, str) else body[:200].decode(errors="replace")
            raise ServingError(f"response is not JSON ({err}): {text!r}") from None
    if not isinstance(body, Mapping):
        raise ServingError(f"unexpected response: {str(body)[:200]}")
    if "error" in body:
        raise ServingError(str(body["error"]))
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict):
            columns = {key: [row[key] for row in rows] for key in rows[0]}
        else:
            columns = {"output": rows}
    elif "outputs" in body:
        outputs = body["outputs"]
        columns = outputs if isinstance(outputs, dict) else {"output": outputs}
    else:
        raise ServingError(f"unexpected response: {str(body)[:200]}")
    result = {}
    for key, values in columns.items():
        values = _from_json(values)
        is_bytes = values and isinstance(_first(values), bytes)
        result[key] = np.array(values, dtype=object if is_bytes else None)
    return result


def _first(values):
    while isinstance(values, list) and values:
        values = values[0]
    return values


def build_grpc_request(
    images,
    model: str,
    version: int | str | None = None,
    signature: str = DEFAULT_SIGNATURE,
    extra_inputs: Mapping[str, Sequence] | None = None,
):
    """The gRPC `PredictRequest` for encoded images.

    Args:
        images: One image or a sequence (see `encode_image`).
        model: Model name.
        version: None, a version number (`model_spec.version`) or a label
            (`model_spec.version_label`).
        signature: Signature name.
        extra_inputs: Other inputs of the signature, one row per image (NumPy-convertible;
            float64 becomes float32 and int64 int32, the dtypes of the exported signatures).

    Returns:
        A `tensorflow_serving.apis.predict_pb2.PredictRequest`.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    _model_path(model, version)  # checks the arguments
    encoded = _encode_images(images)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if isinstance(version, str):
        request.model_spec.version_label = version
    elif version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[IMAGE_INPUT].CopyFrom(
        tf.make_tensor_proto(encoded, dtype=tf.string, shape=[len(encoded)])
    )
    for name, rows in (extra_inputs or {}).items():
        array = np.asarray(rows)
        if len(array) != len(encoded):
            raise ValueError(
                f"extra_inputs[{name!r}]: expected one row per image ({len(encoded)}), "
                f"got {len(array)}"
            )
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        elif array.dtype == np.int64:
            array = array.astype(np.int32)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def parse_grpc_response(response) -> dict[str, np.ndarray]:
    """Outputs of a `PredictResponse` as NumPy arrays (string outputs as bytes objects)."""
    import tensorflow as tf

    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


class Client:
    """Calls a TF Serving server that serves keras_dense SavedModels.

    Args:
        host: Server host name or address.
        rest_port: REST API port (`--rest_api_port`, 8501).
        grpc_port: gRPC port (`--port`, 8500).
        timeout: Seconds per request.
    """

    def __init__(
        self, host: str, rest_port: int = 8501, grpc_port: int = 8500, timeout: float = 60.0
    ):
        if not isinstance(host, str) or not host:
            raise ValueError(f"host={host!r}: expected a host name")
        self.host = host
        self.rest_port = int(rest_port)
        self.grpc_port = int(grpc_port)
        self.timeout = float(timeout)
        self._stub = None

    def predict(
        self,
        images,
        model: str,
        version: int | str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        protocol: str = "rest",
        extra_inputs: Mapping[str, Sequence] | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a signature on images.

        Args:
            images: One image or a sequence: encoded bytes, paths or uint8 RGB arrays.
            model: Model name.
            version: None (newest served), a version number or a label ("stable", "canary").
            signature: Signature name.
            protocol: "rest" or "grpc".
            extra_inputs: Other inputs, one row per image (detection: `proposals` and
                `num_proposals`).

        Returns:
            `{output name: array}`, e.g. `classes`, `image_sizes`, `mask_png_bytes`.

        Raises:
            ServingError: The server refused the request (bad image, unknown model, ...).
        """
        if protocol == "rest":
            return self._predict_rest(
                build_rest_request(images, model, version, signature, extra_inputs)
            )
        if protocol == "grpc":
            return self._predict_grpc(
                build_grpc_request(images, model, version, signature, extra_inputs)
            )
        raise ValueError(f"protocol={protocol!r}: expected one of {PROTOCOLS}")

    def _predict_rest(self, request: RestRequest) -> dict[str, np.ndarray]:
        url = f"http://{self.host}:{self.rest_port}{request.path}"
        http_request = urllib.request.Request(
            url,
            data=request.json().encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise ServingError(f"{url}: HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise ServingError(
                f"{url}: cannot reach the server ({error.reason}); is TF Serving running with "
                f"--rest_api_port={self.rest_port}?"
            ) from None
        except (TimeoutError, OSError) as error:
            raise ServingError(
                f"{url}: no answer within {self.timeout} s ({type(error).__name__}: {error})"
            ) from None
        try:
            return parse_rest_response(body)
        except ServingError as error:
            raise ServingError(f"{url}: {error}") from None

    def _predict_grpc(self, request) -> dict[str, np.ndarray]:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if self._stub is None:
            channel = grpc.insecure_channel(
                f"{self.host}:{self.grpc_port}",
                options=[
                    ("grpc.max_send_message_length", 256 << 20),
                    ("grpc.max_receive_message_length", 256 << 20),
                ],
            )
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(
                f"{self.host}:{self.grpc_port}: gRPC {error.code().name}: {error.details()}"
            ) from None
        return parse_grpc_response(response)
