"""Export to SavedModel for TF Serving: signatures on image bytes, checks, atomic versions."""

from keras_dense.export.model_checks import NonFiniteWeightsError, check_finite_weights
from keras_dense.export.op_audit import (
    OpAuditError,
    audit_graph_def,
    audit_saved_model,
    stock_op_names,
)
from keras_dense.export.saved_model_export import ExportResult, export_saved_model
from keras_dense.export.served_models import DifferentModelError, check_same_model
from keras_dense.export.versions import VersionExistsError, list_versions

__all__ = [
    "DifferentModelError",
    "ExportResult",
    "NonFiniteWeightsError",
    "OpAuditError",
    "VersionExistsError",
    "audit_graph_def",
    "audit_saved_model",
    "check_finite_weights",
    "check_same_model",
    "export_saved_model",
    "list_versions",
    "stock_op_names",
]
