"""TF Serving configs: models.config parses as ModelServerConfig with the right labels, and
batching/monitoring configs match the wire format of the published protos."""

from __future__ import annotations

import os

import pytest
from google.protobuf import text_format

from keras_dense import cli
from keras_dense.serving.configs import (
    BatchingOptions,
    batching_config_text,
    monitoring_config_text,
    parse_batching_config,
    parse_monitoring_config,
    stable_and_canary,
    write_serving_configs,
)


def _fake_exports(root) -> None:
    """Folders shaped like exports: only integer folders holding saved_model.pb count."""
    for name, versions in {"alpha": [1, 2, 3], "beta": [4], "gamma": []}.items():
        for version in versions:
            (root / name / str(version)).mkdir(parents=True)
            (root / name / str(version) / "saved_model.pb").write_bytes(b"")
    (root / "alpha" / "7").mkdir()  # no saved_model.pb: ignored
    (root / "alpha" / ".tmp-9-x").mkdir()  # an export in progress: ignored
    (root / "gamma" / "notes").mkdir(parents=True)
    (root / "README.md").write_text("not a model")


def _serving_protos():
    return pytest.importorskip(
        "tensorflow_serving.config.model_server_config_pb2",
        reason="tensorflow-serving-api is not installed (pip install 'keras-dense[serving]')",
    )


def test_models_config_lists_each_model_with_stable_and_canary(tmp_path):
    protos = _serving_protos()
    _fake_exports(tmp_path)
    written = write_serving_configs(tmp_path, tmp_path / "configs", base_path="/models")
    assert written.models == {"alpha": [1, 2, 3], "beta": [4]}
    assert written.models_config_validated
    with open(written.models_config) as f:
        config = text_format.Parse(f.read(), protos.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["alpha", "beta"]
    alpha, beta = entries["alpha"], entries["beta"]
    assert alpha.base_path == "/models/alpha" and alpha.model_platform == "tensorflow"
    assert list(alpha.model_version_policy.specific.versions) == [2, 3]
    assert dict(alpha.version_labels) == {"stable": 2, "canary": 3}
    assert list(beta.model_version_policy.specific.versions) == [4]
    assert dict(beta.version_labels) == {"stable": 4, "canary": 4}
    assert sorted(os.listdir(tmp_path / "configs")) == [
        "batching.config",
        "models.config",
        "monitoring.config",
    ]


def test_stable_is_the_older_of_the_two_newest():
    assert stable_and_canary([3, 10, 2]) == (3, 10)
    assert stable_and_canary([5]) == (5, 5)
    with pytest.raises(ValueError):
        stable_and_canary([])


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def test_batching_config_has_the_published_wire_format():
    text = batching_config_text(BatchingOptions(max_batch_size=8, num_batch_threads=3))
    params = parse_batching_config(text)
    # Field numbers of tensorflow_serving/servables/tensorflow/session_bundle_config.proto,
    # encoded by hand: Int64Value wrappers (field 1 inside), packed int64, bool.
    int64_value = lambda n, v: _field(n, 2, _field(1, 0, _varint(v)))  # noqa: E731
    expected = (
        int64_value(1, 8)  # max_batch_size
        + int64_value(2, 5000)  # batch_timeout_micros
        + int64_value(3, 64)  # max_enqueued_batches
        + int64_value(4, 3)  # num_batch_threads
        + _field(6, 2, b"".join(_varint(v) for v in (1, 2, 4, 8)))  # allowed_batch_sizes
        + _field(7, 0, _varint(1))  # pad_variable_length_inputs
    )
    assert params.SerializeToString(deterministic=True) == expected
    assert BatchingOptions(max_batch_size=6).allowed_batch_sizes() == [1, 2, 4, 6]


def test_batching_config_rules_and_typos_are_caught():
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        parse_batching_config("max_batch_sise { value: 8 }")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        parse_batching_config("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        parse_batching_config(
            "max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 "
            "allowed_batch_sizes: 8"
        )
    with pytest.raises(ValueError, match="max_batch_size"):
        batching_config_text(BatchingOptions(max_batch_size=0))


def test_monitoring_config_has_the_published_wire_format():
    config = parse_monitoring_config(monitoring_config_text("/metrics"))
    # monitoring_config.proto: MonitoringConfig.prometheus_config = 1;
    # PrometheusConfig.enable = 1, path = 2.
    expected = _field(1, 2, _field(1, 0, b"\x01") + _field(2, 2, b"/metrics"))
    assert config.SerializeToString(deterministic=True) == expected
    with pytest.raises(text_format.ParseError):
        parse_monitoring_config("prometheus_config { enabled: true }")


def test_serving_config_command(tmp_path, capsys):
    _serving_protos()
    _fake_exports(tmp_path / "saved_models")
    argv = ["serving-config", "--models", str(tmp_path / "saved_models")]
    assert cli.main([*argv, "--output", str(tmp_path / "out"), "--max-batch-size", "4"]) == 0
    assert "alpha: versions [1, 2, 3]" in capsys.readouterr().out
    batching = parse_batching_config((tmp_path / "out" / "batching.config").read_text())
    assert list(batching.allowed_batch_sizes) == [1, 2, 4]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["serving-config", "--models", str(empty), "--output", str(empty)]) == 2
    assert "no exported model" in capsys.readouterr().err
    assert cli.main(["serving-config", "--models", str(tmp_path / "nope"), "--output", "x"]) == 2
