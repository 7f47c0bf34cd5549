"""The serving client: exact REST JSON and gRPC requests, round trips through the SavedModel
decoded the way TF Serving decodes them, and a real tensorflow_model_server when installed."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from keras_dense.export import export_saved_model
from keras_dense.serving import (
    Client,
    ServingError,
    build_grpc_request,
    build_rest_request,
    parse_grpc_response,
    parse_rest_response,
    write_serving_configs,
)

from export_test_utils import (
    assert_classes_match,
    decode_rgb,
    encode,
    make_image,
    normalize_np,
    small_unet,
)

serving_apis = pytest.importorskip(
    "tensorflow_serving.apis.predict_pb2",
    reason="tensorflow-serving-api is not installed (pip install 'keras-dense[serving]')",
)
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two versions of a model (different weights) and the serving configs."""
    root = tmp_path_factory.mktemp("saved_models")
    models = {1: small_unet(seed=3), 2: small_unet(seed=4)}
    for version, model in models.items():
        export_saved_model(model, root, name="unet", version=version, verify=False)
    write_serving_configs(root, root, base_path=str(root))
    images = [make_image(37, 45, 0), make_image(30, 52, 1)]
    return {"root": root, "models": models, "images": images}


class FakeTfServing:
    """Answers predict calls as TF Serving does, from the SavedModels and models.config.

    REST: row format, `{"b64": ...}` strings in, `_bytes` outputs b64-encoded out, HTTP 400
    with `{"error": ...}` on bad input. gRPC: `PredictRequest` tensors through
    `tf.make_ndarray`, outputs through `tf.make_tensor_proto`, INVALID_ARGUMENT on bad input.
    """

    def __init__(self, root):
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse((root / "models.config").read_text(), config)
        self.models = {c.name: c for c in config.model_config_list.config}
        self.loaded = {}
        self.calls = []

    def signature(self, name: str, version, label: str, signature: str):
        config = self.models[name]
        if label:
            version = config.version_labels[label]
        version = version or max(config.model_version_policy.specific.versions)
        self.calls.append((name, int(version), signature))
        path = os.path.join(config.base_path, str(version))
        if path not in self.loaded:
            self.loaded[path] = tf.saved_model.load(path)
        return self.loaded[path].signatures[signature]

    def rest(self, path: str, body: dict) -> dict:
        model_part, method = path.split(":")
        assert method == "predict"
        parts = model_part.split("/")  # ['', 'v1', 'models', NAME, ...]
        version = int(parts[5]) if len(parts) > 4 and parts[4] == "versions" else None
        label = parts[5] if len(parts) > 4 and parts[4] == "labels" else ""
        fn = self.signature(parts[3], version, label, body.get("signature_name", "serving_default"))
        specs = fn.structured_input_signature[1]
        instances = body["instances"]
        inputs = {}
        for key, spec in specs.items():
            values = [self._from_json(instance[key]) for instance in instances]
            inputs[key] = tf.constant(values, dtype=spec.dtype)
        outputs = {k: v.numpy() for k, v in fn(**inputs).items()}
        rows = []
        for i in range(len(instances)):
            row = {}
            for key, value in outputs.items():
                item = value[i]
                row[key] = (
                    {"b64": base64.b64encode(item).decode()}
                    if key.endswith("_bytes")
                    else np.asarray(item).tolist()
                )
            rows.append(row)
        return {"predictions": rows}

    @staticmethod
    def _from_json(value):
        if isinstance(value, dict):
            return base64.b64decode(value["b64"])
        return value

    def grpc(self, request):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        fn = self.signature(spec.name, version, spec.version_label, spec.signature_name)
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        response = serving_apis.PredictResponse()
        for key, value in fn(**inputs).items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


@pytest.fixture(scope="module")
def fake_server(served):
    """The fake server on free loopback ports: REST (http.server) and gRPC."""
    import grpc

    fake = FakeTfServing(served["root"])

    class RestHandler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                status, answer = 200, fake.rest(self.path, body)
            except tf.errors.InvalidArgumentError as error:
                status, answer = 400, {"error": error.message}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
            try:
                return fake.grpc(request)
            except tf.errors.InvalidArgumentError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RestHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    grpc_server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    client = Client("127.0.0.1", rest_port=http_server.server_address[1], grpc_port=grpc_port)
    yield fake, client
    http_server.shutdown()
    grpc_server.stop(None)


def test_rest_request_is_the_documented_json():
    png, jpeg = encode(make_image(8, 9, 0), "png"), encode(make_image(5, 6, 1), "jpg")
    request = build_rest_request([png, jpeg], "unet", version="stable")
    assert request.path == "/v1/models/unet/labels/stable:predict"
    assert json.loads(request.json()) == {
        "signature_name": "serving_default",
        "instances": [
            {"image_bytes": {"b64": base64.b64encode(png).decode()}},
            {"image_bytes": {"b64": base64.b64encode(jpeg).decode()}},
        ],
    }
    assert build_rest_request(png, "unet", version=3).path == "/v1/models/unet/versions/3:predict"
    assert build_rest_request(png, "unet").path == "/v1/models/unet:predict"
    detection = build_rest_request(
        [png], "det", extra_inputs={"proposals": [[[1, 2, 3, 4]]], "num_proposals": [1]}
    )
    assert detection.body["instances"][0]["proposals"] == [[1, 2, 3, 4]]
    assert detection.body["instances"][0]["num_proposals"] == 1
    # An array is encoded losslessly as PNG.
    image = make_image(6, 7, 2)
    sent = json.loads(build_rest_request(image, "unet").json())["instances"][0]["image_bytes"]
    np.testing.assert_array_equal(decode_rgb(base64.b64decode(sent["b64"])), image)
    for bad in ({"version": 0}, {"version": -2}, {"version": ""}, {"model": "a/b"}):
        with pytest.raises(ValueError):
            build_rest_request(png, **{"model": "unet", **bad})
    with pytest.raises(ValueError, match="one row per image"):
        build_rest_request([png], "det", extra_inputs={"num_proposals": [1, 2]})


def test_grpc_request_is_a_predict_request():
    png = encode(make_image(8, 9, 0), "png")
    request = build_grpc_request([png, png], "unet", version="canary", signature="serving_default")
    parsed = serving_apis.PredictRequest.FromString(request.SerializeToString())
    assert parsed.model_spec.name == "unet"
    assert parsed.model_spec.signature_name == "serving_default"
    assert parsed.model_spec.version_label == "canary"
    assert not parsed.model_spec.HasField("version")
    tensor = parsed.inputs["image_bytes"]
    assert tensor.dtype == tf.string.as_datatype_enum
    assert [d.size for d in tensor.tensor_shape.dim] == [2]
    assert list(tensor.string_val) == [png, png]
    numbered = build_grpc_request(
        png, "det", version=7, extra_inputs={"proposals": np.zeros((1, 3, 4)), "num_proposals": [3]}
    )
    assert numbered.model_spec.version.value == 7 and numbered.model_spec.version_label == ""
    assert tf.make_ndarray(numbered.inputs["proposals"]).dtype == np.float32
    assert tf.make_ndarray(numbered.inputs["num_proposals"]).dtype == np.int32


def _expected_classes(model, images) -> list[np.ndarray]:
    scores = []
    for image in images:
        x = normalize_np(decode_rgb(encode(image, "png")), "caffe")
        scores.append(model.predict(x[None], verbose=0)[0])
    return scores


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_requests_round_trip_through_the_saved_model(served, fake_server, protocol):
    fake, client = fake_server
    images = served["images"]
    for version, expected_version in ((None, 2), (1, 1), ("stable", 1), ("canary", 2)):
        out = client.predict(images, model="unet", version=version, protocol=protocol)
        assert fake.calls[-1] == ("unet", expected_version, "serving_default")
        references = _expected_classes(served["models"][expected_version], images)
        np.testing.assert_array_equal(out["image_sizes"], [[37, 45], [30, 52]])
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            assert_classes_match(out["classes"][i, :height, :width], references[i])
            png = out["mask_png_bytes"][i]
            mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(mask, out["classes"][i, :height, :width])
    x = np.random.default_rng(0).normal(size=(1, 32, 40, 3)).astype(np.float32)
    if protocol == "grpc":
        request = build_grpc_request([b"unused"], "unet", version=2, signature="serving_tensor")
        del request.inputs["image_bytes"]
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(x))
        scores = parse_grpc_response(fake.grpc(request))["scores"]
    else:
        body = {"signature_name": "serving_tensor", "instances": [{"images": x[0].tolist()}]}
        scores = parse_rest_response(fake.rest("/v1/models/unet/versions/2:predict", body))[
            "scores"
        ]
    np.testing.assert_allclose(scores, served["models"][2].predict(x, verbose=0), atol=1e-4)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_bad_images_come_back_as_serving_errors(fake_server, protocol):
    _, client = fake_server
    with pytest.raises(ServingError, match="not a JPEG or PNG"):
        client.predict([b"GIF89a not really"], model="unet", protocol=protocol)
    with pytest.raises(ValueError, match="protocol"):
        client.predict([b"x"], model="unet", protocol="soap")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(
    shutil.which("tensorflow_model_server") is None,
    reason="tensorflow_model_server is not on PATH (it cannot be pip-installed; use the "
    "tensorflow/serving docker image or the TF Serving apt repository to run this test)",
)
def test_real_tensorflow_model_server(served, tmp_path):
    root = served["root"]
    rest_port, grpc_port = _free_port(), _free_port()
    command = [
        "tensorflow_model_server",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={root / 'models.config'}",
        "--enable_batching",
        f"--batching_parameters_file={root / 'batching.config'}",
        f"--monitoring_config_file={root / 'monitoring.config'}",
        "--allow_version_labels_for_unavailable_models=true",
    ]
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{rest_port}/v1/models/unet/versions/2"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if b"AVAILABLE" in response.read():
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "the server did not load the model in 60 s"
            time.sleep(0.5)
        client = Client("127.0.0.1", rest_port=rest_port, grpc_port=grpc_port)
        images = served["images"]
        for protocol in ("rest", "grpc"):
            for label, version in (("stable", 1), ("canary", 2)):
                out = client.predict(images, model="unet", version=label, protocol=protocol)
                references = _expected_classes(served["models"][version], images)
                for i, image in enumerate(images):
                    height, width = image.shape[:2]
                    assert_classes_match(out["classes"][i, :height, :width], references[i])
            with pytest.raises(ServingError, match="JPEG or PNG"):
                client.predict([b"garbage"], model="unet", protocol=protocol)
        metrics_url = f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics"
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            assert b":tensorflow:serving:request_count" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
