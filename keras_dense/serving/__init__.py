"""TF Serving: config files for exported models and a REST/gRPC client."""

from keras_dense.serving.client import (
    Client,
    RestRequest,
    ServingError,
    build_grpc_request,
    build_rest_request,
    parse_grpc_response,
    parse_rest_response,
)
from keras_dense.serving.configs import BatchingOptions, find_models, write_serving_configs

__all__ = [
    "BatchingOptions",
    "Client",
    "RestRequest",
    "ServingError",
    "build_grpc_request",
    "build_rest_request",
    "find_models",
    "parse_grpc_response",
    "parse_rest_response",
    "write_serving_configs",
]
