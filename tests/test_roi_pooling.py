"""RoIPooling against NumPy loop references written from the papers' definitions."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.layers import RoIPooling
from keras_dense.layers.roi_pooling import (
    resolve_roi_implementation,
    roi_max_pool,
    round_half_away_from_zero,
    use_portable_roi_pooling,
)
from keras_dense.ops import loader


def c_round(value: float) -> int:
    """C's round(): halves away from zero (exact for float32 inputs, computed in float64)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def caffe_roi_pool(features, rois, pool, scale):
    """Literal transcription of Fast R-CNN's Caffe ROIPoolingLayer::Forward_cpu.

    Returns the pooled output and, per output element, the (h, w) of its argmax (-1 if empty).
    """
    batch, height, width, channels = features.shape
    count = rois.shape[1]
    out = np.zeros((batch, count, pool, pool, channels), np.float32)
    argmax = np.full((batch, count, pool, pool, channels, 2), -1)
    for b in range(batch):
        for r in range(count):
            y0, x0, y1, x1 = [c_round(np.float32(v) * np.float32(scale)) for v in rois[b, r]]
            roi_h = max(y1 - y0 + 1, 1)
            roi_w = max(x1 - x0 + 1, 1)
            bin_h = np.float32(roi_h) / np.float32(pool)  # Dtype (float32) arithmetic
            bin_w = np.float32(roi_w) / np.float32(pool)
            for ph in range(pool):
                for pw in range(pool):
                    hs = int(np.floor(np.float32(ph) * bin_h))
                    he = int(np.ceil(np.float32(ph + 1) * bin_h))
                    ws = int(np.floor(np.float32(pw) * bin_w))
                    we = int(np.ceil(np.float32(pw + 1) * bin_w))
                    hs, he = min(max(hs + y0, 0), height), min(max(he + y0, 0), height)
                    ws, we = min(max(ws + x0, 0), width), min(max(we + x0, 0), width)
                    if he <= hs or we <= ws:
                        continue  # empty bin: output 0, no argmax
                    for c in range(channels):
                        best = -np.finfo(np.float32).max
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if features[b, h, w, c] > best:  # strict: first max wins
                                    best = features[b, h, w, c]
                                    argmax[b, r, ph, pw, c] = (h, w)
                        out[b, r, ph, pw, c] = best
    return out, argmax


def argmax_gradient(features_shape, argmax, upstream):
    """Caffe's backward: each output's gradient goes to its argmax cell only."""
    grad = np.zeros(features_shape, np.float32)
    for index in np.ndindex(*upstream.shape):
        h, w = argmax[index]
        if h >= 0:
            grad[index[0], h, w, index[4]] += upstream[index]
    return grad


def random_rois(rng, batch, count, height, width, scale):
    """Boxes of all kinds: inside, partly/wholly outside, tiny, inverted and huge."""
    span_y, span_x = height / scale, width / scale
    y0 = rng.uniform(-0.5 * span_y, 1.2 * span_y, (batch, count))
    x0 = rng.uniform(-0.5 * span_x, 1.2 * span_x, (batch, count))
    h = rng.uniform(-20.0, 1.5 * span_y, (batch, count))
    w = rng.uniform(-20.0, 1.5 * span_x, (batch, count))
    return np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)


def pooled_and_grad(layer, features, rois, upstream, graph: bool):
    def run(f, r):
        with tf.GradientTape() as tape:
            tape.watch(f)
            y = layer([f, r])
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, f)

    if graph:
        spec = [tf.TensorSpec([None, None, None, None]), tf.TensorSpec([None, None, 4])]
        run = tf.function(run, input_signature=spec)
    y, g = run(tf.constant(features), tf.constant(rois))
    return y.numpy(), g.numpy()


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("pool,scale", [(3, 1 / 16), (7, 1 / 8)])
def test_matches_caffe_reference_with_ties_and_argmax_gradient(pool, scale, graph):
    rng = np.random.default_rng(pool)
    batch, height, width, channels = 3, 9, 12, 2
    # Small integers: plenty of ties, so the argmax choice (first in row-major order) matters.
    features = rng.integers(-3, 4, (batch, height, width, channels)).astype(np.float32)
    rois = random_rois(rng, batch, 16, height, width, scale)
    upstream = rng.normal(size=(batch, 16, pool, pool, channels)).astype(np.float32)
    expected, argmax = caffe_roi_pool(features, rois, pool, scale)
    assert (argmax[..., 0] < 0).any() and (argmax[..., 0] >= 0).any()  # empty bins exercised

    got, grad = pooled_and_grad(RoIPooling(pool, scale), features, rois, upstream, graph)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(grad, argmax_gradient(features.shape, argmax, upstream), atol=1e-5)


def test_edge_cases_one_by_one():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    s = 16.0
    rois = np.array(
        [
            [
                [-100 * s, -100 * s, -50 * s, -50 * s],  # wholly outside (top-left)
                [10 * s, 10 * s, 20 * s, 20 * s],  # wholly outside (bottom-right)
                [-3 * s, -3 * s, 2 * s, 3 * s],  # partly outside
                [2 * s, 3 * s, 2 * s, 3 * s],  # a single cell
                [3 * s, 4 * s, 1 * s, 1 * s],  # inverted: size floored at 1
                [-40 * s, -40 * s, 60 * s, 70 * s],  # much larger than the map
                [0, 0, 5 * s, 6 * s],  # exactly the map
            ],
            [
                [0, 0, 5 * s, 6 * s],  # batch index 1 must read image 1
                [1 * s, 2 * s, 4 * s, 6 * s],
                [0.2 * s, 0.3 * s, 0.4 * s, 0.45 * s],  # tiny, sub-cell
                [5 * s, 6 * s, 5 * s, 6 * s],  # last cell
                [-60 * s, 0, -1 * s, 6 * s],  # above the map
                [0, 0, 0, 0],  # padding row
                [2 * s, -9 * s, 3 * s, 9 * s],
            ],
        ],
        np.float32,
    )
    expected, _ = caffe_roi_pool(features, rois, 2, 1 / 16)
    got = RoIPooling(2, 1 / 16)([features, rois]).numpy()
    np.testing.assert_array_equal(got, expected)
    # Hand-derived facts, independent of the reference:
    np.testing.assert_array_equal(got[0, 0], 0.0)  # outside -> every bin empty -> 0
    np.testing.assert_array_equal(got[0, 1], 0.0)
    np.testing.assert_array_equal(got[0, 3], np.broadcast_to(features[0, 2, 3], (2, 2, 3)))
    np.testing.assert_array_equal(got[1, 3], np.broadcast_to(features[1, 5, 6], (2, 2, 3)))
    whole = features[1].max(axis=(0, 1))
    np.testing.assert_array_equal(got[1, 0].max(axis=(0, 1)), whole)
    assert not np.array_equal(got[1, 0], got[0, 6])  # the batch index is honoured


def test_rounding_is_half_away_from_zero():
    x = tf.constant([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 2.4, -2.6])
    np.testing.assert_array_equal(
        round_half_away_from_zero(x).numpy(), [1, 2, 3, -1, -2, -3, 0, 2, -3]
    )
    # y = x = 8 px at scale 1/16 is 0.5 cells: C's round gives cell 1, banker's would give 0.
    features = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    rois = np.array([[[8.0, 8.0, 8.0, 8.0], [24.0, 40.0, 24.0, 40.0]]], np.float32)
    got = RoIPooling(1, 1 / 16)([features, rois]).numpy()
    assert got[0, 0, 0, 0, 0] == features[0, 1, 1, 0]  # round(0.5) = 1
    assert got[0, 1, 0, 0, 0] == features[0, 2, 3, 0]  # round(1.5) = 2, round(2.5) = 3


def test_float32_bin_edges_like_caffe():
    # A 57-cell RoI with pool 7: in float32, 7 * (57 / 7) rounds up to 57.000004, so Caffe's
    # last bin ends at 58 (one row past the RoI). The layer reproduces that.
    features = np.zeros((1, 64, 2, 1), np.float32)
    features[0, 57, :, 0] = 5.0  # the row just past the RoI
    rois = np.array([[[0.0, 0.0, 56.0, 1.0]]], np.float32)
    got = RoIPooling(7, 1.0)([features, rois]).numpy()
    expected, _ = caffe_roi_pool(features, rois, 7, 1.0)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0, 6, :, 0].max() == 5.0


def test_dynamic_batch_and_roi_count_in_a_model():
    features_in = keras.Input((None, None, 4))
    rois_in = keras.Input((None, 4))
    layer = RoIPooling(3, 0.5, name="pool")
    out = layer([features_in, rois_in])
    assert tuple(out.shape) == (None, None, 3, 3, 4)
    model = keras.Model([features_in, rois_in], out)
    rng = np.random.default_rng(3)
    for batch, count in [(1, 1), (2, 5), (3, 0)]:
        features = rng.normal(size=(batch, 5, 6, 4)).astype(np.float32)
        rois = random_rois(rng, batch, count, 5, 6, 0.5)
        got = model.predict([features, rois], verbose=0)
        assert got.shape == (batch, count, 3, 3, 4)
        np.testing.assert_array_equal(got, caffe_roi_pool(features, rois, 3, 0.5)[0])


def detectron_roi_align(features, rois, pool, scale, ratio):
    """Loop transcription of Detectron's (legacy) RoIAlign forward, with per-cell weights."""
    batch, height, width, channels = features.shape
    out = np.zeros((batch, rois.shape[1], pool, pool, channels))
    weights = np.zeros((batch, rois.shape[1], pool, pool, batch, height, width))

    def corners(v, size):
        if v <= 0:
            v = 0.0
        low = int(v)
        if low >= size - 1:
            return size - 1, size - 1, 0.0
        return low, low + 1, v - low

    for b in range(batch):
        for r in range(rois.shape[1]):
            y0, x0, y1, x1 = [float(v) * scale for v in rois[b, r]]
            bin_h = max(y1 - y0, 1.0) / pool
            bin_w = max(x1 - x0, 1.0) / pool
            for ph in range(pool):
                for pw in range(pool):
                    for iy in range(ratio):
                        y = y0 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                        for ix in range(ratio):
                            x = x0 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                            if y < -1.0 or y > height or x < -1.0 or x > width:
                                continue
                            yl, yh, ly = corners(y, height)
                            xl, xh, lx = corners(x, width)
                            cells = [
                                (yl, xl, (1 - ly) * (1 - lx)),
                                (yl, xh, (1 - ly) * lx),
                                (yh, xl, ly * (1 - lx)),
                                (yh, xh, ly * lx),
                            ]
                            for cy, cx, wgt in cells:
                                wgt /= ratio * ratio
                                out[b, r, ph, pw] += wgt * features[b, cy, cx]
                                weights[b, r, ph, pw, b, cy, cx] += wgt
    return out, weights


@pytest.mark.parametrize("ratio", [1, 2])
def test_roi_align_matches_detectron_reference_and_gradient(ratio):
    rng = np.random.default_rng(ratio)
    features = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    rois = random_rois(rng, 2, 10, 6, 7, 0.25)
    expected, weights = detectron_roi_align(features, rois, 3, 0.25, ratio)
    layer = RoIPooling(3, 0.25, mode="align", sampling_ratio=ratio)
    upstream = rng.normal(size=expected.shape).astype(np.float32)
    got, grad = pooled_and_grad(layer, features, rois, upstream, graph=False)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # The output is linear in the features: the gradient is the weights times the upstream.
    expected_grad = np.einsum("brpqc,brpqnhw->nhwc", upstream, weights)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-4)


def test_config_round_trip_and_bad_arguments():
    layer = RoIPooling((2, 3), 0.125, mode="align", sampling_ratio=3, name="r")
    clone = RoIPooling.from_config(layer.get_config())
    assert (clone.pool_size, clone.spatial_scale, clone.mode, clone.sampling_ratio) == (
        (2, 3),
        0.125,
        "align",
        3,
    )
    with pytest.raises(ValueError, match="pool_size"):
        RoIPooling(0)
    with pytest.raises(ValueError, match="spatial_scale"):
        RoIPooling(7, 0.0)
    with pytest.raises(ValueError, match="mode"):
        RoIPooling(7, mode="avg")
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoIPooling(7, mode="align", sampling_ratio=0)


IMPLEMENTATIONS = ["tf", "custom_op"]


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_each_implementation_matches_caffe_reference_and_gradient(implementation, graph):
    # 67 channels: the compiled kernel's 64-channel blocks, 4-lane groups and scalar tail.
    rng = np.random.default_rng(11)
    batch, height, width, channels, pool, scale = 2, 9, 12, 67, 3, 1 / 16
    features = rng.integers(-3, 4, (batch, height, width, channels)).astype(np.float32)
    rois = random_rois(rng, batch, 8, height, width, scale)
    upstream = rng.normal(size=(batch, 8, pool, pool, channels)).astype(np.float32)
    expected, argmax = caffe_roi_pool(features, rois, pool, scale)
    layer = RoIPooling(pool, scale, implementation=implementation)
    got, grad = pooled_and_grad(layer, features, rois, upstream, graph)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(grad, argmax_gradient(features.shape, argmax, upstream), atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_each_implementation_in_half_precision(implementation, dtype):
    rng = np.random.default_rng(12)
    features = rng.integers(-8, 9, (1, 6, 7, 5)).astype(np.float32)  # exact in half precision
    rois = random_rois(rng, 1, 6, 6, 7, 0.5)
    upstream = rng.integers(-4, 5, (1, 6, 2, 2, 5)).astype(np.float32)
    expected, argmax = caffe_roi_pool(features, rois, 2, 0.5)
    policy = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[dtype]
    layer = RoIPooling(2, 0.5, implementation=implementation, dtype=policy)
    features_t = tf.cast(tf.constant(features), dtype)
    with tf.GradientTape() as tape:
        tape.watch(features_t)
        got = layer([features_t, tf.constant(rois)])
        loss = tf.reduce_sum(got * tf.cast(upstream, dtype))
    grad = tape.gradient(loss, features_t)
    assert got.dtype == dtype and grad.dtype == dtype
    np.testing.assert_array_equal(tf.cast(got, tf.float32).numpy(), expected)
    expected_grad = argmax_gradient(features.shape, argmax, upstream)
    np.testing.assert_array_equal(tf.cast(grad, tf.float32).numpy(), expected_grad)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_each_implementation_with_no_rois(implementation):
    features = tf.ones([2, 4, 5, 3])
    rois = tf.zeros([2, 0, 4])
    with tf.GradientTape() as tape:
        tape.watch(features)
        got = RoIPooling(2, 1.0, implementation=implementation)([features, rois])
        loss = tf.reduce_sum(got)
    assert tuple(got.shape) == (2, 0, 2, 2, 3)
    np.testing.assert_array_equal(tape.gradient(loss, features).numpy(), 0.0)


def test_portable_switch_and_implementation_argument():
    inputs = [keras.Input((None, None, 3)), keras.Input((None, 4))]
    model = keras.Model(inputs, RoIPooling(2, 0.5, name="pool")(inputs))
    assert model.get_layer("pool").implementation == "auto"
    assert use_portable_roi_pooling(model) is model
    assert model.get_layer("pool").implementation == "tf"
    assert RoIPooling.from_config(model.get_layer("pool").get_config()).implementation == "tf"
    with pytest.raises(ValueError, match="implementation"):
        RoIPooling(2, implementation="cuda")
    with pytest.raises(ValueError, match="custom_op"):
        features64 = tf.zeros([1, 2, 2, 1], tf.float64)
        roi_max_pool(features64, tf.zeros([1, 1, 4]), (2, 2), 1.0, "custom_op")


def test_auto_without_a_compiler_falls_back_to_the_tf_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_library", None)
    monkeypatch.setattr(loader, "_warned_no_compiler", False)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler"):
        assert resolve_roi_implementation("auto", tf.float32) == "tf"
    assert resolve_roi_implementation("auto", tf.float64) == "tf"
    rng = np.random.default_rng(13)
    features = rng.normal(size=(1, 5, 6, 3)).astype(np.float32)
    rois = random_rois(rng, 1, 4, 5, 6, 0.5)
    got = RoIPooling(2, 0.5)([features, rois]).numpy()  # warned once already
    np.testing.assert_array_equal(got, caffe_roi_pool(features, rois, 2, 0.5)[0])
