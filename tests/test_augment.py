"""Colour jitter as one affine map, checked against a step-by-step NumPy reference."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_dense.data import segmentation_dataset
from keras_dense.data.augment import color_affine

from data_fixtures import coordinate_records

LUMA = np.array([0.299, 0.587, 0.114])
YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def reference_jitter(x, shift, k, s, turns, m):
    """Brightness, contrast, saturation, hue, one after the other, from their definitions."""
    y = k * (x - m) + m + shift
    grey = (y @ LUMA)[:, None]
    z = s * y + (1 - s) * grey
    yiq = z @ YIQ.T
    t = 2 * np.pi * turns
    i, q = yiq[:, 1].copy(), yiq[:, 2].copy()
    yiq[:, 1] = np.cos(t) * i - np.sin(t) * q
    yiq[:, 2] = np.sin(t) * i + np.cos(t) * q
    return yiq @ np.linalg.inv(YIQ).T


def test_color_affine_matches_reference():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (500, 3))
    for shift, k, s, turns, m in [
        (0, 1, 1, 0, 100),
        (20, 1.2, 0.8, 0.03, 90),
        (-31, 0.75, 1.25, -0.04, 140.5),
    ]:
        matrix, offset = color_affine(
            *(tf.constant(v, tf.float32) for v in (shift, k, s, turns, m))
        )
        got = pixels @ matrix.numpy() + offset.numpy()
        np.testing.assert_allclose(got, reference_jitter(pixels, shift, k, s, turns, m), atol=2e-3)
    identity, zero = color_affine(0.0, 1.0, 1.0, 0.0, 77.0)
    np.testing.assert_allclose(identity.numpy(), np.eye(3), atol=1e-5)
    np.testing.assert_allclose(zero.numpy(), 0, atol=1e-4)


def test_training_normalisation_is_fused_exactly(tmp_path):
    """Caffe normalisation in the fused map: B=200 becomes channel 0 = 200 - 103.939."""
    pattern = coordinate_records(tmp_path)
    ds = segmentation_dataset(
        pattern, 3, crop_size=64, training=True, photometric=False, normalization="caffe", seed=2
    )
    for images, masks in ds.repeat(3):
        images, masks = images.numpy(), masks.numpy()
        valid = masks != 255
        np.testing.assert_allclose(images[..., 0][valid], 200 - 103.939, atol=1e-3)
        assert (images[~valid] == 0).all()


def test_jitter_changes_colours_but_not_padding(tmp_path):
    pattern = coordinate_records(tmp_path)
    ds = segmentation_dataset(
        pattern,
        3,
        crop_size=160,
        training=True,
        photometric=True,
        normalization=None,
        seed=4,
        scale_range=(0.5, 0.6),
    )
    images, masks = next(iter(ds))
    images, masks = images.numpy(), masks.numpy()
    assert (masks == 255).any()
    assert (images[masks == 255] == 0).all()
    assert not np.allclose(images[..., 2][masks != 255], 200.0, atol=1.0)
