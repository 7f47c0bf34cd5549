"""Message classes for TF Serving's batching and monitoring config files.

The `tensorflow-serving-api` pip package ships the protos of `models.config`
(`ModelServerConfig`) but not those of the files given to `--batching_parameters_file`
(`BatchingParameters`, tensorflow_serving/servables/tensorflow/session_bundle_config.proto)
and `--monitoring_config_file` (`MonitoringConfig`,
tensorflow_serving/config/monitoring_config.proto). Their schemas are declared here, field
by field (names, numbers and types of the published definitions), in a private descriptor
pool, so the files can be parsed with `text_format` exactly as the server parses them.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_PACKAGE = "tensorflow.serving"
_FIELD = descriptor_pb2.FieldDescriptorProto
_WRAPPERS_FILE = "google/protobuf/wrappers.proto"

# (field name, number, label, type, message type name or None)
_BATCHING_PARAMETERS = (
    (
        "max_batch_size",
        1,
        _FIELD.LABEL_OPTIONAL,
        _FIELD.TYPE_MESSAGE,
        ".google.protobuf.Int64Value",
    ),
    (
        "batch_timeout_micros",
        2,
        _FIELD.LABEL_OPTIONAL,
        _FIELD.TYPE_MESSAGE,
        ".google.protobuf.Int64Value",
    ),
    (
        "max_enqueued_batches",
        3,
        _FIELD.LABEL_OPTIONAL,
        _FIELD.TYPE_MESSAGE,
        ".google.protobuf.Int64Value",
    ),
    (
        "num_batch_threads",
        4,
        _FIELD.LABEL_OPTIONAL,
        _FIELD.TYPE_MESSAGE,
        ".google.protobuf.Int64Value",
    ),
    (
        "thread_pool_name",
        5,
        _FIELD.LABEL_OPTIONAL,
        _FIELD.TYPE_MESSAGE,
        ".google.protobuf.StringValue",
    ),
    ("allowed_batch_sizes", 6, _FIELD.LABEL_REPEATED, _FIELD.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, _FIELD.LABEL_OPTIONAL, _FIELD.TYPE_BOOL, None),
)
_PROMETHEUS_CONFIG = (
    ("enable", 1, _FIELD.LABEL_OPTIONAL, _FIELD.TYPE_BOOL, None),
    ("path", 2, _FIELD.LABEL_OPTIONAL, _FIELD.TYPE_STRING, None),
)
_MONITORING_CONFIG = (
    (
        "prometheus_config",
        1,
        _FIELD.LABEL_OPTIONAL,
        _FIELD.TYPE_MESSAGE,
        f".{_PACKAGE}.PrometheusConfig",
    ),
)


def _add_message(file_proto: descriptor_pb2.FileDescriptorProto, name: str, fields) -> None:
    message = file_proto.message_type.add(name=name)
    for field_name, number, label, field_type, type_name in fields:
        field = message.field.add(name=field_name, number=number, label=label, type=field_type)
        if type_name is not None:
            field.type_name = type_name


@functools.lru_cache(maxsize=1)
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    batching = descriptor_pb2.FileDescriptorProto(
        name="keras_dense/serving/session_bundle_config_batching.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[_WRAPPERS_FILE],
    )
    _add_message(batching, "BatchingParameters", _BATCHING_PARAMETERS)
    pool.Add(batching)
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="keras_dense/serving/monitoring_config.proto", package=_PACKAGE, syntax="proto3"
    )
    _add_message(monitoring, "PrometheusConfig", _PROMETHEUS_CONFIG)
    _add_message(monitoring, "MonitoringConfig", _MONITORING_CONFIG)
    pool.Add(monitoring)
    return pool


def batching_parameters_class():
    """The `tensorflow.serving.BatchingParameters` message class."""
    return message_factory.GetMessageClass(
        _pool().FindMessageTypeByName(f"{_PACKAGE}.BatchingParameters")
    )


def monitoring_config_class():
    """The `tensorflow.serving.MonitoringConfig` message class."""
    return message_factory.GetMessageClass(
        _pool().FindMessageTypeByName(f"{_PACKAGE}.MonitoringConfig")
    )
