"""Learned filters on the permutohedral lattice: stencils, the NumPy reference, gradients."""

from __future__ import annotations

import itertools

import lattice_reference
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.ops import (
    lattice_convolution_op,
    lattice_stencil,
    loader,
    permutohedral,
    permutohedral_tf,
)
from keras_dense.ops.lattice_convolution import (
    lattice_convolve,
    lattice_neighbors,
    lattice_point_keys,
)


def _needs_op():
    if loader.find_compiler() is None and not loader.library_path().exists():
        pytest.skip("no C++ compiler to build the lattice ops (set $CXX or install g++)")


@pytest.fixture(params=["tf", "custom_op"])
def implementation(request):
    """Each test runs on the stock-TF twin and on the compiled ops."""
    if request.param == "custom_op":
        _needs_op()
    return request.param


def _points(d: int, batch: int = 2, points: int = 23, seed: int = 0, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, spread, (batch, points, d)).astype(np.float32)
    return features


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("radius", [1, 2])
def test_stencil_counts_offsets_and_opposites(d, radius):
    multipliers = lattice_stencil.stencil_multipliers(d, radius)
    assert len(multipliers) == (radius + 1) ** (d + 1) - radius ** (d + 1)
    assert not multipliers[0].any()  # the centre comes first
    # Brute force: lattice points within the box, as full coordinates, distinct.
    steps = (d + 1) * np.eye(d + 1, dtype=np.int64) - 1
    full = {tuple(k @ steps) for k in multipliers}
    assert len(full) == len(multipliers)
    for k in itertools.product(range(-radius, radius + 1), repeat=d + 1):
        k = np.array(k)
        if k.max() - k.min() <= radius:
            assert tuple(k @ steps) in full  # every shift-equivalent k is one tap
    offsets = lattice_stencil.stencil_offsets(d, radius)
    np.testing.assert_array_equal(offsets, (multipliers @ steps)[:, :d])
    opposite = lattice_stencil.opposite_taps(d, radius)
    np.testing.assert_array_equal(offsets[opposite], -offsets)
    np.testing.assert_array_equal(opposite[opposite], np.arange(len(offsets)))


def test_bad_radius_and_form_are_named():
    with pytest.raises(ValueError, match="radius must be 1 or 2"):
        lattice_stencil.stencil_offsets(2, 3)
    with pytest.raises(ValueError, match="form must be one of"):
        lattice_stencil.check_form("dense")


@pytest.mark.parametrize("d", [2, 5])
def test_point_keys_are_the_reference_lattice(d):
    features = _points(d, batch=1)
    lattice = permutohedral_tf.build_lattice(features)
    keys = lattice_point_keys(features, lattice).numpy()[0]
    table, _, _ = lattice_reference.build(features[0].astype(np.float64))
    assert int(lattice.num_points[0]) == len(table)
    np.testing.assert_array_equal(keys[: len(table)], np.array(list(table))[:, :d])


@pytest.mark.parametrize(("d", "radius"), [(2, 1), (2, 2), (5, 1)])
def test_general_convolution_equals_numpy_reference(d, radius, implementation):
    features = _points(d)
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, features.shape[:2] + (3,)).astype(np.float32)
    count = len(lattice_stencil.stencil_offsets(d, radius))
    taps = rng.normal(0.0, 0.5, (count, 3, 4)).astype(np.float32)
    lattice = permutohedral_tf.build_lattice(features)
    neighbors = lattice_neighbors(features, lattice, radius, "general")
    out = lattice_convolve(values, neighbors, taps, implementation).numpy()
    rows = neighbors.rows.numpy().T
    max_points = lattice.blur_neighbors.shape[1]
    for b in range(features.shape[0]):
        expected, table = lattice_reference.convolve(
            features[b].astype(np.float64), values[b], taps.astype(np.float64), radius
        )
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-5)
        # The neighbour table itself, exactly (global rows back to this image's numbering).
        local = rows[b * max_points : b * max_points + len(table)]
        local = np.where(local == rows.shape[0], -1, local - b * max_points)
        np.testing.assert_array_equal(local, table)


def test_shared_taps_equal_diagonal_matrices(implementation):
    features, radius = _points(2), 1
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 1.0, features.shape[:2] + (3,)).astype(np.float32)
    shared = rng.normal(0.0, 1.0, (7,)).astype(np.float32)
    neighbors = lattice_neighbors(features, permutohedral_tf.build_lattice(features), radius)
    full = shared[:, None, None] * np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(
        lattice_convolve(values, neighbors, shared, implementation).numpy(),
        lattice_convolve(values, neighbors, full, implementation).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize(("d", "radius"), [(2, 1), (2, 2), (5, 1)])
def test_separable_convolution_equals_numpy_reference(d, radius, implementation):
    features = _points(d)
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, features.shape[:2] + (2,)).astype(np.float32)
    taps = rng.normal(0.0, 0.5, (d + 1, 2 * radius + 1)).astype(np.float32)
    lattice = permutohedral_tf.build_lattice(features)
    neighbors = lattice_neighbors(features, lattice, radius, "separable")
    out = lattice_convolve(values, neighbors, taps, implementation)
    for b in range(features.shape[0]):
        expected = lattice_reference.separable(
            features[b].astype(np.float64), values[b], taps.astype(np.float64)
        )
        np.testing.assert_allclose(out.numpy()[b], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("radius", [1, 2])
def test_gaussian_separable_taps_reproduce_the_blur(d, radius, implementation):
    """The bridge: separable taps at the blur's [1, 2, 1] / 2 are today's filter."""
    features = _points(d, batch=3, points=40, spread=3.0)
    values = np.random.default_rng(4).normal(0.0, 1.0, (3, 40, 5)).astype(np.float32)
    lattice = permutohedral_tf.build_lattice(features)
    expected = permutohedral.filter_lattice(values, lattice, implementation="tf").numpy()
    neighbors = lattice_neighbors(features, lattice, radius, "separable")
    taps = lattice_stencil.gaussian_separable_taps(d, radius)
    out = lattice_convolve(values, neighbors, taps, implementation).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=2e-6 * np.abs(expected).max())


def test_composed_blur_is_the_separable_blur_on_a_full_lattice():
    """Where every neighbour exists the radius-2 stencil is exactly the d+1 passes."""
    d = 2
    blur = lattice_stencil.composed_blur(d)
    # Mass: each pass doubles it (1 + 1/2 + 1/2), alpha once.
    assert sum(blur.values()) == pytest.approx(2.0 ** (d + 1) * lattice_stencil.lattice_alpha(d))
    # A dense grid of points: the lattice around the middle point is full.
    grid = np.stack(np.meshgrid(np.arange(-6, 6.01, 0.25), np.arange(-6, 6.01, 0.25)), -1)
    features = grid.reshape(1, -1, 2).astype(np.float32)
    lattice = permutohedral_tf.build_lattice(features)
    values = np.random.default_rng(5).normal(0.0, 1.0, (1, features.shape[1], 1))
    values = values.astype(np.float32)
    general = lattice_neighbors(features, lattice, 2, "general")
    taps, dropped = lattice_stencil.gaussian_stencil(d, 2)
    assert dropped == pytest.approx(0.0, abs=1e-12)
    stencil = lattice_convolve(values, general, taps).numpy()[0, :, 0]
    passes = permutohedral.filter_lattice(values, lattice, implementation="tf").numpy()[0, :, 0]
    centre = np.linalg.norm(features[0], axis=1) < 2.0  # far from the grid's edge
    np.testing.assert_allclose(stencil[centre], passes[centre], rtol=1e-5, atol=1e-5)


def test_gaussian_stencil_at_radius_one_drops_the_far_taps():
    for d in (2, 5):
        taps, dropped = lattice_stencil.gaussian_stencil(d, 1)
        blur = lattice_stencil.composed_blur(d)
        kept = [tuple(k) for k in lattice_stencil.stencil_multipliers(d, 1).tolist()]
        np.testing.assert_allclose(taps, [blur[k] for k in kept], rtol=1e-6)
        assert dropped == pytest.approx(1.0 - sum(blur[k] for k in kept) / sum(blur.values()))
        assert 0.0 < dropped < 1.0


def _float64_case(d, radius, form, shared=False, seed=6):
    features = _points(d, batch=2, points=9, seed=seed)
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (2, 9, 2))
    if form == "separable":
        taps = rng.normal(0.0, 0.5, (d + 1, 2 * radius + 1))
    else:
        count = len(lattice_stencil.stencil_offsets(d, radius))
        taps = rng.normal(0.0, 0.5, (count,) if shared else (count, 2, 3))
    lattice = permutohedral_tf.build_lattice(features)
    return features, values, taps, lattice_neighbors(features, lattice, radius, form)


@pytest.mark.parametrize(
    ("d", "radius", "form", "shared"),
    [
        (2, 1, "general", False),
        (2, 2, "general", True),
        (2, 2, "general", False),
        (5, 1, "general", True),
        (2, 1, "separable", False),
        (5, 2, "separable", False),
    ],
)
def test_gradients_to_values_and_taps_match_finite_differences(
    d, radius, form, shared, implementation
):
    _, values, taps, neighbors = _float64_case(d, radius, form, shared)

    def fn(v, w):
        return lattice_convolve(v, neighbors, w, implementation)

    theoretical, numerical = tf.test.compute_gradient(
        fn, [tf.constant(values), tf.constant(taps)], delta=1e-4
    )
    for got, want in zip(theoretical, numerical):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_gradient_in_a_tf_function_equals_eager(implementation):
    _, values, taps, neighbors = _float64_case(2, 1, "general")

    @tf.function
    def loss_and_grads(v, w):
        with tf.GradientTape() as tape:
            tape.watch([v, w])
            loss = tf.reduce_sum(lattice_convolve(v, neighbors, w, implementation) ** 2)
        return tape.gradient(loss, [v, w])

    graph = loss_and_grads(tf.constant(values), tf.constant(taps))
    with tf.GradientTape() as tape:
        v, w = tf.constant(values), tf.constant(taps)
        tape.watch([v, w])
        loss = tf.reduce_sum(lattice_convolve(v, neighbors, w, implementation) ** 2)
    eager = tape.gradient(loss, [v, w])
    for a, b in zip(graph, eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)


@pytest.mark.parametrize("form", ["general", "separable"])
def test_feature_scale_gradient_through_the_barycentric_weights(form, implementation):
    """Exact while every point stays in its simplex: finite differences on the scale agree."""
    d, radius = 2, 1
    features = _points(d, batch=1, points=12, seed=7).astype(np.float64)
    rng = np.random.default_rng(7)
    values = rng.normal(0.0, 1.0, (1, 12, 2)).astype(np.float32)
    if form == "general":
        taps = rng.normal(0.0, 0.5, (7, 2, 2)).astype(np.float32)
    else:
        taps = rng.normal(0.0, 0.5, (3, 3)).astype(np.float32)
    weights = np.random.default_rng(8).normal(0.0, 1.0, (1, 12, 2))

    def objective(scale):
        scaled = tf.constant(features, tf.float32) * tf.cast(scale, tf.float32)
        lattice = permutohedral_tf.build_lattice(scaled)
        neighbors = lattice_neighbors(scaled, lattice, radius, form, differentiable_features=True)
        return tf.reduce_sum(lattice_convolve(values, neighbors, taps, implementation) * weights)

    scale = tf.Variable([1.0, 1.0], dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = objective(scale)
    gradient = tape.gradient(value, scale).numpy()
    assert np.abs(gradient).max() > 0
    eps = 1e-3
    for i in range(d):
        step = np.zeros(d, np.float32)
        step[i] = eps
        numeric = (objective(1.0 + step) - objective(1.0 - step)).numpy() / (2 * eps)
        np.testing.assert_allclose(gradient[i], numeric, rtol=2e-2, atol=2e-3)
    # Without the option the scale gets no gradient (the lattice is a constant).
    with tf.GradientTape() as tape:
        scaled = tf.constant(features, tf.float32) * scale
        lattice = permutohedral_tf.build_lattice(scaled)
        neighbors = lattice_neighbors(scaled, lattice, radius, form)
        out = lattice_convolve(values, neighbors, taps, implementation)
    assert tape.gradient(out, scale) is None


def test_neighbours_of_a_custom_op_lattice_are_the_same():
    _needs_op()
    features = _points(5)
    op_lattice = permutohedral.build_lattice(features, implementation="custom_op")
    twin_lattice = permutohedral_tf.build_lattice(features)
    a = lattice_neighbors(features, op_lattice, 1).rows.numpy()
    b = lattice_neighbors(features, twin_lattice, 1).rows.numpy()
    np.testing.assert_array_equal(a, b)


def test_bad_taps_and_values_are_named():
    features, values, _, neighbors = _float64_case(2, 1, "general")
    with pytest.raises(ValueError, match=r"general taps of radius 1 must have shape \(7, 2, C_out"):
        lattice_convolve(values, neighbors, np.zeros((7, 3, 1)))
    with pytest.raises(ValueError, match=r"must have shape \(7,\) or"):
        lattice_convolve(values, neighbors, np.zeros((6,)))
    separable = lattice_neighbors(
        features, permutohedral_tf.build_lattice(features), 1, "separable"
    )
    for shape in [(3, 5), (9, 1), (1, 9)]:
        with pytest.raises(ValueError, match=r"separable taps of radius 1 must have shape \(3, 3"):
            lattice_convolve(values, separable, np.zeros(shape))
    scaled = permutohedral_tf.with_output_scale(separable.operator, np.ones((2, 9, 1)))
    with pytest.raises(ValueError, match="without an output scale"):
        lattice_convolve(values, separable._replace(operator=scaled), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="values must be"):
        lattice_convolve(values.astype(np.int32), neighbors, np.zeros((7,)))
    with pytest.raises(ValueError, match="do not match a lattice"):
        lattice_neighbors(features[..., :1], permutohedral_tf.build_lattice(features))


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize(
    ("radius", "form", "shape"),
    [
        (1, "general", "matrix"),
        (2, "general", "shared"),
        (1, "separable", None),
        (2, "separable", None),
    ],
)
def test_compiled_ops_agree_with_the_twin(d, radius, form, shape):
    """Random lattices (two images of different sizes), values, taps: outputs and the
    gradients to the values and the taps agree to 1e-5 (float32)."""
    _needs_op()
    rng = np.random.default_rng(d + 10 * radius)
    features = _points(d, batch=2, points=200, seed=d, spread=2.0)
    features[1, 150:] = features[1, 0]  # image 1 has fewer lattice points (padding rows)
    lattice = permutohedral.build_lattice(features, implementation="custom_op")
    neighbors = lattice_neighbors(features, lattice, radius, form)
    count = neighbors.rows.shape[0]
    if form == "separable":
        taps = rng.normal(0.0, 0.5, (d + 1, 2 * radius + 1))
    else:
        taps = rng.normal(0.0, 0.3, (count,) if shape == "shared" else (count, 3, 5))
    values = tf.constant(rng.normal(0.0, 1.0, (2, 200, 3)).astype(np.float32))
    taps = tf.constant(taps.astype(np.float32))
    results = {}
    for implementation in ("tf", "custom_op"):
        with tf.GradientTape() as tape:
            tape.watch([values, taps])
            out = lattice_convolve(values, neighbors, taps, implementation)
            loss = tf.reduce_sum(tf.sin(out) * out)
        grads = tape.gradient(loss, [values, taps])
        results[implementation] = [out, *(tf.convert_to_tensor(g) for g in grads)]
    for got, want in zip(results["custom_op"], results["tf"]):
        want = want.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_compiled_ops_name_bad_inputs():
    _needs_op()
    features = _points(2, batch=1, points=10)
    lattice = permutohedral.build_lattice(features, implementation="custom_op")
    values = tf.zeros((1, 10, 2))
    indices, weights = lattice.splat_indices, lattice.barycentric_weights
    rows = int(lattice.num_points[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside \\[0, rows per image\\)"):
        lattice_convolution_op.splat(values, indices, weights, rows - 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must both be \\(batch, points"):
        lattice_convolution_op.splat(values, indices[:, :5], weights, rows)
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole number of rows per image"):
        lattice_convolution_op.slice_lattice(
            tf.zeros((rows, 2)), tf.tile(indices, [2, 1, 1]), tf.tile(weights, [2, 1, 1])
        )
    table = tf.fill([3, rows], rows + 1)  # past the missing-neighbour marker L
    with pytest.raises(tf.errors.InvalidArgumentError, match="neighbour outside \\[0, L\\]"):
        lattice_convolution_op.stencil(tf.zeros((rows, 2)), table, tf.ones(3), tf.range(3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="taps must be \\(3,\\) or"):
        lattice_convolution_op.stencil(tf.zeros((rows, 2)), table, tf.ones((3, 4, 1)), tf.range(3))


@pytest.mark.parametrize(
    ("dtype", "channels", "shape"),
    [(np.float32, 50, "shared"), (np.float32, 49, "matrix"), (np.float64, 3, "matrix25")],
)
def test_compiled_ops_on_rows_wider_than_the_register_kernels(dtype, channels, shape):
    """More than 6 vectors per row (48 floats, 24 doubles) takes the general kernels."""
    _needs_op()
    rng = np.random.default_rng(channels)
    features = _points(2, batch=2, points=60, seed=3)
    neighbors = lattice_neighbors(features, permutohedral_tf.build_lattice(features), 1)
    values = tf.constant(rng.normal(0.0, 1.0, (2, 60, channels)).astype(dtype))
    out_channels = {"shared": None, "matrix": 7, "matrix25": 25}[shape]
    taps = rng.normal(0.0, 0.5, (7,) if out_channels is None else (7, channels, out_channels))
    taps = tf.constant(taps.astype(dtype))
    results = []
    for implementation in ("tf", "custom_op"):
        with tf.GradientTape() as tape:
            tape.watch([values, taps])
            out = lattice_convolve(values, neighbors, taps, implementation)
            loss = tf.reduce_sum(out * out)
        grads = tape.gradient(loss, [values, taps])
        results.append([out, *(tf.convert_to_tensor(g) for g in grads)])
    for got, want in zip(results[1], results[0]):
        want = want.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
