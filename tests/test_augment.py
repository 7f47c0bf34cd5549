"""Colour jitter as one affine map, checked against a step-by-step NumPy reference."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_dense.data import segmentation_dataset
from keras_dense.data.augment import color_affine, plan_crop, resample_window
from keras_dense.data.image_io import encode_jpeg, encode_png
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset

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


# --- The decode paths of the training crop: decode-and-crop and DCT-domain downscaling. ---


def coordinate_jpeg_records(tmp_path, sizes=((240, 224), (160, 208)), block=1):
    """JPEG (quality 100) coordinate images R = y + 1, G = x + 1, B = 200; masks f(y, x).

    The mask is `((y // block) * 7 + (x // block) * 3) % 250`.
    """

    def make(size):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([yy + 1, xx + 1, np.full_like(yy, 200)], -1).astype(np.uint8)
        mask = (((yy // block) * 7 + (xx // block) * 3) % 250).astype(np.uint8)
        return Record(
            f"jpeg_{h}x{w}", encode_jpeg(rgb, 100), "jpeg", h, w, mask_png=encode_png(mask)
        )

    write_dataset(str(tmp_path / "jcoord"), list(sizes), make, progress=False)
    return str(tmp_path / "jcoord-*.tfrecord")


def test_plan_picks_the_dct_ratio_from_the_scale():
    seed = tf.constant([3, 4], tf.int64)
    for scale, max_ratio, ratio in [
        ((0.1, 0.125), 8, 8),
        ((0.2, 0.25), 8, 4),
        ((0.3, 0.5), 8, 2),
        ((0.6, 2.0), 8, 1),
        ((0.1, 0.125), 1, 1),
        ((0.1, 0.125), 2, 2),
    ]:
        plan = plan_crop(240, 224, (32, 32), scale, True, seed, max_ratio)
        assert int(plan.ratio) == ratio, (scale, max_ratio)


def test_decode_and_crop_gives_the_full_decode_result(tmp_path):
    """JPEG training crops: decoding only the window == decoding in full (same pixels)."""
    pattern = coordinate_jpeg_records(tmp_path)
    kwargs = dict(crop_size=(96, 80), training=True, seed=3, scale_range=(0.6, 2.0))
    fast = segmentation_dataset(pattern, 2, fast_decode=True, **kwargs)
    full = segmentation_dataset(pattern, 2, fast_decode=False, **kwargs)
    batches = 0
    for (xa, ya), (xb, yb) in zip(fast.repeat(4), full.repeat(4)):
        # Same decoded pixels and positions; the float colour map may round differently.
        np.testing.assert_allclose(xa.numpy(), xb.numpy(), atol=1e-3)
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        batches += 1
    assert batches == 4


def check_alignment(image, mask, f, border, tolerance):
    """Mask == f(position) where the image's R, G channels give the position.

    Pixels within `tolerance` of a tie of `f` and within `border` of the image edge (where a
    downscaled decode clamps) are left out. Returns the number of pixels checked.
    """
    valid = mask != 255
    assert (image[~valid] == 0).all(), "padding must be 0 in the image"
    assert (image[..., 2][valid] > 150).all(), "every unpadded pixel must be image"
    y = image[..., 0][valid] - 1
    x = image[..., 1][valid] - 1
    keep, expected = f(y, x, tolerance)
    keep &= (y > border) & (x > border)
    assert (mask[valid][keep] == expected[keep]).all()
    return int(keep.sum())


def rounded():
    """f of the coordinate masks, `(y * 7 + x * 3) % 250`, at the nearest pixel."""

    def f(y, x, tolerance):
        tie = (np.abs(y % 1 - 0.5) < tolerance) | (np.abs(x % 1 - 0.5) < tolerance)
        return ~tie, (np.floor(y + 0.5) * 7 + np.floor(x + 0.5) * 3) % 250

    return f


def test_dct_downscaled_window_keeps_the_mask_aligned():
    """The DCT path's geometry, exactly: a block-mean 'decoder' stands in for libjpeg."""
    h, w = 240, 224
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([yy + 1, xx + 1, np.full_like(yy, 200)], -1).astype(np.float32)
    mask = tf.constant(((yy * 7 + xx * 3) % 250).astype(np.uint8))
    checked = 0
    for scale, ratio in [((0.1, 0.125), 8), ((0.2, 0.25), 4), ((0.3, 0.5), 2)]:
        decoded = rgb.reshape(h // ratio, ratio, w // ratio, ratio, 3).mean((1, 3))
        for i in range(6):
            plan = plan_crop(h, w, (40, 48), scale, True, tf.constant([i, ratio]), 8)
            assert int(plan.ratio) == ratio
            top, left, rows, cols = plan.window().numpy()
            window = tf.constant(decoded[top : top + rows, left : left + cols])
            image, out_mask = resample_window(window, mask, plan, (40, 48), 255)
            # Decoded pixel 0 is centred on source (ratio - 1) / 2: nearer the edge it clamps.
            checked += check_alignment(
                image.numpy(), out_mask.numpy(), rounded(), (ratio - 1) / 2 + 1e-3, 1e-3
            )
    assert checked > 1000


def test_dct_path_through_libjpeg_keeps_the_mask_aligned(tmp_path):
    """End to end with real DCT-domain downscaling, within JPEG's error (<= 1.5 levels)."""
    pattern = coordinate_jpeg_records(tmp_path, block=16)

    def blocks(y, x, tolerance):
        near = (np.abs((y + 0.5) % 16 - 8) > 8 - tolerance) | (
            np.abs((x + 0.5) % 16 - 8) > 8 - tolerance
        )
        return ~near, ((np.floor((y + 0.5) / 16)) * 7 + np.floor((x + 0.5) / 16) * 3) % 250

    checked = 0
    for scale, ratio in [((0.1, 0.125), 8), ((0.2, 0.25), 4), ((0.3, 0.5), 2)]:
        ds = segmentation_dataset(
            pattern,
            2,
            crop_size=(40, 48),
            training=True,
            photometric=False,
            normalization=None,
            seed=ratio,
            scale_range=scale,
            fast_decode=True,
        )
        for images, masks in ds.repeat(3):
            for image, mask in zip(images.numpy(), masks.numpy()):
                checked += check_alignment(image, mask, blocks, (ratio - 1) / 2 + 2, 2.5)
    assert checked > 1000


def test_window_decoding_is_chosen_for_images_larger_than_the_crop(tmp_path):
    from keras_dense.data.segmentation_pipeline import _large_images

    pattern = coordinate_jpeg_records(tmp_path)  # 240 x 224 first
    assert _large_images(pattern, (96, 80))
    assert not _large_images(pattern, (200, 200))
