"""augment_on="device": decode-only batches, the batched augmentation stage, the train step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.data import convert_shapes, segmentation_dataset
from keras_dense.data.device_augment import augment_batch
from keras_dense.training import train
from keras_dense.training.batch_stage import install_batch_stage
from keras_dense.training.recipe import validate
from keras_dense.utils.errors import RecipeError

from data_fixtures import coordinate_records

CROP = (64, 80)


def _pair(pattern, **kwargs):
    common = dict(batch_size=3, crop_size=CROP, training=True, seed=5, deterministic=True)
    common.update(kwargs)
    host = segmentation_dataset(pattern, fast_decode=False, **common)
    device = segmentation_dataset(pattern, augment_on="device", **common)
    return host, device


@pytest.mark.parametrize("photometric", [False, True])
def test_device_stage_equals_the_host_pipeline(tmp_path, photometric):
    # Same records, same seeds: the host's per-image resampling of a full decode and the
    # batched stage draw the same scale, crop, flip and colour jitter.
    pattern = coordinate_records(tmp_path)  # 90x120, 70x50, 130x100: a padded batch
    host, device = _pair(pattern, photometric=photometric)
    for (host_images, host_masks), (features, masks) in zip(host.take(3), device.take(3)):
        assert features["images"].dtype == tf.uint8 and masks.dtype == tf.uint8
        assert features["images"].shape[1] % 64 == 0 and features["images"].shape[2] % 64 == 0
        np.testing.assert_array_equal(features["image_sizes"].numpy()[:, 0] >= 70, True)
        images, out_masks = augment_batch(features, masks, CROP, photometric=photometric)
        assert images.shape == (3, *CROP, 3) and out_masks.dtype == tf.int32
        np.testing.assert_array_equal(out_masks.numpy(), host_masks.numpy())
        np.testing.assert_allclose(images.numpy(), host_images.numpy(), atol=1e-3)


def test_device_stage_keeps_mask_aligned(tmp_path):
    # The alignment check of test_pipelines on the device stage: every non-tie mask pixel is
    # f(position) of the source pixel the image pixel shows; padding is exactly ignore.
    _, device = _pair(coordinate_records(tmp_path), photometric=False, normalization=None)
    flips = scales = 0
    for features, masks in device.repeat(6):
        images, out_masks = augment_batch(
            features, masks, CROP, photometric=False, normalization=None
        )
        for image, mask in zip(images.numpy(), out_masks.numpy()):
            valid = np.isclose(image[..., 2], 200.0, atol=1e-3)
            np.testing.assert_array_equal(valid, mask != 255)
            assert (image[~valid] == 0).all()
            y = image[..., 0][valid] - 1
            x = image[..., 1][valid] - 1
            tie = (np.abs(y % 1 - 0.5) < 1e-3) | (np.abs(x % 1 - 0.5) < 1e-3)
            expected = (np.floor(y + 0.5) * 7 + np.floor(x + 0.5) * 3) % 250
            assert (mask[valid][~tie] == expected[~tie]).all()
            row = image[valid.any(1).argmax(), :, 1][valid[valid.any(1).argmax()]]
            flips += row.size > 1 and row[0] > row[-1]
            step = np.diff(image[..., 1], axis=1)[valid[:, 1:] & valid[:, :-1]]
            scales += step.size > 0 and abs(abs(np.median(step)) - 1) > 0.05
    assert flips > 0 and scales > 0, "augmentation never flipped or scaled"


def test_installed_stage_runs_inside_the_train_step():
    # Training on raw batches with a stage == training on the staged batches without one.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)

    def stage(batch):
        features, target = batch
        return features["x"] * 2.0 + 1.0, target - 3.0

    raw = tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(4)
    staged = raw.map(lambda f, t: stage((f, t)))
    weights = []
    for data, with_stage in ((raw, True), (staged, False)):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        if with_stage:
            install_batch_stage(model, stage)
        model.fit(data, epochs=2, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_recipe_key_and_training(tmp_path):
    convert_shapes(str(tmp_path / "train"), 8, size=32, seed=0, progress=False)
    base = {
        "model": {
            "builder": "unet",
            "kwargs": {"padding": "same", "filters": 4, "depth": 2},
        },
        "data": {"train": str(tmp_path / "train-*.tfrecord"), "crop_size": 32},
        "training": {"batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "image_summaries": 1},
        "optimizer": {"name": "adamw", "learning_rate": 0.01},
    }
    assert validate(base)["data"]["augment_on"] == "host"
    with pytest.raises(RecipeError, match="data.augment_on"):
        validate({**base, "data": {**base["data"], "augment_on": "gpu"}})
    with pytest.raises(RecipeError, match="segmentation"):
        device_data = {**base["data"], "augment_on": "device"}
        validate({**base, "task": "classification", "data": device_data})
    recipe = validate({**base, "data": {**base["data"], "augment_on": "device"}})
    # Without the stage the uint8 feature dicts would reach the model and fail.
    summary = train(recipe, str(tmp_path / "run"), verbose=0)
    assert summary["epochs"] == 1 and np.isfinite(summary["history"]["loss"])
    assert (tmp_path / "run" / "best.keras").exists()
