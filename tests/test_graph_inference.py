"""`keras_dense.utils.graph_inference`: a model's inference call as a graph, traced once."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_dense.utils import graph_inference
from keras_dense.utils.graph_inference import inference_graph, run_inference


def small_model(seed: int = 0) -> keras.Model:
    """Convolution, BatchNorm and Dropout: inference and training calls differ."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(images)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(images, keras.layers.GlobalAveragePooling2D()(x))


def test_graph_call_equals_the_eager_inference_call():
    model = small_model()
    x = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(run_inference(model, x)), want, atol=1e-6)
    # Not the training call: dropout and batch statistics would change it.
    assert not np.allclose(np.asarray(model(x, training=True)), want, atol=1e-3)


def test_one_trace_per_shape_and_at_most_two_over_many_sizes():
    model = small_model()
    graph = inference_graph(model)
    assert inference_graph(model) is graph
    rng = np.random.default_rng(1)
    for _ in range(3):
        run_inference(model, rng.normal(size=(1, 16, 16, 3)).astype(np.float32))
    assert graph.experimental_get_tracing_count() == 1
    for size in (20, 24, 28, 32):
        run_inference(model, rng.normal(size=(1, size, size + 4, 3)).astype(np.float32))
    assert graph.experimental_get_tracing_count() == 2  # the second shape relaxes to None


def test_weights_set_after_tracing_are_used():
    model, other = small_model(0), small_model(1)
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 3)).astype(np.float32)
    run_inference(model, x)
    model.set_weights(other.get_weights())
    np.testing.assert_allclose(
        np.asarray(run_inference(model, x)), np.asarray(other(x, training=False)), atol=1e-6
    )


def test_inside_a_tf_function_and_for_other_callables_the_call_is_made_as_it_is():
    model = small_model()
    x = tf.zeros((1, 8, 8, 3))

    @tf.function
    def outer(images):
        return run_inference(model, images)

    outer(x)
    assert model not in graph_inference._GRAPHS
    calls = []

    def fake(inputs, training=None):
        calls.append(training)
        return inputs

    assert run_inference(fake, 3) == 3 and calls == [False]


def test_a_freed_model_leaves_no_graph_behind():
    model = small_model()
    run_inference(model, np.zeros((1, 8, 8, 3), np.float32))
    assert model in graph_inference._GRAPHS
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the cache held neither the model nor a path back to it
