"""A shared layer test, in the spirit of keras-hub's `run_layer_test`.

A `LayerCase` names a layer class, its constructor keyword arguments and a function that
builds example inputs for a given batch size. `run_layer_test(case, tmp_path)` runs every
check below on it; each check is also a function of its own (`CHECKS`), so that a test can
parametrize over them and a failure names the check:

- `check_config_round_trip`: `get_config` is JSON-serialisable, `from_config(get_config())`
  rebuilds a layer with the same config, and with the original's weights it gives the same
  output on the same input.
- `check_keras_save_load`: a functional model around the layer survives `model.save(".keras")`
  and `keras.models.load_model(path, safe_mode=True)` with the same outputs, the reloaded layer
  being of the same class.
- `check_output_shape`: `compute_output_shape` and the symbolic output (`compute_output_spec`,
  with a static and with an unknown batch size) agree with the real output's shape and dtype.
- `check_batch_independence`: with a batch of 3, each item's output equals the output of that
  item alone (skipped for cases with `batch_independent=False`).
- `check_mixed_bfloat16`: under the global policy `"mixed_bfloat16"` the layer builds and runs,
  keeps float32 variables, gives floating outputs in the compute dtype (bfloat16) and integer
  outputs unchanged, its symbolic output has the real output's dtype, and its values are close
  to the float32 layer's with the same weights (loose tolerance).

`registered_layer_classes()` lists every layer registered under the "keras_dense>" prefix
(`keras.saving.get_custom_objects()`), models excluded, so that a test can require a case for
each of them.

Inputs and outputs may be a single array or a list of arrays; outputs are compared leaf by leaf
(`keras.tree.flatten`). All layers run eagerly, in inference mode.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

import keras_dense  # noqa: F401  (registers every keras_dense object)

REGISTRY_PREFIX = "keras_dense>"
# Loose tolerance of bfloat16 (8-bit mantissa) against float32, relative to each output's range.
BF16_RTOL = 0.05


@dataclasses.dataclass(frozen=True)
class Fresh:
    """An `init_kwargs` value built anew for every layer (e.g. the layer a wrapper wraps).

    Attributes:
        factory: `() -> value`, called by `LayerCase.make_layer` (under the current policy).
    """

    factory: Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One harness case.

    Attributes:
        layer_cls: The layer class (looked up by class, not by module path).
        init_kwargs: Constructor keyword arguments; `Fresh` values are built per layer.
        make_inputs: `(rng, batch) -> inputs`: an array or a list of arrays (batch first).
        name: Test id; defaults to the class name.
        batch_independent: Whether the items of a batch are computed independently.
        bf16_rtol: Tolerance of the bfloat16 check, as a share of the float32 output's range.
        atol: Tolerance of the float32 comparisons (round trip, save/load, batch split).
        float32_outputs: The layer documents float32 outputs under any policy (e.g.
            Denormalization, whose 0-255 output feeds the CRF); the bfloat16 check then
            expects float32.
    """

    layer_cls: type
    init_kwargs: dict = dataclasses.field(default_factory=dict)
    make_inputs: Callable[[np.random.Generator, int], Any] = None
    name: str | None = None
    batch_independent: bool = True
    bf16_rtol: float = BF16_RTOL
    atol: float = 1e-5
    float32_outputs: bool = False

    @property
    def id(self) -> str:
        return self.name or self.layer_cls.__name__

    def inputs(self, batch: int = 2, seed: int = 0):
        return self.make_inputs(np.random.default_rng(seed), batch)

    def make_layer(self, **overrides) -> keras.layers.Layer:
        kwargs = {**self.init_kwargs, **overrides}
        kwargs = {k: v.factory() if isinstance(v, Fresh) else v for k, v in kwargs.items()}
        return self.layer_cls(**kwargs)


def registered_layer_classes() -> dict[str, type]:
    """Registered name -> class of every "keras_dense>" layer that is not a model."""
    found = {}
    for key, obj in keras.saving.get_custom_objects().items():
        if not key.startswith(REGISTRY_PREFIX) or not isinstance(obj, type):
            continue
        if issubclass(obj, keras.layers.Layer) and not issubclass(obj, keras.Model):
            found[key] = obj
    return found


# ------------------------------------------------------------------------------ utilities


def _leaves(structure) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(x)) for x in keras.tree.flatten(structure)]


def _as_model_input(inputs):
    return list(inputs) if isinstance(inputs, (list, tuple)) else inputs


def _map(fn, inputs):
    if isinstance(inputs, (list, tuple)):
        return [fn(x) for x in inputs]
    return fn(inputs)


def _symbolic(inputs, batch_none: bool = False):
    def spec(x):
        shape = (None, *x.shape[1:]) if batch_none else x.shape
        return keras.KerasTensor(shape, dtype=str(x.dtype))

    return _map(spec, inputs)


def _shapes(inputs):
    return _map(lambda x: tuple(x.shape), inputs)


def _assert_all_close(got, expected, atol: float, what: str) -> None:
    got, expected = _leaves(got), _leaves(expected)
    assert len(got) == len(expected), f"{what}: {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"{what}, output {i}: shape {g.shape} != {e.shape}"
        assert g.dtype == e.dtype, f"{what}, output {i}: dtype {g.dtype} != {e.dtype}"
        np.testing.assert_allclose(g, e, atol=atol, rtol=0, err_msg=f"{what}, output {i}")


def _built(case: LayerCase, inputs, **overrides) -> keras.layers.Layer:
    layer = case.make_layer(**overrides)
    layer(inputs)
    return layer


def randomize_weights(layer: keras.layers.Layer, seed: int = 1) -> None:
    """Moves every weight away from its initial value (variances stay positive).

    Layers with deterministic initialisers (identity, Potts, BN's ones and zeros) would
    otherwise pass a round trip even when their weights were not carried over.
    """
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        value = np.asarray(variable.numpy(), np.float64)
        if "variance" in variable.path:
            value = value * rng.uniform(0.5, 1.5, value.shape)
        else:
            value = value + rng.normal(0.0, 0.2, value.shape)
        variable.assign(value.astype(variable.dtype))


def _reference(case: LayerCase, inputs):
    layer = _built(case, inputs)
    randomize_weights(layer)
    return layer, layer(inputs)


def _normalized(config: dict) -> dict:
    return json.loads(json.dumps(config))


# --------------------------------------------------------------------------------- checks


def check_config_round_trip(case: LayerCase, tmp_path: pathlib.Path | None = None) -> None:
    inputs = case.inputs()
    layer, expected = _reference(case, inputs)
    config = layer.get_config()
    text = json.dumps(config)  # raises on anything JSON cannot hold
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith(REGISTRY_PREFIX), serialized

    clone = case.layer_cls.from_config(json.loads(text))
    assert type(clone) is case.layer_cls
    assert _normalized(clone.get_config()) == _normalized(config), "config changed on rebuild"
    clone(inputs)
    assert len(clone.weights) == len(layer.weights), "rebuilt layer has other weights"
    for mine, theirs in zip(clone.weights, layer.weights):
        assert mine.shape == theirs.shape, f"{mine.path}: {mine.shape} != {theirs.shape}"
    clone.set_weights(layer.get_weights())
    _assert_all_close(clone(inputs), expected, case.atol, f"{case.id} from_config")

    # Also through the generic (registered-name) deserialisation.
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is case.layer_cls


def _functional_model(case: LayerCase, inputs):
    symbolic = _map(
        lambda x: keras.Input(shape=x.shape[1:], dtype=str(x.dtype)),
        inputs,
    )
    layer = case.make_layer(name="layer_under_test")
    outputs = layer(_as_model_input(symbolic))
    model = keras.Model(_as_model_input(symbolic), outputs)
    randomize_weights(layer)
    return model


def _find_layer(model: keras.Model) -> keras.layers.Layer:
    return model.get_layer("layer_under_test")


def check_keras_save_load(case: LayerCase, tmp_path: pathlib.Path) -> None:
    inputs = case.inputs()
    model = _functional_model(case, inputs)
    expected = model(_as_model_input(inputs))
    path = pathlib.Path(tmp_path) / f"{case.id}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(_find_layer(loaded)) is case.layer_cls
    _assert_all_close(loaded(_as_model_input(inputs)), expected, case.atol, f"{case.id} .keras")


def save_case_model(case: LayerCase, folder: pathlib.Path) -> None:
    """Writes `<id>.keras`, `<id>.inputs.npz` and `<id>.outputs.npz` for a fresh-process load."""
    folder = pathlib.Path(folder)
    inputs = case.inputs()
    model = _functional_model(case, inputs)
    model.save(folder / f"{case.id}.keras")
    np.savez(folder / f"{case.id}.inputs.npz", *keras.tree.flatten(inputs))
    np.savez(folder / f"{case.id}.outputs.npz", *_leaves(model(_as_model_input(inputs))))


# Run in a fresh process with only `keras` and `keras_dense` imported: every registration must
# come from `import keras_dense` itself.
FRESH_PROCESS_LOAD = """
import pathlib
import numpy as np, keras, keras_dense

folder = pathlib.Path({folder!r})
for path in sorted(folder.glob("*.keras")):
    stem = path.name[: -len(".keras")]
    model = keras.models.load_model(path, safe_mode=True)
    data = np.load(folder / (stem + ".inputs.npz"))
    arrays = [data[f"arr_{{i}}"] for i in range(len(data.files))]
    out = model(arrays if len(arrays) > 1 else arrays[0])
    got = [np.asarray(x) for x in keras.tree.flatten(out)]
    want = np.load(folder / (stem + ".outputs.npz"))
    assert len(got) == len(want.files), stem
    for i, g in enumerate(got):
        np.testing.assert_allclose(g, want[f"arr_{{i}}"], atol={atol}, err_msg=stem)
    print("loaded", stem)
"""


def check_output_shape(case: LayerCase, tmp_path: pathlib.Path | None = None) -> None:
    inputs = case.inputs(batch=2)
    layer = _built(case, inputs)
    real = _leaves(layer(inputs))

    declared = _shape_leaves(layer.compute_output_shape(_shapes(inputs)))
    assert [tuple(s) for s in declared] == [r.shape for r in real], (
        f"{case.id}: compute_output_shape {declared} != real {[r.shape for r in real]}"
    )

    for batch_none in (False, True):
        fresh = case.make_layer()
        specs = keras.tree.flatten(fresh(_symbolic(inputs, batch_none)))
        assert len(specs) == len(real), f"{case.id}: {len(specs)} symbolic outputs"
        for spec, value in zip(specs, real):
            want = (None, *value.shape[1:]) if batch_none else value.shape
            assert tuple(spec.shape) == want, f"{case.id}: spec {spec.shape} != {want}"
            assert spec.dtype == value.dtype.name, (
                f"{case.id}: spec dtype {spec.dtype} != real {value.dtype.name}"
            )


def _shape_leaves(shapes) -> list[tuple]:
    """A shape or a (nested) list of shapes -> list of shapes."""
    if isinstance(shapes, (list, tuple)) and shapes and isinstance(shapes[0], (list, tuple)):
        return [leaf for s in shapes for leaf in _shape_leaves(s)]
    return [tuple(shapes)]


def _item(inputs, i: int):
    return _map(lambda x: x[i : i + 1], inputs)


def check_batch_independence(case: LayerCase, tmp_path: pathlib.Path | None = None) -> None:
    if not case.batch_independent:
        pytest.skip(f"{case.id}: batch items are not independent")
    inputs = case.inputs(batch=3, seed=2)
    layer, full = _reference(case, inputs)
    full = _leaves(full)
    for i in range(3):
        alone = _leaves(layer(_item(inputs, i)))
        _assert_all_close(alone, [f[i : i + 1] for f in full], case.atol, f"{case.id} item {i}")


def check_mixed_bfloat16(case: LayerCase, tmp_path: pathlib.Path | None = None) -> None:
    inputs = case.inputs()
    reference, expected = _reference(case, inputs)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = case.make_layer()
        assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
        layer(inputs)  # builds under the policy
        for variable in layer.weights:
            assert variable.dtype == "float32", f"{variable.path}: {variable.dtype}"
        layer.set_weights(reference.get_weights())
        got = _leaves(layer(inputs))
        specs = keras.tree.flatten(case.make_layer()(_symbolic(inputs)))
    finally:
        keras.config.set_dtype_policy(previous)

    expected = _leaves(expected)
    assert len(got) == len(expected)
    for i, (g, e, spec) in enumerate(zip(got, expected, specs)):
        what = f"{case.id} mixed_bfloat16, output {i}"
        floating = "float32" if case.float32_outputs else "bfloat16"
        want = floating if np.issubdtype(e.dtype, np.floating) else e.dtype.name
        assert g.dtype.name == want, f"{what}: dtype {g.dtype.name}, expected {want}"
        assert spec.dtype == g.dtype.name, f"{what}: spec dtype {spec.dtype} != {g.dtype.name}"
        assert g.shape == e.shape
        scale = max(float(np.max(np.abs(e))), 1e-6) if e.size else 1.0
        np.testing.assert_allclose(
            g.astype(np.float64),
            e.astype(np.float64),
            atol=case.bf16_rtol * scale,
            rtol=0,
            err_msg=what,
        )


CHECKS = {
    "config_round_trip": check_config_round_trip,
    "keras_save_load": check_keras_save_load,
    "output_shape": check_output_shape,
    "batch_independence": check_batch_independence,
    "mixed_bfloat16": check_mixed_bfloat16,
}


def run_layer_test(case: LayerCase, tmp_path: pathlib.Path, checks=None) -> None:
    """Runs the named checks (all by default) on `case`."""
    for name in checks or CHECKS:
        CHECKS[name](case, tmp_path)
