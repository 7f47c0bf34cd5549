"""A shared model test, in the spirit of keras-hub's `run_task_test`.

A `ModelCase` says how to build a tiny instance of one public name of `keras_dense.apps`
(a builder, a model class or a builder-wrapper), which task it belongs to, fixed inputs, the
output contract of that task and a fixed training batch. `tests/test_model_harness.py` holds
one case per name of `keras_dense.apps.__all__` and runs each check below on every case:

- `check_config_round_trip`: `from_config(get_config())` rebuilds the model; with the
  original's weights it gives the same outputs.
- `predict_saved_models`: every case's `.keras` file loads with `safe_mode=True` in ONE fresh
  process (nothing registered by the test process) and gives the in-process outputs.
- the case's contract (`segmentation_contract`, `classification_contract`,
  `roi_detection_contract`, `proposal_detection_contract`, `instance_contract`): output
  names, shapes and dtypes of the task, written here from the tasks' documentation, not
  imported from the code under test.
- `build_mixed_bfloat16`: under the global policy `"mixed_bfloat16"` (restored afterwards)
  the builder and the task's `finalize_model` give a model with finite outputs.
- `fit_losses`: the task's own `compile` (with an optimizer of a resolved recipe, as the
  trainer builds it) and a few `fit` steps on a fixed batch; the loss must go down.
- `export_and_serve`: `export_saved_model` through the task, then the reloaded SavedModel's
  `serving_tensor` against the Keras model on one input.

Outputs are compared as flat `{name: array}` dicts (`flat_outputs`): dict outputs by key, list
outputs as `out0, out1, ...`, a single output as `out0`.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pathlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import keras_dense  # noqa: F401  (registers every keras_dense object)
from keras_dense.export.saved_model_export import export_saved_model
from keras_dense.tasks import get_task
from keras_dense.training.optimizers import build_optimizer
from keras_dense.training.recipe import validate

from helpers import flat_outputs, predict_saved_models_in_subprocess

# Names of the outputs of the two-stage detectors, from their builders' docstrings.
PROPOSAL_OUTPUTS = ("cls_score", "bbox_pred", "proposals", "proposal_scores", "num_proposals")
DETECTION_OUTPUTS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
)
INT_DTYPES = ("int32", "int64")


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """One harness case.

    Attributes:
        build: `() -> keras.Model`, a tiny instance (weights=None), under the current policy.
        task: The task name (`keras_dense.tasks.get_task`).
        inputs: `() -> inputs`: an array or a list of arrays fed to the model.
        contract: `(model, inputs, outputs, float_dtype) -> None`: the task's output contract
            (asserts); `outputs` is the model's output structure.
        batch: `() -> data`: a fixed training batch: `(x, y)` or a detection batch dict.
        kind: "builder" (a builder function of apps), "class" (a model class) or "wrapper"
            (a function taking a model).
        num_classes: The classes the task's `compile` is given (object classes for detection).
        export: Export this case through its task (one case per task).
        keras_file: Include this case in the fresh-process `.keras` reload.
        fit: Run the fit check on this case.
        fit_steps: Optimizer steps of the fit check.
        optimizer: Optimizer name of the fit check (a recipe's `optimizer.name`).
        learning_rate: Learning rate of the fit check.
        mixed_dtype: The floating outputs' dtype under "mixed_bfloat16" after the task's
            `finalize_model`.
        atol: Tolerance of the float32 comparisons.
    """

    build: Callable[[], keras.Model]
    task: str
    inputs: Callable[[], Any]
    contract: Callable[..., None]
    batch: Callable[[], Any]
    kind: str = "builder"
    num_classes: int = 3
    export: bool = False
    keras_file: bool = True
    fit: bool = True
    fit_steps: int = 3
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    mixed_dtype: str = "float32"
    atol: float = 1e-4


# ------------------------------------------------------------------------------ models


class BuiltModels:
    """The cases' models, each built once (seeded) and dropped after its last check.

    The checks that use the shared model run in the order contract, export, fit (the test
    file's order); `done(name, check)` frees the model after the last of them that the case
    runs, so that the large models (FCN: 537 MB of weights) do not all stay in memory.
    """

    def __init__(self, cases: dict[str, ModelCase]):
        self.cases = cases
        self._models: dict[str, keras.Model] = {}

    def __call__(self, name: str) -> keras.Model:
        if name not in self._models:
            keras.utils.set_random_seed(0)
            self._models[name] = self.cases[name].build()
        return self._models[name]

    def done(self, name: str, check: str) -> None:
        """Frees the model when `check` ("contract", "export" or "fit") is its last."""
        case = self.cases[name]
        last = "fit" if case.fit else "export" if case.export else "contract"
        if check == last and self._models.pop(name, None) is not None:
            gc.collect()


# ------------------------------------------------------------------------------ outputs


def model_input(inputs):
    """The model's call argument: a list for several inputs, else the array."""
    return list(inputs) if isinstance(inputs, (list, tuple)) else inputs


def run_model(model: keras.Model, inputs) -> dict[str, np.ndarray]:
    """The model's inference outputs on `inputs`, flat (see `flat_outputs`)."""
    return flat_outputs(model(model_input(inputs), training=False))


def assert_same_outputs(got: dict, want: dict, atol: float, what: str) -> None:
    """Asserts two flat output dicts have the same keys, shapes, dtypes and values."""
    assert sorted(got) == sorted(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for key in want:
        assert got[key].shape == want[key].shape, f"{what}: {key} {got[key].shape}"
        np.testing.assert_allclose(
            got[key].astype(np.float64), want[key].astype(np.float64), atol=atol, err_msg=key
        )


# ------------------------------------------------------------------------------ contracts


def _check_float(array: np.ndarray, key: str, float_dtype: str) -> None:
    assert str(array.dtype) == float_dtype, f"{key}: dtype {array.dtype}, want {float_dtype}"
    assert np.all(np.isfinite(array.astype(np.float32))), f"{key}: non-finite values"


def _image(inputs) -> np.ndarray:
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs


def segmentation_contract(num_classes: int):
    """One output `(B, H, W, num_classes)` at the input size, floating."""

    def check(model, inputs, outputs, float_dtype="float32"):
        out = flat_outputs(outputs)
        assert list(out) == ["out0"], f"a segmenter has one output, got {list(out)}"
        batch, height, width = _image(inputs).shape[:3]
        assert out["out0"].shape == (batch, height, width, num_classes), out["out0"].shape
        _check_float(out["out0"], "scores", float_dtype)

    return check


def classification_contract(num_classes: int):
    """One output `(B, num_classes)` of image logits, floating."""

    def check(model, inputs, outputs, float_dtype="float32"):
        out = flat_outputs(outputs)
        assert list(out) == ["out0"], f"a classifier has one output, got {list(out)}"
        assert out["out0"].shape == (len(_image(inputs)), num_classes), out["out0"].shape
        _check_float(out["out0"], "logits", float_dtype)

    return check


def roi_detection_contract(num_classes: int):
    """`[cls_score (B, R, K + 1), bbox_pred (B, R, 4 (K + 1))]` for `[images, rois (B, R, 4)]`."""

    def check(model, inputs, outputs, float_dtype="float32"):
        assert isinstance(outputs, (list, tuple)) and len(outputs) == 2, type(outputs)
        out = flat_outputs(outputs)
        batch, rois = inputs[1].shape[:2]
        assert out["out0"].shape == (batch, rois, num_classes + 1), out["out0"].shape
        assert out["out1"].shape == (batch, rois, 4 * (num_classes + 1)), out["out1"].shape
        _check_float(out["out0"], "cls_score", float_dtype)
        _check_float(out["out1"], "bbox_pred", float_dtype)
        assert model.num_classes == num_classes

    return check


def proposal_detection_contract(num_classes: int, proposals: int):
    """Faster R-CNN's dict: class scores and boxes of `proposals` padded proposals."""

    def check(model, inputs, outputs, float_dtype="float32"):
        assert isinstance(outputs, dict), type(outputs)
        out = flat_outputs(outputs)
        assert set(PROPOSAL_OUTPUTS) <= set(out), sorted(out)
        batch, n, k = len(inputs[0]), proposals, num_classes + 1
        shapes = {
            "cls_score": (batch, n, k),
            "bbox_pred": (batch, n, 4 * k),
            "proposals": (batch, n, 4),
            "proposal_scores": (batch, n),
            "num_proposals": (batch,),
        }
        for key, shape in shapes.items():
            assert out[key].shape == shape, (key, out[key].shape, shape)
        for key in ("cls_score", "bbox_pred"):
            _check_float(out[key], key, float_dtype)
        # Box coordinates stay float32 under any policy (bfloat16 is 4 px apart at 600 px).
        _check_float(out["proposals"], "proposals", "float32")
        assert np.all(np.isfinite(out["proposal_scores"].astype(np.float32)))
        assert str(out["num_proposals"].dtype) in INT_DTYPES, out["num_proposals"].dtype
        assert np.all((out["num_proposals"] >= 0) & (out["num_proposals"] <= n))
        assert model.num_classes == num_classes

    return check


def instance_contract(num_classes: int, proposals: int, detections: int, mask_size: int):
    """Faster R-CNN's dict plus detections with one `mask_size` mask each."""
    proposal_check = proposal_detection_contract(num_classes, proposals)

    def check(model, inputs, outputs, float_dtype="float32"):
        proposal_check(model, inputs, outputs, float_dtype)
        out = flat_outputs(outputs)
        assert set(DETECTION_OUTPUTS) <= set(out), sorted(out)
        batch, d = len(inputs[0]), detections
        assert out["detection_boxes"].shape == (batch, d, 4)
        assert out["detection_scores"].shape == (batch, d)
        assert out["detection_classes"].shape == (batch, d)
        assert out["num_detections"].shape == (batch,)
        assert out["detection_masks"].shape == (batch, d, mask_size, mask_size)
        for key in ("detection_boxes", "detection_scores", "detection_masks"):
            assert np.all(np.isfinite(out[key].astype(np.float32))), key
        assert np.all((out["num_detections"] >= 0) & (out["num_detections"] <= d))

    return check


# ------------------------------------------------------------------------------ checks


def check_config_round_trip(model: keras.Model, inputs, atol: float) -> keras.Model:
    """`type(model).from_config(model.get_config())` with the original's weights.

    Returns:
        The rebuilt model (its outputs were compared with the original's).
    """
    config = model.get_config()
    with keras.saving.custom_object_scope(keras.saving.get_custom_objects()):
        clone = type(model).from_config(config)
    assert type(clone) is type(model)
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    clone.set_weights(model.get_weights())
    assert_same_outputs(run_model(clone, inputs), run_model(model, inputs), atol, "round trip")
    return clone


def predict_saved_models(entries: dict, folder: pathlib.Path) -> dict[str, dict | str]:
    """Saves each model as `.keras` and reloads them all in ONE fresh process (safe mode).

    Args:
        entries: `{name: (model, inputs)}`.
        folder: An empty folder for the files.

    Returns:
        `{name: (expected flat outputs, reloaded flat outputs or the load error text)}`.
    """
    expected, failed = {}, {}
    for name, (model, inputs) in entries.items():
        try:
            model.save(folder / f"{name}.keras")
        except Exception as error:  # reported as the case's failure, the others still run
            failed[name] = f"model.save failed: {type(error).__name__}: {error}"
            continue
        arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        np.savez(folder / f"{name}.inputs.npz", *arrays)
        expected[name] = run_model(model, inputs)
    got = predict_saved_models_in_subprocess(folder, list(expected))
    got.update(failed)
    return {name: (expected.get(name), got[name]) for name in entries}


def build_mixed_bfloat16(case: ModelCase) -> keras.Model:
    """The case's model built under the global "mixed_bfloat16" policy, finalized by its task.

    The previous global policy is restored, also on failure.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = case.build()
        return get_task(case.task).finalize_model(model, True)
    finally:
        keras.config.set_dtype_policy(previous)


def harness_recipe(task: str, optimizer: str, learning_rate: float) -> dict:
    """A resolved recipe as the trainer gets it (the defaults, the task and the optimizer)."""
    return validate(
        {
            "task": task,
            "model": {"builder": "harness"},
            "data": {"train": "unused-*.tfrecord"},
            "optimizer": {"name": optimizer, "learning_rate": learning_rate},
        }
    )


def compile_like_the_trainer(model: keras.Model, case: ModelCase, steps: int) -> None:
    """Compiles with the task's own `compile` and the recipe's optimizer (as `train` does)."""
    recipe = harness_recipe(case.task, case.optimizer, case.learning_rate)
    optimizer = build_optimizer(recipe["optimizer"], recipe["schedule"], steps)
    get_task(case.task).compile(model, recipe, optimizer, case.num_classes)


class _SameDrawsEachStep(keras.callbacks.Callback):
    """Resets the global seed before each step: every step draws the same random samples
    (the detectors' anchors and RoIs), so that the losses of the steps are comparable."""

    def on_train_batch_begin(self, batch, logs=None):
        keras.utils.set_random_seed(0)


def fit_losses(model: keras.Model, case: ModelCase) -> list[float]:
    """The training loss of each step of `case.fit_steps` steps on the case's fixed batch.

    The steps run eagerly: tracing the train step of the larger models costs several times
    more than a few eager steps (graph-mode training is the trainer's tests' job). Each step
    draws the same samples (`_SameDrawsEachStep`).
    """
    compile_like_the_trainer(model, case, case.fit_steps)
    model.run_eagerly = True
    dataset = tf.data.Dataset.from_tensors(case.batch()).repeat()
    history = model.fit(
        dataset,
        steps_per_epoch=1,
        epochs=case.fit_steps,
        verbose=0,
        callbacks=[_SameDrawsEachStep()],
    )
    return [float(v) for v in history.history["loss"]]


def _signature_arguments(signature, model: keras.Model, inputs) -> dict:
    """The serving signature's keyword arguments: the inputs by the model's input names."""
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    names = sorted(signature.structured_input_signature[1])
    if len(names) == 1:
        return {names[0]: tf.constant(arrays[0])}
    given = {t.name: tf.constant(a) for t, a in zip(model.inputs, arrays)}
    assert sorted(given) == names, f"serving_tensor takes {names}, the model {sorted(given)}"
    return given


def export_and_serve(model: keras.Model, case: ModelCase, folder: str) -> tuple[dict, dict]:
    """Exports through the task and calls the reloaded `serving_tensor` on the case's inputs.

    Returns:
        `(served outputs, the Keras model's outputs that the signature serves, by name)`.
    """
    # verify=False: the reloaded signature is compared here, independently of the task's own
    # `verify_export` (which the export tests cover).
    result = export_saved_model(
        model, folder, name="harness", card={"task": case.task}, verify=False
    )
    assert result.task == case.task and os.path.isdir(result.path)
    loaded = tf.saved_model.load(result.path)
    signature = loaded.signatures["serving_tensor"]
    inputs = case.inputs()
    served = signature(**_signature_arguments(signature, model, inputs))
    served = {key: value.numpy() for key, value in served.items()}
    want = flat_outputs(model(model_input(inputs), training=False))
    if list(want) == ["out0"]:
        want = {"scores": want["out0"]}
    elif list(want) == ["out0", "out1"]:
        want = {"cls_score": want["out0"], "bbox_pred": want["out1"]}
    return served, {key: value for key, value in want.items() if key in served}
