"""The fused mean-field op (KerasDensePottsMeanField) against the per-filter mean field."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_dense.crf.mean_field import (
    bilateral_features,
    build_kernels,
    mean_field,
    potts_pairwise,
)
from keras_dense.ops import build_lattice, loader
from keras_dense.ops.potts_mean_field import potts_mean_field

from crf_reference import synthetic_problem

THETAS = (80.0, 13.0, 3.0)


@pytest.fixture(scope="module")
def op():
    """The custom op library; skips when it cannot be built here (no C++ compiler)."""
    if loader.find_compiler() is None and not loader.library_path().exists():
        pytest.skip("no C++ compiler to build the permutohedral op (set $CXX or install g++)")
    return loader.load_library()


def _problem(size: int, classes: int, seeds=(0, 1), spread: float = 1.0):
    """A batch of images and (B, N, classes) logits: the 3-class scene's classes spread
    over `classes` (each pixel's class and random others), times `spread`."""
    images, unaries = [], []
    for seed in seeds:
        image, truth, probabilities = synthetic_problem(size, seed=seed, colour_noise=15.0)
        rng = np.random.default_rng(seed + 10)
        logits = rng.normal(0.0, 1.0, (size, size, classes)).astype(np.float32)
        logits[..., :3] += 3.0 * np.log(probabilities)
        images.append(image.astype(np.float32))
        unaries.append(spread * logits.reshape(-1, classes))
    return tf.constant(np.stack(images)), tf.constant(np.stack(unaries))


def _per_filter(unary, lattices, weights, iterations, implementation="custom_op"):
    """The existing path: one filter op per kernel and iteration, softmax and sums in TF."""
    logits = mean_field(
        unary,
        lattices,
        potts_pairwise,
        iterations,
        implementation,
        kernel_scales=[-w for w in weights],
    )
    return tf.nn.softmax(logits, axis=-1).numpy()


@pytest.mark.parametrize(
    "classes, iterations",
    [(3, 0), (3, 1), (3, 5), (21, 4), (50, 3)],  # 1, 3 and 7 vectors of 8 classes (general)
)
def test_fused_matches_per_filter_path(op, classes, iterations):
    images, unary = _problem(32, classes)
    lattices = build_kernels(images, *THETAS, "custom_op")
    weights = [3.0, 10.0]
    fused = potts_mean_field(unary, lattices, weights, iterations).numpy()
    expected = _per_filter(unary, lattices, weights, iterations)
    assert fused.shape == expected.shape and fused.dtype == np.float32
    np.testing.assert_allclose(fused.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(fused, expected, atol=2e-6)
    if iterations:
        # The pairwise term did something (the test can tell the paths apart).
        start = tf.nn.softmax(unary, axis=-1).numpy()
        assert np.abs(fused - start).max() > 0.05
    # The twin (pure TF, sparse matrices) agrees too.
    twin = _per_filter(unary, build_kernels(images, *THETAS, "tf"), weights, iterations, "tf")
    np.testing.assert_allclose(fused, twin, atol=1e-4)


def test_large_logits_one_and_three_kernels(op):
    images, unary = _problem(24, 5, seeds=(2,), spread=40.0)  # logits in the hundreds
    spatial, bilateral = build_kernels(images, *THETAS, "custom_op")
    coarse = build_lattice(bilateral_features(images, 20.0, 30.0), "custom_op")
    for lattices, weights in (([bilateral], [7.0]), ([spatial, bilateral, coarse], [2, 5, 4])):
        fused = potts_mean_field(unary, lattices, weights, 3).numpy()
        assert np.isfinite(fused).all()
        np.testing.assert_allclose(fused, _per_filter(unary, lattices, weights, 3), atol=2e-6)


def test_bad_arguments(op):
    images, unary = _problem(16, 3, seeds=(3,))
    lattices = build_kernels(images, *THETAS, "custom_op")
    with pytest.raises(ValueError, match="one kernel weight per lattice"):
        potts_mean_field(unary, lattices, [3.0], 2)
    with pytest.raises(ValueError, match="num_iterations"):
        potts_mean_field(unary, lattices, [3.0, 10.0], -1)
    other_images, _ = _problem(8, 3, seeds=(3,))
    wrong = build_kernels(other_images, *THETAS, "custom_op")
    with pytest.raises(tf.errors.InvalidArgumentError, match="lattice 0"):
        potts_mean_field(unary, wrong, [3.0, 10.0], 2)
