"""Dice, Lovász-softmax, focal and combined losses against NumPy references; median-frequency
class weights; recipe selection and a couple of training steps."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.losses import (
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    MaskedSparseCrossEntropy,
    SumOfLosses,
    build_loss,
)
from keras_dense.losses.class_weights import median_frequency_from_masks

K = 4
IGNORE = 255


# ---------------------------------------------------------------------------- references
def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _counted(labels, logits):
    labels = labels.reshape(-1).astype(np.int64)
    probs = _softmax(logits.astype(np.float64)).reshape(-1, logits.shape[-1])
    keep = (labels >= 0) & (labels < logits.shape[-1]) & (labels != IGNORE)
    return labels[keep], probs[keep]


def ref_dice(labels, logits, smooth=1.0, weights=None):
    labels, probs = _counted(labels, logits)
    total, norm = 0.0, 0.0
    for c in range(logits.shape[-1]):
        g = (labels == c).astype(np.float64)
        if g.sum() == 0:
            continue
        p = probs[:, c]
        loss = 1 - (2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth)
        w = 1.0 if weights is None else weights[c]
        total, norm = total + w * loss, norm + w
    return total / norm if norm else 0.0


def ref_lovasz_grad(gt_sorted):
    """Gradient of the Lovász extension of the Jaccard loss, written from the paper (Alg. 1)."""
    n = len(gt_sorted)
    p = gt_sorted.sum()
    jaccard = np.zeros(n)
    for i in range(n):
        inter = p - gt_sorted[: i + 1].sum()
        union = p + (1 - gt_sorted[: i + 1]).sum()
        jaccard[i] = 1 - inter / union
    grad = jaccard.copy()
    grad[1:] = jaccard[1:] - jaccard[:-1]
    return grad


def ref_lovasz(labels, logits):
    labels, probs = _counted(labels, logits)
    losses = []
    for c in range(logits.shape[-1]):
        fg = (labels == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        order = np.argsort(-errors, kind="stable")
        losses.append(float(np.dot(errors[order], ref_lovasz_grad(fg[order]))))
    return float(np.mean(losses)) if losses else 0.0


def ref_focal(labels, logits, gamma=2.0, weights=None):
    labels, probs = _counted(labels, logits)
    if labels.size == 0:
        return 0.0
    pt = probs[np.arange(labels.size), labels]
    fl = -((1 - pt) ** gamma) * np.log(pt)
    w = np.ones_like(fl) if weights is None else np.asarray(weights)[labels]
    return float((w * fl).sum() / w.sum())


def ref_ce(labels, logits):
    return ref_focal(labels, logits, gamma=0.0)


def _batch(seed=0, shape=(2, 8, 9)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(*shape, K)).astype(np.float32)
    labels = rng.integers(0, K, size=shape).astype(np.int32)
    labels[0, :2] = IGNORE  # ignored pixels
    labels[1, 3, :4] = K + 1  # out of range
    labels[1, 4, :2] = -1  # out of range
    labels[labels == 2] = 0  # class 2 absent: not averaged
    return labels, logits


@pytest.mark.parametrize(
    "loss_class, name",
    [
        (MaskedSparseCrossEntropy, "masked_sparse_cross_entropy"),
        (LovaszSoftmaxLoss, "lovasz_softmax_loss"),
        (DiceLoss, "dice_loss"),
        (FocalLoss, "focal_loss"),
    ],
)
def test_default_name_is_the_same_for_every_instance(loss_class, name):
    # Keras' automatic names get a suffix per instance (`_1`, `_2`); the losses keep theirs.
    assert [loss_class().name for _ in range(2)] == [name, name]
    assert loss_class(name="mine").name == "mine"


# ------------------------------------------------------------------------- loss values
@pytest.mark.parametrize("smooth", [1.0, 0.0, 5.0])
def test_dice_matches_reference(smooth):
    labels, logits = _batch()
    got = float(DiceLoss(smooth=smooth)(labels, logits))
    assert got == pytest.approx(ref_dice(labels, logits, smooth), rel=1e-5, abs=1e-6)


def test_dice_class_weights_and_labels_with_channel():
    labels, logits = _batch(1)
    weights = [1.0, 2.0, 0.5, 3.0]
    got = float(DiceLoss(class_weights=weights)(labels[..., None], logits))
    assert got == pytest.approx(ref_dice(labels, logits, 1.0, weights), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_matches_reference(seed):
    labels, logits = _batch(seed)
    got = float(LovaszSoftmaxLoss()(labels, logits))
    assert got == pytest.approx(ref_lovasz(labels, logits), rel=1e-5, abs=1e-6)


def test_lovasz_perfect_prediction_is_zero_and_bounds():
    labels, _ = _batch(3)
    safe = np.where((labels >= 0) & (labels < K), labels, 0)
    perfect = np.eye(K, dtype=np.float32)[safe] * 50.0
    assert float(LovaszSoftmaxLoss()(labels, perfect)) == pytest.approx(0.0, abs=1e-6)
    value = float(LovaszSoftmaxLoss()(labels, -perfect))
    assert 0.0 < value <= 1.0 + 1e-6


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_reference(gamma):
    labels, logits = _batch(4)
    got = float(FocalLoss(gamma=gamma)(labels, logits))
    assert got == pytest.approx(ref_focal(labels, logits, gamma), rel=1e-5)


def test_focal_weights_and_gamma_zero_is_cross_entropy():
    labels, logits = _batch(5)
    weights = [1.0, 2.0, 0.5, 3.0]
    got = float(FocalLoss(gamma=1.0, class_weights=weights)(labels, logits))
    assert got == pytest.approx(ref_focal(labels, logits, 1.0, weights), rel=1e-5)
    ce = float(MaskedSparseCrossEntropy()(labels, logits))
    assert float(FocalLoss(gamma=0.0)(labels, logits)) == pytest.approx(ce, rel=1e-5)


def test_focal_stable_for_extreme_logits():
    labels = np.array([[[0, 1]]], np.int32)
    logits = np.array([[[[200.0, -200.0, 0, 0], [200.0, -200.0, 0, 0]]]], np.float32)
    value = float(FocalLoss()(labels, logits))
    assert np.isfinite(value) and value == pytest.approx(400.0 / 2, rel=1e-4)


def test_probabilities_input():
    labels, logits = _batch(6)
    probs = _softmax(logits).astype(np.float32)
    for cls, ref in ((DiceLoss, ref_dice), (LovaszSoftmaxLoss, ref_lovasz)):
        got = float(cls(from_logits=False)(labels, probs))
        assert got == pytest.approx(ref(labels, logits), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["ce+dice", "ce+lovasz"])
def test_combinations_are_sums(name):
    labels, logits = _batch(7)
    second = ref_dice(labels, logits) if name == "ce+dice" else ref_lovasz(labels, logits)
    got = float(build_loss(name)(labels, logits))
    assert got == pytest.approx(ref_ce(labels, logits) + second, rel=1e-5)


@pytest.mark.parametrize("cls", [DiceLoss, LovaszSoftmaxLoss, FocalLoss])
def test_all_ignored_is_zero(cls):
    labels = np.full((1, 4, 4), IGNORE, np.int32)
    logits = np.random.default_rng(0).normal(size=(1, 4, 4, K)).astype(np.float32)
    assert float(cls()(labels, logits)) == 0.0


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["dice", "lovasz", "focal", "ce+dice", "ce+lovasz"])
def test_ignored_pixels_get_zero_gradient(name):
    labels, logits = _batch(8)
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = build_loss(name)(labels, logits)
    grad = tape.gradient(loss, logits).numpy()
    uncounted = (labels < 0) | (labels >= K)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[uncounted] == 0.0)
    assert np.abs(grad[~uncounted]).sum() > 0


def test_lovasz_gradient_matches_finite_differences():
    labels, logits = _batch(9, shape=(2, 5, 4))
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = LovaszSoftmaxLoss()(labels, x)
    grad = tape.gradient(loss, x).numpy()
    eps, index = 1e-3, (1, 2, 2, 1)
    plus, minus = logits.copy(), logits.copy()
    plus[index] += eps
    minus[index] -= eps
    numeric = (ref_lovasz(labels, plus) - ref_lovasz(labels, minus)) / (2 * eps)
    assert grad[index] == pytest.approx(numeric, rel=1e-2, abs=1e-4)


# ------------------------------------------------------------------------ serialization
@pytest.mark.parametrize(
    "loss",
    [
        DiceLoss(smooth=0.5, ignore_label=7, class_weights=[1.0, 2.0, 3.0, 4.0]),
        LovaszSoftmaxLoss(ignore_label=9, from_logits=False),
        FocalLoss(gamma=1.5, class_weights=[1.0, 0.0, 1.0, 2.0]),
        build_loss("ce+dice", 7, [1.0, 2.0, 3.0, 4.0]),
        build_loss("ce+lovasz"),
    ],
    ids=["dice", "lovasz", "focal", "ce+dice", "ce+lovasz"],
)
def test_losses_round_trip(loss):
    labels, logits = _batch(10)
    want = float(loss(labels, logits))
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert float(restored(labels, logits)) == pytest.approx(want, rel=1e-6)
    assert keras.saving.get_registered_name(type(loss)).startswith("keras_dense>")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=-1)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="class_weights"):
        LovaszSoftmaxLoss(class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="loss name 'tversky'"):
        build_loss("tversky")
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        DiceLoss(class_weights=[1.0, 1.0])(*_batch())


def test_build_loss_selects_classes():
    assert isinstance(build_loss("sparse_categorical_crossentropy"), MaskedSparseCrossEntropy)
    assert isinstance(build_loss("dice", 7), DiceLoss)
    assert build_loss("dice", 7).ignore_label == 7
    assert isinstance(build_loss("lovasz"), LovaszSoftmaxLoss)
    assert isinstance(build_loss("focal"), FocalLoss)
    combo = build_loss("ce+lovasz", 3, [1.0, 2.0])
    assert isinstance(combo, SumOfLosses)
    assert [type(x) for x in combo.losses] == [MaskedSparseCrossEntropy, LovaszSoftmaxLoss]
    assert all(x.ignore_label == 3 and x.class_weights == [1.0, 2.0] for x in combo.losses)


# -------------------------------------------------------------- median-frequency weights
def test_median_frequency_by_hand():
    # Image A (2x3): classes 0 x3, 1 x2, one ignored pixel -> 5 counted pixels.
    a = np.array([[0, 0, 0], [1, 1, IGNORE]])
    # Image B (2x2): classes 0 x1, 2 x3 -> 4 counted pixels; label 9 is out of range.
    b = np.array([[0, 2, 9], [2, 2, 9]])
    # f0 = 4 / (5 + 4) = 4/9, f1 = 2/5, f2 = 3/4; class 3 never present.
    weights, absent = median_frequency_from_masks([a, b], 4, IGNORE)
    f = np.array([4 / 9, 2 / 5, 3 / 4])
    median = 4 / 9
    np.testing.assert_allclose(weights, [median / f[0], median / f[1], median / f[2], 0.0])
    assert absent == [3]


# ------------------------------------------------------------------ recipes and training
def _recipe(root, **loss):
    from keras_dense.training.recipe import validate

    return validate(
        {
            "model": {
                "builder": "unet",
                "kwargs": {"padding": "same", "filters": 4, "depth": 2},
            },
            "data": {"train": str(root / "train-*.tfrecord"), "crop_size": 32},
            "training": {"batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "image_summaries": 0},
            "optimizer": {"name": "adamw", "learning_rate": 0.01},
            "loss": loss,
        }
    )


def test_recipe_accepts_loss_names_and_median_frequency(tmp_path):
    from keras_dense.training.recipe import LOSSES
    from keras_dense.utils.errors import RecipeError

    assert set(LOSSES) >= {"dice", "lovasz", "focal", "ce+dice", "ce+lovasz"}
    for name in LOSSES:
        assert _recipe(tmp_path, name=name)["loss"]["name"] == name
    recipe = _recipe(tmp_path, class_weights="median_frequency")
    assert recipe["loss"]["class_weights"] == "median_frequency"
    with pytest.raises(RecipeError, match="loss.class_weights.*'median'"):
        _recipe(tmp_path, class_weights="median")
    with pytest.raises(RecipeError, match="loss.name.*'tversky'"):
        _recipe(tmp_path, name="tversky")
    with pytest.raises(RecipeError, match="loss.class_weights"):
        _recipe(tmp_path, class_weights=[1, -2])


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sparse_categorical_crossentropy", MaskedSparseCrossEntropy),
        ("dice", DiceLoss),
        ("lovasz", LovaszSoftmaxLoss),
        ("focal", FocalLoss),
        ("ce+dice", SumOfLosses),
        ("ce+lovasz", SumOfLosses),
    ],
)
def test_loss_name_selects_class_and_trains(tmp_path, name, cls):
    from keras_dense.apps import unet
    from keras_dense.tasks import get_task

    model = unet(K, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    recipe = _recipe(tmp_path, name=name, class_weights=[1.0, 2.0, 1.0, 0.5])
    recipe["training"]["metrics"] = []
    get_task("segmentation").compile(model, recipe, keras.optimizers.Adam(1e-2), K)
    assert type(model.loss) is cls
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, K, size=(4, 32, 32)).astype(np.int32)
    y[:, :4] = IGNORE
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history["loss"]
    assert all(np.isfinite(history))


def test_median_frequency_of_shards_matches_numpy(shapes32):
    from keras_dense.data import read_examples
    from keras_dense.losses import median_frequency_weights

    masks = [e["mask"] for e in read_examples(str(shapes32 / "train-*.tfrecord"))]
    class_pixels, image_pixels = np.zeros(K), np.zeros(K)
    for mask in masks:
        counted = mask[mask != IGNORE]
        for c in range(K):
            n = np.count_nonzero(counted == c)
            class_pixels[c] += n
            image_pixels[c] += counted.size if n else 0
    freq = class_pixels / image_pixels
    want = np.median(freq) / freq
    got, absent = median_frequency_weights(str(shapes32 / "train-*.tfrecord"), K, IGNORE)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert absent == []


def test_train_with_median_frequency_writes_weights_to_card(shapes32, tmp_path, capsys):
    from keras_dense.losses import median_frequency_weights
    from keras_dense.training import train

    recipe = _recipe(shapes32, name="ce+lovasz", class_weights="median_frequency")
    summary = train(recipe, str(tmp_path / "run"), verbose=0)
    assert np.isfinite(summary["history"]["loss"])
    want, _ = median_frequency_weights(str(shapes32 / "train-*.tfrecord"), K, IGNORE)
    card = json.loads((tmp_path / "run" / "best.json").read_text())
    assert card["loss"]["name"] == "ce+lovasz"
    assert card["loss"]["class_weights_rule"] == "median_frequency"
    np.testing.assert_allclose(card["loss"]["class_weights"], want)
    assert card["loss"]["classes_absent"] == []
    assert "median-frequency class weights" in capsys.readouterr().out
    model = keras.models.load_model(tmp_path / "run" / "best.keras")
    assert isinstance(model.loss, SumOfLosses)
    np.testing.assert_allclose(model.loss.losses[1].class_weights, want)
