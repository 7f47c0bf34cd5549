"""Permutohedral lattice: custom op vs pure-TF twin vs brute-force Gaussian filtering; loader."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_dense.crf.mean_field import bilateral_features, spatial_features
from keras_dense.ops import (
    Lattice,
    LatticeOperator,
    OpBuildError,
    build_lattice,
    filter_lattice,
    loader,
    prepare_filter,
)
from keras_dense.ops.permutohedral import resolve_implementation

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Worst relative error (Frobenius) of the lattice's normalised filtering against the exact
# normalised Gaussian filtering, over the image-like cases below: measured up to 0.066.
LATTICE_RELATIVE_ERROR_BOUND = 0.08
# Worst absolute error for values in [0, 1]: measured up to 0.18.
LATTICE_ABSOLUTE_ERROR_BOUND = 0.25


@pytest.fixture(scope="module")
def op():
    """The custom op library; skips when it cannot be built here (no C++ compiler)."""
    if loader.find_compiler() is None and not loader.library_path().exists():
        pytest.skip("no C++ compiler to build the permutohedral op (set $CXX or install g++)")
    return loader.load_library()


def _images(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    pieces = np.where((columns > width // 2)[..., None], [200, 40, 40], [30, 90, 220])
    return {
        "pieces": np.clip(pieces + rng.normal(0, 6, (height, width, 3)), 0, 255),
        "gradient": np.stack([columns * 12, rows * 15, columns * rows], -1) % 256,
        "noise": rng.uniform(0, 255, (height, width, 3)),
    }


def _feature_sets(height: int = 16, width: int = 20):
    for name, image in _images(height, width).items():
        image = image.astype(np.float32)[None]
        yield f"{name}-spatial3", spatial_features(1, height, width, 3.0).numpy()
        yield f"{name}-spatial1", spatial_features(1, height, width, 1.0).numpy()
        yield f"{name}-bilateral5-13", bilateral_features(image, 5.0, 13.0).numpy()
        yield f"{name}-bilateral80-13", bilateral_features(image, 80.0, 13.0).numpy()
        yield f"{name}-bilateral160-3", bilateral_features(image, 160.0, 3.0).numpy()


def _exact_normalised(features: np.ndarray, values: np.ndarray, scale: float = 1.0):
    diff = features[:, None, :] - features[None, :, :]
    kernel = np.exp(-0.5 * (diff**2).sum(-1) / scale**2)
    return kernel @ values / kernel.sum(1, keepdims=True)


def _normalised(values, lattice, implementation):
    out = filter_lattice(values, lattice, implementation=implementation).numpy()
    ones = np.ones(values.shape[:2] + (1,), values.dtype)
    return out / filter_lattice(ones, lattice, implementation=implementation).numpy()


@pytest.mark.parametrize("implementation", ["custom_op", "tf"])
def test_lattice_filtering_approximates_exact_gaussian(op, implementation):
    rng = np.random.default_rng(0)
    worst = 0.0
    squared = {"exact": 0.0, "wider": 0.0, "narrower": 0.0}
    for name, features in _feature_sets():
        values = rng.uniform(0, 1, features.shape[:2] + (3,))
        exact = _exact_normalised(features[0], values[0])
        lattice = build_lattice(features, implementation)
        approx = _normalised(values, lattice, implementation)[0]
        error = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
        worst = max(worst, error)
        assert error < LATTICE_RELATIVE_ERROR_BOUND, name
        assert np.abs(approx - exact).max() < LATTICE_ABSOLUTE_ERROR_BOUND, name
        squared["exact"] += np.sum((approx - exact) ** 2)
        squared["wider"] += np.sum((approx - _exact_normalised(features[0], values[0], 1.5)) ** 2)
        squared["narrower"] += np.sum(
            (approx - _exact_normalised(features[0], values[0], 1 / 1.5)) ** 2
        )
    # Overall it approximates this kernel width: a 1.5x wider or narrower one is farther off.
    assert squared["exact"] < 0.5 * min(squared["wider"], squared["narrower"])
    assert worst > 0.005  # the lattice is an approximation: the test can see its error


def test_twin_builds_the_same_lattice_and_filters_the_same(op):
    rng = np.random.default_rng(1)
    for d, channels in ((1, 1), (2, 3), (3, 1), (5, 4), (7, 2), (9, 2)):  # 9: general simplex
        features = rng.uniform(0, 6, (2, 150, d)).astype(np.float32)
        features[1] *= 0.5  # fewer lattice points in image 1: exercises the padding
        op_lattice = build_lattice(features, "custom_op")
        tf_lattice = build_lattice(features, "tf")
        for field, a, b in zip(Lattice._fields, op_lattice, tf_lattice):
            assert a.shape == b.shape, field
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=field)
        assert op_lattice.num_points.numpy()[1] < op_lattice.num_points.numpy()[0]
        for dtype in (np.float32, np.float64):
            values = rng.normal(size=(2, 150, channels)).astype(dtype)
            for reverse in (False, True):
                a = filter_lattice(values, op_lattice, reverse, "custom_op").numpy()
                b = filter_lattice(values, tf_lattice, reverse, "tf").numpy()
                assert a.dtype == dtype
                np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def _numpy_filter(values: np.ndarray, lattice: Lattice, reverse: bool = False) -> np.ndarray:
    """The lattice's filter written directly from its tensors in float64 NumPy (a reference
    independent of both implementations): splat, [1/2, 1, 1/2] blur per direction, slice."""
    indices = lattice.splat_indices.numpy()
    weights = lattice.barycentric_weights.numpy().astype(np.float64)
    neighbours = lattice.blur_neighbors.numpy()
    batch, points, d1 = indices.shape
    out = np.zeros(values.shape, np.float64)
    for b in range(batch):
        grid = np.zeros((neighbours.shape[1] + 1, values.shape[2]))  # row 0: missing neighbour
        np.add.at(grid, indices[b] + 1, weights[b][..., None] * values[b][:, None, :])
        for j in reversed(range(d1)) if reverse else range(d1):
            grid[1:] = grid[1:] + 0.5 * (
                grid[neighbours[b, :, j, 0] + 1] + grid[neighbours[b, :, j, 1] + 1]
            )
        sliced = (grid[indices[b] + 1] * weights[b][..., None]).sum(1)
        out[b] = sliced / (1.0 + 2.0 ** -(d1 - 1))
    return out


def _odd_batch(batch: int, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = np.stack(
        [
            _images(height, width, seed + b)[name]
            for b, name in zip(range(batch), ("pieces", "noise", "gradient", "pieces"))
        ]
    )
    images = images + rng.normal(0, 3, images.shape)  # images differ: different M_b
    # Spatial features of a different scale per image (else the images share one lattice).
    spread = (1.0 + 0.3 * np.arange(batch, dtype=np.float32))[:, None, None]
    return {
        "spatial": spatial_features(batch, height, width, 3.0).numpy() * spread,
        "bilateral": bilateral_features(images.astype(np.float32), 7.0, 15.0).numpy(),
    }


@pytest.mark.parametrize("kernel", ["spatial", "bilateral"])
def test_twin_operator_equals_op_and_numpy_for_batches_and_odd_sizes(op, kernel):
    # B = 3 images of an odd size (13 x 17), different lattice sizes; channel counts that take
    # every path of the op (1 to 6 whole vectors, and the general case) and of the twin.
    features = _odd_batch(3, 13, 17, seed=7)[kernel]
    op_lattice = build_lattice(features, "custom_op")
    num_points = op_lattice.num_points.numpy()
    assert len(set(num_points)) > 1  # padding in play
    operator = prepare_filter(build_lattice(features, "tf"), "tf")
    assert isinstance(operator, LatticeOperator)
    rng = np.random.default_rng(8)
    for dtype, channels in (
        (np.float32, 1),
        (np.float32, 9),
        (np.float32, 21),
        (np.float32, 48),
        (np.float32, 49),
        (np.float64, 3),
        (np.float64, 21),
        (np.float64, 25),
    ):
        values = rng.normal(size=(3, 13 * 17, channels)).astype(dtype)
        for reverse in (False, True):
            expected = _numpy_filter(values.astype(np.float64), op_lattice, reverse)
            by_op = filter_lattice(values, op_lattice, reverse, "custom_op").numpy()
            by_twin = filter_lattice(values, operator, reverse, "tf").numpy()
            assert by_op.dtype == by_twin.dtype == dtype
            scale = np.abs(expected).max()
            message = f"{dtype.__name__} C={channels} reverse={reverse}"
            np.testing.assert_allclose(by_twin, by_op, atol=1e-4, rtol=0, err_msg=message)
            np.testing.assert_allclose(by_op, expected, atol=1e-5 * scale, err_msg=message)
            np.testing.assert_allclose(by_twin, expected, atol=1e-5 * scale, err_msg=message)
    # The op takes the twin's operator too (it filters with the lattice inside).
    values = rng.normal(size=(3, 13 * 17, 4)).astype(np.float32)
    np.testing.assert_allclose(
        filter_lattice(values, operator, implementation="custom_op").numpy(),
        filter_lattice(values, op_lattice, implementation="custom_op").numpy(),
        atol=1e-5,
    )


def test_twin_operator_in_a_tf_function_with_gradients(op):
    features = _odd_batch(2, 9, 11, seed=9)["bilateral"]
    lattice = build_lattice(features, "custom_op")
    values = np.random.default_rng(10).normal(size=(2, 99, 5)).astype(np.float32)
    upstream = np.random.default_rng(11).normal(size=(2, 99, 5)).astype(np.float32)

    @tf.function
    def twin(x):
        operator = prepare_filter(build_lattice(features, "tf"), "tf")
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(filter_lattice(filter_lattice(x, operator), operator) * upstream)
        return loss, tape.gradient(loss, x)

    x = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        once = filter_lattice(x, lattice, implementation="custom_op")
        loss = tf.reduce_sum(filter_lattice(once, lattice, implementation="custom_op") * upstream)
    expected_gradient = tape.gradient(loss, x)
    got_loss, got_gradient = twin(x)
    np.testing.assert_allclose(got_loss.numpy(), loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got_gradient.numpy(), expected_gradient.numpy(), atol=1e-4)


def test_twin_output_scale_is_folded_exactly_with_its_gradient(op):
    from keras_dense.ops import permutohedral_tf

    features = _odd_batch(2, 9, 11, seed=12)["bilateral"]
    lattice = build_lattice(features, "custom_op")
    rng = np.random.default_rng(13)
    scale = rng.uniform(0.5, 2.0, (2, 99, 1)).astype(np.float32)
    values = tf.constant(rng.normal(size=(2, 99, 3)).astype(np.float32))
    upstream = rng.normal(size=(2, 99, 3)).astype(np.float32)
    scaled = permutohedral_tf.with_output_scale(prepare_filter(lattice, "tf"), scale)
    results = []
    for fn in (
        lambda x: filter_lattice(x, scaled, implementation="tf"),
        lambda x: filter_lattice(x, lattice, implementation="custom_op") * scale,
    ):
        with tf.GradientTape() as tape:
            tape.watch(values)
            out = fn(values)
            loss = tf.reduce_sum(out * upstream)
        results.append((out.numpy(), tape.gradient(loss, values).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-4)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-4)
    assert np.abs(results[0][1]).max() > 0.1
    # The op honours a scaled operator too.
    by_op = filter_lattice(values, scaled, implementation="custom_op").numpy()
    np.testing.assert_allclose(by_op, results[1][0], atol=1e-5)


@pytest.mark.parametrize("limit", ["_FLOAT_CODE_BITS", "_CODE_BITS"])
def test_twin_exact_row_codes_fallback(op, monkeypatch, limit):
    # Keys too wide for one float64 code get an int64 code; too wide for that, they are
    # ranked one coordinate at a time instead.
    from keras_dense.ops import permutohedral_tf

    features = np.random.default_rng(6).uniform(0, 9, (2, 120, 4)).astype(np.float32)
    expected = build_lattice(features, "custom_op")
    monkeypatch.setattr(permutohedral_tf, limit, 0.0)
    got = build_lattice(features, "tf")
    for field, a, b in zip(Lattice._fields, expected, got):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=field)


def _dense_matrix(lattice, implementation, reverse):
    n = lattice.splat_indices.shape[1]
    identity = np.eye(n)[None]  # filtering the identity's columns gives the matrix
    return filter_lattice(identity, lattice, reverse, implementation).numpy()[0]


@pytest.mark.parametrize("implementation", ["custom_op", "tf"])
def test_reversed_filter_is_the_exact_transpose(op, implementation):
    features = bilateral_features(_images(10, 12)["pieces"][None], 5.0, 13.0)
    lattice = build_lattice(features, implementation)
    forward = _dense_matrix(lattice, implementation, False)
    backward = _dense_matrix(lattice, implementation, True)
    assert np.abs(forward - forward.T).max() > 1e-2  # not symmetric: the order matters
    np.testing.assert_allclose(backward, forward.T, atol=1e-12)


def test_op_gradient_numerically_and_against_twin_autodiff(op):
    rng = np.random.default_rng(2)
    features = rng.uniform(0, 3, (2, 40, 3)).astype(np.float32)
    lattice = build_lattice(features, "custom_op")
    values = rng.normal(size=(2, 40, 2))
    for reverse in (False, True):
        theoretical, numerical = tf.test.compute_gradient(
            lambda v, r=reverse: filter_lattice(v, lattice, r, "custom_op"), [values]
        )
        np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)

        upstream = rng.normal(size=(2, 40, 2))
        grads = []
        for implementation in ("custom_op", "tf"):
            x = tf.constant(values.astype(np.float32))
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = filter_lattice(x, lattice, reverse, implementation)
                loss = tf.reduce_sum(out * upstream.astype(np.float32))
            grads.append(tape.gradient(loss, x).numpy())
        np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)


def test_no_gradient_to_the_features(op):
    features = tf.constant(np.random.default_rng(3).uniform(0, 3, (1, 30, 2)), tf.float32)
    values = tf.ones((1, 30, 1))
    for implementation in ("custom_op", "tf"):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = filter_lattice(values, build_lattice(features, implementation))
        assert tape.gradient(out, features) is None


@pytest.mark.parametrize("implementation", ["custom_op", "tf"])
def test_batch_of_two_equals_two_batches_of_one(op, implementation):
    rng = np.random.default_rng(4)
    images = np.stack([_images(12, 14, 0)["noise"], _images(12, 14, 1)["pieces"]])
    features = bilateral_features(images.astype(np.float32), 6.0, 20.0).numpy()
    values = rng.normal(size=(2, 12 * 14, 3)).astype(np.float32)
    batched = filter_lattice(values, build_lattice(features, implementation), False, implementation)
    for i in range(2):
        single = filter_lattice(
            values[i : i + 1], build_lattice(features[i : i + 1], implementation)
        )
        np.testing.assert_allclose(batched[i], single[0], atol=1e-6)


def test_bad_inputs_are_rejected(op):
    with pytest.raises(ValueError, match="static d|batch, points, d"):
        build_lattice(np.zeros((5, 2), np.float32), "tf")
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        build_lattice(np.zeros((5, 2), np.float32), "custom_op")
    for bad in (1e9, np.nan):
        features = np.zeros((1, 4, 2), np.float32)
        features[0, 2, 1] = bad
        for implementation in ("custom_op", "tf"):
            with pytest.raises(tf.errors.InvalidArgumentError, match="magnitude"):
                build_lattice(features, implementation)
    lattice = build_lattice(np.zeros((1, 4, 2), np.float32), "custom_op")
    broken = lattice._replace(splat_indices=lattice.splat_indices + 100)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out-of-range"):
        filter_lattice(np.ones((1, 4, 1), np.float32), broken, implementation="custom_op")
    with pytest.raises(ValueError, match="implementation"):
        resolve_implementation("cuda")


# --- loader ---------------------------------------------------------------------------------

_FAKE_COMPILER = """#!/bin/sh
# Records the call, then writes an empty file where -o says.
echo call >> "{calls}"
{action}
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then out="$2"; fi
  shift
done
sleep 1
echo fake > "$out"
"""


def _fake_compiler(tmp_path, action: str = "") -> pathlib.Path:
    script = tmp_path / "fake-g++"
    script.write_text(_FAKE_COMPILER.format(calls=tmp_path / "calls.txt", action=action))
    script.chmod(0o755)
    return script


def test_concurrent_first_builds_compile_once(tmp_path):
    env = dict(
        os.environ,
        CXX=str(_fake_compiler(tmp_path)),
        KERAS_DENSE_OPS_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=str(REPO_ROOT),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    code = "from keras_dense.ops import loader; print(loader.build_library())"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    paths = {out.decode().strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1
    path = pathlib.Path(paths.pop())
    assert path.read_text() == "fake\n"
    assert path.parent.parent == tmp_path / "cache"
    assert (tmp_path / "calls.txt").read_text().count("call") == 1
    assert not list(path.parent.glob("*.tmp"))


def test_compiler_failure_reports_its_output(tmp_path, monkeypatch):
    action = 'echo "permutohedral_ops.cc:1: error: something broke" >&2; exit 1'
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path, action)))
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(OpBuildError, match="something broke"):
        loader.build_library()
    assert not loader.library_path().exists()


def test_no_compiler_falls_back_to_tf_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "_library", None)
    monkeypatch.setattr(loader, "_warned_no_compiler", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_implementation("auto") == "tf"
        assert resolve_implementation("auto") == "tf"
    assert len([w for w in caught if "C++ compiler" in str(w.message)]) == 1
    with pytest.raises(OpBuildError, match="no C\\+\\+ compiler"):
        resolve_implementation("custom_op")


def test_cache_key_names_tf_version_and_sources():
    key = loader.cache_key()
    assert key.startswith(f"tf{tf.__version__}-")
    assert loader.library_path().name == loader.LIBRARY_NAME
    source_hash = key.rsplit("-", 1)[1]
    assert len(source_hash) == 16 and int(source_hash, 16) >= 0


def test_cli_build_ops_command(op, capsys):
    import argparse

    from keras_dense import cli
    from keras_dense.commands import build_ops as build_ops_command

    assert "keras_dense.commands.build_ops" in cli.COMMAND_MODULES
    parser = argparse.ArgumentParser()
    build_ops_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build-ops", "--if-missing"])
    assert args.run(args) == 0  # cached: loads it without recompiling
    assert str(loader.library_path()) in capsys.readouterr().out
