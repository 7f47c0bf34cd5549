"""`keras-dense tune-crf`: coarse-to-fine CRF search by mIoU, written into the model card and
used by `evaluate --crf` and `predict --crf`."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.crf import dense_crf
from keras_dense.data import SHAPE_CLASSES, convert_shapes, read_examples
from keras_dense.evaluation import crf_tuning
from keras_dense.evaluation.crf_tuning import fine_grid, parse_grid
from keras_dense.utils import model_card
from keras_dense.utils.model_card import write_model_card
from tests.export_test_utils import normalize_np

IMAGES = 4
GRID = ["theta_alpha=20,80", "bilateral_weight=3,10", "theta_beta=13", "spatial_weight=3"]
ITERATIONS = 3


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_crf")
    convert_shapes(str(root / "val"), IMAGES + 1, size=32, seed=6, progress=False)
    return str(root / "val-*.tfrecord")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, val):
    """A U-Net trained for a few steps (so that mIoU means something), with its card."""
    root = tmp_path_factory.mktemp("tune_crf_model")
    convert_shapes(str(root / "train"), 16, size=32, seed=7, progress=False)
    examples = list(read_examples(str(root / "train-*.tfrecord")))
    x = np.stack([normalize_np(e["image"], "caffe") for e in examples])
    y = np.stack([e["mask"] for e in examples]).astype(np.int32)
    keras.utils.set_random_seed(2)
    model = unet(4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    path = str(root / "model.keras")
    model.save(path)
    card = {
        "task": "segmentation",
        "normalization": "caffe",
        "classes": list(SHAPE_CLASSES),
        "note": "kept",
    }
    write_model_card(path, card)
    return path, model


def _direct_mean_iou(model, pattern: str, parameters: dict | None, count: int) -> float:
    """mIoU recomputed without keras_dense's evaluator: NumPy softmax, dense_crf, IoUs."""
    cm = np.zeros((4, 4), np.int64)
    for _, example in zip(range(count), read_examples(pattern)):
        logits = model.predict(normalize_np(example["image"], "caffe")[None], verbose=0)[0]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
        if parameters is not None:
            p = dense_crf(p, example["image"], **parameters)
        truth = example["mask"].astype(np.int64)
        keep = truth != 255
        np.add.at(cm, (truth[keep], p.argmax(-1)[keep]), 1)
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def test_tune_crf_writes_the_best_parameters_into_the_card(trained, val, monkeypatch, capsys):
    path, model = trained
    predicted = []
    real_segment = crf_tuning.segment
    monkeypatch.setattr(
        crf_tuning, "segment", lambda *a, **k: predicted.append(1) or real_segment(*a, **k)
    )
    writes = []
    real_write = model_card.atomic_write_bytes
    monkeypatch.setattr(
        model_card, "atomic_write_bytes", lambda p, d: writes.append(p) or real_write(p, d)
    )
    args = ["tune-crf", "--model", path, "--data", val, "--max-images", str(IMAGES)]
    grid = [item for value in GRID for item in ("--grid", value)]
    assert cli.main([*args, *grid, "--num-iterations", str(ITERATIONS)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mIoU over {IMAGES} images: no CRF ")
    assert "default CRF" in out and "tuned CRF" in out
    assert len(predicted) == IMAGES  # one softmax per image, reused by every grid point

    card_path = os.path.splitext(path)[0] + ".json"
    assert writes == [card_path]  # through the atomic writer
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp-" in f]
    card = json.loads(open(card_path).read())
    assert card["note"] == "kept" and card["classes"] == list(SHAPE_CLASSES)
    crf = card["crf"]
    tuned = {k: crf[k] for k in (*crf_tuning.TUNED_PARAMETERS, "num_iterations")}
    assert tuned["num_iterations"] == ITERATIONS
    assert crf["mean_iou"] >= crf["default_crf_mean_iou"]
    assert crf["mean_iou"] == pytest.approx(_direct_mean_iou(model, val, tuned, IMAGES), abs=1e-9)
    defaults = {"num_iterations": ITERATIONS}
    direct_default = _direct_mean_iou(model, val, defaults, IMAGES)
    assert crf["default_crf_mean_iou"] == pytest.approx(direct_default, abs=1e-9)
    assert crf["baseline_mean_iou"] == pytest.approx(
        _direct_mean_iou(model, val, None, IMAGES), abs=1e-9
    )

    # evaluate --crf and predict --crf pass the card's values to dense_crf.
    from keras_dense.evaluation import evaluator
    from keras_dense.tasks import segmentation

    calls = []

    def recorder(probabilities, image, **kwargs):
        calls.append(kwargs)
        return probabilities

    monkeypatch.setattr(evaluator, "dense_crf", recorder)
    monkeypatch.setattr(segmentation, "dense_crf", recorder)
    out_dir = os.path.join(os.path.dirname(path), "eval")
    assert cli.main(["evaluate", "--model", path, "--data", val, "--crf", "--output", out_dir]) == 0
    assert len(calls) == IMAGES + 1 and all(c == tuned for c in calls)
    calls.clear()
    pred_dir = os.path.join(os.path.dirname(path), "pred")
    assert cli.main(["predict", "--model", path, "--data", val, "--crf", "--output", pred_dir]) == 0
    assert len(calls) == IMAGES + 1 and all(c == tuned for c in calls)


def test_grids():
    grid = parse_grid(["theta_alpha=30, 10", "spatial_weight=2"])
    assert grid["theta_alpha"] == (10.0, 30.0) and grid["spatial_weight"] == (2.0,)
    assert grid["theta_beta"] == crf_tuning.DEFAULT_GRID["theta_beta"]
    for bad in ("alpha=1", "theta_alpha", "theta_alpha=0", "theta_alpha=x"):
        with pytest.raises(ValueError, match="--grid"):
            parse_grid([bad])
    fine = fine_grid({"a": (10.0, 40.0), "b": (3.0,)}, {"a": 40.0, "b": 3.0})
    assert fine["b"] == (3.0,)
    np.testing.assert_allclose(fine["a"], [20.0, 40.0, 80.0])


def test_bad_grid_is_a_one_line_error(trained, val, capsys):
    path, _ = trained
    assert cli.main(["tune-crf", "--model", path, "--data", val, "--grid", "theta=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-dense tune-crf: error: --grid 'theta=1'")
