"""keras_dense.crf.dense_crf: exact NumPy mean-field reference, refinement, implementations."""

from __future__ import annotations

import numpy as np
import pytest

import keras_dense
from keras_dense.crf import dense_crf
from keras_dense.ops import loader

from crf_reference import mean_field, mean_iou, softmax, synthetic_problem

DEFAULTS = dict(theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0)


@pytest.fixture(scope="module")
def op():
    """The custom op library; skips when it cannot be built here (no C++ compiler)."""
    if loader.find_compiler() is None and not loader.library_path().exists():
        pytest.skip("no C++ compiler to build the permutohedral op (set $CXX or install g++)")
    return loader.load_library()


def _potts_reference(probabilities, image, iterations, spatial_weight=3.0, bilateral_weight=10.0):
    classes = probabilities.shape[-1]
    unary = np.log(np.maximum(probabilities, 1e-8)).reshape(-1, classes).astype(np.float64)
    logits = mean_field(
        unary,
        image,
        DEFAULTS["theta_alpha"],
        DEFAULTS["theta_beta"],
        DEFAULTS["theta_gamma"],
        spatial_weight * np.eye(classes),
        bilateral_weight * np.eye(classes),
        1.0 - np.eye(classes),
        iterations,
    )
    return softmax(logits).reshape(probabilities.shape)


def test_matches_exact_mean_field_reference(op):
    image, _, probabilities = synthetic_problem(24, seed=1, colour_noise=20.0)
    got = dense_crf(probabilities, image, num_iterations=5)
    expected = _potts_reference(probabilities, image, 5)
    assert got.shape == probabilities.shape and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert np.abs(got - expected).mean() < 0.02
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.98
    # ... and the CRF did something: far from the input distribution.
    assert np.abs(got - probabilities).mean() > 5 * np.abs(got - expected).mean()


def test_refinement_raises_iou(op):
    image, truth, probabilities = synthetic_problem(48, seed=2)
    before = mean_iou(probabilities.argmax(-1), truth)
    after = mean_iou(dense_crf(probabilities, image).argmax(-1), truth)
    assert before < 0.9
    assert after > before + 0.1


def test_custom_op_and_twin_agree(op):
    image, _, probabilities = synthetic_problem(32, seed=3, colour_noise=15.0)
    a = dense_crf(probabilities, image, implementation="custom_op")
    b = dense_crf(probabilities, image, implementation="tf")
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_zero_iterations_and_grayscale():
    image, _, probabilities = synthetic_problem(16, seed=4)
    same = dense_crf(probabilities, image, num_iterations=0)
    np.testing.assert_allclose(same, probabilities, atol=1e-6)
    gray = dense_crf(probabilities, image[..., 0], num_iterations=2)
    assert gray.shape == probabilities.shape
    assert keras_dense.crf.dense_crf is dense_crf


def test_bad_arguments():
    image, _, probabilities = synthetic_problem(16, seed=5)
    with pytest.raises(ValueError, match="probabilities"):
        dense_crf(probabilities[..., 0], image)
    with pytest.raises(ValueError, match="image"):
        dense_crf(probabilities, image[:8])
    with pytest.raises(ValueError, match="theta_alpha"):
        dense_crf(probabilities, image, theta_alpha=-1)
    with pytest.raises(ValueError, match="num_iterations"):
        dense_crf(probabilities, image, num_iterations=-2)
    with pytest.raises(ValueError, match="implementation"):
        dense_crf(probabilities, image, implementation="fast")
    with pytest.raises(ValueError, match="floating"):
        dense_crf(probabilities.astype(np.int32), image)
