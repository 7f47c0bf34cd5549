"""Op audit: does a SavedModel need only ops that stock TensorFlow (and TF Serving) has?

Every node of every meta graph is checked, and every node of every function of the graph's
function library (the bodies of tf.functions, while loops, conds, map_fn, ...), since a
custom op hidden in a nested function fails at serving time just the same. A node's op is
stock when it is a public op of TensorFlow (`tf.raw_ops`, a static list built with TensorFlow:
ops loaded at run time with `tf.load_op_library` never appear there) or a call of a function
of the library.
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import saved_model_pb2


class OpAuditError(ValueError):
    """The graph needs ops outside stock TensorFlow.

    Attributes:
        unknown_ops: `{op name: sorted places (graph / function names) using it}`.
    """

    def __init__(self, unknown_ops: dict[str, list[str]], source: str):
        self.unknown_ops = unknown_ops
        listed = "; ".join(
            f"{op} (in {', '.join(places[:3])}{', ...' if len(places) > 3 else ''})"
            for op, places in sorted(unknown_ops.items())
        )
        super().__init__(
            f"{source} needs ops that stock TensorFlow / TF Serving does not have: {listed}. "
            "Replace the layers using them by pure-TensorFlow versions before exporting."
        )


@functools.lru_cache(maxsize=1)
def stock_op_names() -> frozenset[str]:
    """Names of the public ops of the installed TensorFlow (`tf.raw_ops`)."""
    return frozenset(name for name in dir(tf.raw_ops) if not name.startswith("_"))


def graph_ops(graph_def: graph_pb2.GraphDef, graph_name: str = "graph") -> dict[str, set[str]]:
    """Ops used by a graph and all the functions of its library.

    Args:
        graph_def: The graph.
        graph_name: Name of the top-level graph in the result.

    Returns:
        `{op name: set of places}`, a place being `graph_name` or a library function's name.
    """
    used: dict[str, set[str]] = {}
    for node in graph_def.node:
        used.setdefault(node.op, set()).add(graph_name)
    for function in graph_def.library.function:
        for node in function.node_def:
            used.setdefault(node.op, set()).add(function.signature.name)
    return used


def audit_graph_def(
    graph_def: graph_pb2.GraphDef, allowed: frozenset[str] | None = None
) -> dict[str, list[str]]:
    """Ops of a graph (nested functions included) that are neither stock nor library calls.

    Args:
        graph_def: The graph.
        allowed: Stock op names (default: `stock_op_names()`).

    Returns:
        `{unknown op: sorted places}`; empty when the graph is clean.
    """
    allowed = stock_op_names() if allowed is None else allowed
    functions = {f.signature.name for f in graph_def.library.function}
    return {
        op: sorted(places)
        for op, places in graph_ops(graph_def).items()
        if op not in allowed and op not in functions
    }


def audit_saved_model(path: str | os.PathLike, allowed: frozenset[str] | None = None) -> None:
    """Checks every meta graph of a SavedModel directory.

    Args:
        path: The SavedModel directory (holding `saved_model.pb`).
        allowed: Stock op names (default: `stock_op_names()`).

    Raises:
        OpAuditError: Some op is outside stock TensorFlow.
        FileNotFoundError: No `saved_model.pb` there.
    """
    pb_path = os.path.join(os.fspath(path), "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise FileNotFoundError(f"{path}: no saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    unknown: dict[str, set[str]] = {}
    for index, meta_graph in enumerate(saved_model.meta_graphs):
        for op, places in audit_graph_def(meta_graph.graph_def, allowed).items():
            unknown.setdefault(op, set()).update(f"meta_graph[{index}]/{p}" for p in places)
    if unknown:
        raise OpAuditError({op: sorted(p) for op, p in unknown.items()}, os.fspath(path))
