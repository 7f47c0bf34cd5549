"""Overlap-tile inference vs. a single pass of the model over the whole (mirror-padded) image."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_dense
from keras_dense.apps.unet_model import unet, unet_input_size, unet_margin
from keras_dense.tiling import model_alignment, predict_tiled


def whole_image_valid_pass(model, images: np.ndarray, depth: int) -> np.ndarray:
    """One pass of a valid U-Net over the mirror-padded image, cropped to the image.

    The image is mirrored by the margin at the top/left and by as much as needed at the
    bottom/right for the padded size to be a size the network accepts.
    """
    _, h, w, _ = images.shape
    m = unet_margin(depth)
    pad_h = unet_input_size(h, depth) - h - m
    pad_w = unet_input_size(w, depth) - w - m
    padded = np.pad(images, ((0, 0), (m, pad_h), (m, pad_w), (0, 0)), mode="reflect")
    return model.predict(padded, verbose=0)[:, :h, :w]


def small_valid_unet(depth: int, filters: int) -> keras.Model:
    keras.utils.set_random_seed(depth)
    return unet(2, (None, None, 1), filters=filters, depth=depth)


def test_valid_unet_tiles_equal_single_pass_on_mirrored_image():
    # Depth 3: tiles of 76 -> 36 pixels, margin 20; 100x130 needs 3x4 tiles.
    model = small_valid_unet(depth=3, filters=4)
    image = np.random.default_rng(0).normal(size=(100, 130, 1)).astype(np.float32)
    tiled = predict_tiled(model, image, tile_size=76, batch_size=4)
    expected = whole_image_valid_pass(model, image[None], depth=3)[0]
    assert tiled.shape == (100, 130, 2)
    np.testing.assert_allclose(tiled, expected, rtol=1e-5, atol=1e-5)


def test_tiles_are_aligned_to_the_pooling_grid():
    # Depth 4 downsamples by 8 but a 140-pixel tile gives 52 output pixels (not a multiple
    # of 8): tiles must step by 48, and misaligned steps would change the result.
    model = small_valid_unet(depth=4, filters=2)
    assert model_alignment(model, 140) == 8
    images = np.random.default_rng(1).normal(size=(2, 100, 130, 1)).astype(np.float32)
    expected = whole_image_valid_pass(model, images, depth=4)
    tiled = predict_tiled(model, images, tile_size=140, batch_size=3)
    np.testing.assert_allclose(tiled, expected, rtol=1e-5, atol=1e-5)
    misaligned = predict_tiled(model, images, tile_size=140, batch_size=3, alignment=1)
    assert np.abs(misaligned - expected).max() > 1e-2


def test_paper_unet_alignment_and_margin():
    model = unet(filters=1)
    assert model_alignment(model, 572) == 16
    assert unet_margin(5) == (572 - model.output_shape[1]) // 2


def _conv_only_model() -> keras.Model:
    """Three 3x3 'same' convolutions: each output sees 3 pixels around it."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(3, 3, padding="same")(x)
    return keras.Model(inputs, outputs)


def _downsampling_model() -> keras.Model:
    """Conv, 2x2 pooling, conv, x2 upsampling, conv: receptive field within 6 pixels."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, None, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(2)(x)
    x = keras.layers.Conv2D(3, 3, padding="same")(x)
    return keras.Model(inputs, outputs=x)


def single_pass(model, image: np.ndarray, pad: int, multiple: int) -> np.ndarray:
    """Runs `model` once on `image` mirrored by `pad` pixels on every side.

    The bottom/right are mirrored further up to a multiple of `multiple` (the pooling /
    upsampling model needs even sizes); the result is cropped back to the image.
    """
    h, w, _ = image.shape
    extra_h, extra_w = (-(h + 2 * pad)) % multiple, (-(w + 2 * pad)) % multiple
    padded = np.pad(image, ((pad, pad + extra_h), (pad, pad + extra_w), (0, 0)), mode="reflect")
    return model.predict(padded[None], verbose=0)[0, pad : pad + h, pad : pad + w]


@pytest.mark.parametrize(
    ("make_model", "margin", "reach", "alignment"),
    [(_conv_only_model, 4, 3, 1), (_downsampling_model, 8, 6, 2)],
)
def test_same_model_tiles_equal_single_pass(make_model, margin, reach, alignment):
    model = make_model()
    assert model_alignment(model, 32) == alignment
    image = np.random.default_rng(5).normal(size=(45, 61, 2)).astype(np.float32)
    tiled = predict_tiled(model, image, tile_size=32, batch_size=4, margin=margin)
    assert tiled.shape == (45, 61, 3)
    # A single pass over the image mirrored by the margin (what the tiles see at the borders).
    expected = single_pass(model, image, pad=margin, multiple=alignment)
    np.testing.assert_allclose(tiled, expected, rtol=1e-5, atol=1e-5)
    # Away from the borders, a single pass over the image itself.
    plain = single_pass(model, image, pad=0, multiple=alignment)
    inner = (slice(reach, -reach), slice(reach, -reach))
    np.testing.assert_allclose(tiled[inner], plain[inner], rtol=1e-5, atol=1e-5)


def test_batches_and_single_images_agree():
    model = _conv_only_model()
    images = np.random.default_rng(6).normal(size=(3, 20, 27, 2)).astype(np.float32)
    batch = predict_tiled(model, images, tile_size=16, batch_size=5, margin=4)
    assert batch.shape == (3, 20, 27, 3)
    for image, result in zip(images, batch):
        single = predict_tiled(model, image, tile_size=(16, 12), batch_size=2, margin=4)
        np.testing.assert_allclose(single, result, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_value_error():
    model = _conv_only_model()
    image = np.zeros((20, 20, 2), np.float32)
    with pytest.raises(ValueError, match="larger tile_size"):
        predict_tiled(model, image, tile_size=16, margin=8)
    with pytest.raises(ValueError, match="image"):
        predict_tiled(model, np.zeros((20, 2), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        predict_tiled(model, image, batch_size=0)
    valid = small_valid_unet(depth=3, filters=1)
    with pytest.raises(ValueError, match="margin"):
        predict_tiled(valid, np.zeros((20, 20, 1), np.float32), tile_size=76, margin=5)
    with pytest.raises(ValueError, match="pass a tile_size"):
        predict_tiled(valid, np.zeros((20, 20, 1), np.float32))  # no default for valid models


def test_exported_at_package_level():
    assert keras_dense.predict_tiled is predict_tiled
