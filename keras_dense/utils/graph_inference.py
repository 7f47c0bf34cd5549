"""A Keras model's inference call, run as a TensorFlow graph traced once per model.

Called eagerly, a detector dispatches each of its thousands of small ops from Python (RoIAlign
per level, proposal decoding, NMS): on 2 CPU cores one BCCD image through the trained Faster
R-CNN + FPN of the README's Results took 1.79 s that way and 1.08 s as a graph, with the same
detections (`benchmarks/graph_inference.py` measures both in one run). `predict_on_batch`
compiles too, but returns NumPy and may use XLA; this keeps tensors and the model's own ops.
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf

# model -> its graph function. Weak keys: a model that is freed takes its graph with it (the
# function holds only a weak reference back to the model).
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_graph(model: keras.Layer) -> tf.types.experimental.GenericFunction:
    """`model(inputs, training=False)` as a `tf.function`, made once per model.

    The function generalises its input shapes after two different ones
    (`reduce_retracing=True`), so images of several sizes trace it at most twice. It reads the
    model's variables when called, so weights set after it was made are used.

    Args:
        model: A Keras layer or model.

    Returns:
        The model's graph function, taking the model's inputs.
    """
    graph = _GRAPHS.get(model)
    if graph is None:
        owner = weakref.ref(model)

        def call(inputs):
            return owner()(inputs, training=False)

        graph = tf.function(call, reduce_retracing=True)
        _GRAPHS[model] = graph
    return graph


def run_inference(model, inputs):
    """`model(inputs, training=False)`, as a graph where that helps.

    Eagerly, a Keras model runs through `inference_graph`; inside a `tf.function` (an export
    signature) and for any other callable the call is made as it is.

    Args:
        model: A Keras model, or any callable taking `training`.
        inputs: The model's inputs (tensors or NumPy arrays, nested as the model expects).

    Returns:
        The model's outputs, as tensors.
    """
    if isinstance(model, keras.Layer) and tf.executing_eagerly():
        return inference_graph(model)(inputs)
    return model(inputs, training=False)
