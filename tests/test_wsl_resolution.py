"""Resolution of the weakly supervised classifier: the compact backbone and output strides."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import apps
from keras_dense.analysis import receptive_field
from keras_dense.backbones.compact import compact_backbone
from keras_dense.localization import augmented_class_maps, class_maps, points_from_maps
from keras_dense.utils.tta import TestTimeAugmentation


def _probe(model):
    return keras.Model(model.inputs, model.get_layer("class_maps").output)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_compact_backbone_output_stride_and_receptive_field(stride):
    inputs = keras.Input((40, 24, 3))
    model = keras.Model(inputs, compact_backbone(inputs, output_stride=stride, width=4))
    out = model(np.zeros((1, 40, 24, 3), np.float32))
    assert tuple(out.shape) == (1, -(-40 // stride), -(-24 // stride), 16)  # ceil, 4 w
    field = receptive_field(model, model.layers[-1].name)
    assert field.jump == (stride, stride)
    # The same receptive field at every stride, by hand: 3x3 convs add 2 * dilation * jump
    # each, a 2x2 pooling adds jump; pools after blocks 1..log2(stride), later blocks dilated.
    size, jump, rate = 1, 1, 1
    for block in range(1, 5):
        size += 2 * (2 * rate * jump)
        if block < 4:
            if jump < stride:
                size, jump = size + jump, jump * 2
            else:
                rate *= 2
    assert field.size == (size, size)
    assert 60 <= size <= 70


def test_compact_is_the_wsl_default_stride_4_and_maps_align_with_the_input():
    model = apps.wsl_classifier(num_classes=2, backbone="compact", pooling="gap", width=4)
    assert model.name == "wsl_compact_gap"
    images = np.random.default_rng(0).normal(0, 1, (2, 32, 48, 3)).astype(np.float32)
    coarse = class_maps(model, images, upsample=False)
    assert coarse.shape == (2, 8, 12, 2)
    np.testing.assert_allclose(coarse.mean(axis=(1, 2)), np.asarray(model(images)), atol=1e-4)
    fine = class_maps(model, images)
    np.testing.assert_allclose(fine, tf.image.resize(coarse, (32, 48)).numpy(), atol=1e-5)
    # "same" 2x2 poolings: cell i covers pixels [4 i, 4 i + 4) and is centred at 4 i + 1.5
    # (start + jump * i), which is where half-pixel bilinear resizing puts sample i.
    field = receptive_field(model, "class_maps")
    assert field.jump == (4, 4) and field.start == (1.5, 1.5)


@pytest.mark.parametrize(
    ("backbone", "stride", "cells"),
    [
        ("vgg16", None, 4),
        ("vgg16", 8, 8),
        ("vgg16", 4, 16),
        ("vgg16", 32, 2),
        ("mobilenetv2", 16, 4),
        # Any registered backbone: the detectors' strided trunk, at its default stride 16.
        ("compact_strided", None, 4),
    ],
)
def test_wsl_output_stride(backbone, stride, cells):
    model = apps.wsl_classifier(num_classes=2, backbone=backbone, output_stride=stride)
    out = _probe(model)(np.zeros((1, 64, 64, 3), np.float32))
    assert tuple(out.shape) == (1, cells, cells, 2)


def test_dilated_vgg16_is_the_strided_one_sampled():
    """Removing pool4 and dilating conv5 by 2 computes conv5_3 densely (same weights)."""
    keras.utils.set_random_seed(0)
    base = apps.wsl_classifier(num_classes=2, backbone="vgg16", pooling="gap")
    dense = apps.wsl_classifier(num_classes=2, backbone="vgg16", pooling="gap", output_stride=8)
    dense.set_weights(base.get_weights())
    images = np.random.default_rng(1).normal(0, 60, (1, 64, 64, 3)).astype(np.float32)
    # conv1..conv4 are identical; conv5 at stride 8 sees the pool4 grid's samples at offsets
    # of 2 cells, so its even cells are conv5 at stride 16 wherever pool4's max does not
    # depend on the cell's parity: compare the pre-pool4 features instead (exact).
    a = keras.Model(base.inputs, base.get_layer("conv4_3").output)(images)
    b = keras.Model(dense.inputs, dense.get_layer("conv4_3").output)(images)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
    assert dense.get_layer("conv5_1").dilation_rate == (2, 2)
    assert base.get_layer("conv5_1").dilation_rate == (1, 1)
    assert receptive_field(dense, "class_maps").jump == (8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "vgg16", "output_stride": 2}, "output_stride"),
        ({"backbone": "resnet50", "output_stride": 4}, "output_stride"),
        ({"backbone": "compact", "output_stride": 16}, "output_stride"),
        ({"backbone": "vgg16", "width": 8}, "width applies"),
        ({"backbone": "compact", "width": 0}, "width"),
        ({"backbone": "compact", "backbone_weights": "imagenet"}, "no pretrained"),
    ],
)
def test_wsl_resolution_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apps.wsl_classifier(num_classes=2, **kwargs)


def test_compact_classifier_saves_and_loads_in_safe_mode(tmp_path):
    model = apps.wsl_classifier(num_classes=3, backbone="compact", pooling="lse", width=4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).normal(0, 1, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)


def _half_pixel_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """NumPy bilinear resize of a square (n, n) array to (size, size), half-pixel centres."""
    n = image.shape[0]
    src = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = src - low
    rows = image[low] * (1 - frac)[:, None] + image[high] * frac[:, None]
    return rows[:, low] * (1 - frac)[None] + rows[:, high] * frac[None]


@pytest.mark.parametrize("stride", [2, 4])
def test_upsampled_class_map_peaks_where_the_synthetic_object_is(stride):
    """A map of known peak, pooled to stride s and read back by class_maps, peaks in place.

    The "class maps" are 2x2.. sxs average poolings of a Gaussian blob centred on a cell
    centre `s i + (s - 1) / 2` (so the pooled map is symmetric about that cell): upsampled
    with the half-pixel convention the maximum lies on the blob's centre, within 0.5 px (the
    centre is between two pixels for even s). Reading cell i as pixel `s i` (align-corners,
    or a missing half-cell offset) moves the peak by (s - 1) / 2 px and fails, near the
    borders as well as in the middle.
    """
    size = 64
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.AveragePooling2D(stride, padding="same", name="class_maps")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(pooled))
    cells = size // stride
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    for cy, cx in [(1, cells - 2), (cells - 2, 2), (cells // 2, cells // 2 - 1)] + [
        tuple(rng.integers(1, cells - 1, 2)) for _ in range(3)
    ]:
        true_y, true_x = stride * cy + (stride - 1) / 2, stride * cx + (stride - 1) / 2
        blob = np.exp(-((yy - true_y) ** 2 + (xx - true_x) ** 2) / (2 * 3.0**2))
        images = np.repeat(blob[None, :, :, None], 3, axis=-1).astype(np.float32)
        maps = class_maps(model, images)
        assert maps.shape == (1, size, size, 3)
        (y, x) = points_from_maps(maps)[0, 0]
        assert abs(y - true_y) <= 0.5 and abs(x - true_x) <= 0.5, (y, x, true_y, true_x)
        # The independent reference: NumPy half-pixel bilinear interpolation of the cells.
        coarse = blob.reshape(cells, stride, cells, stride).mean(axis=(1, 3))
        reference = _half_pixel_bilinear(coarse, size)
        np.testing.assert_allclose(maps[0, ..., 0], reference, atol=1e-5)


def test_augmented_class_maps_without_augmentation_are_the_class_maps():
    model = apps.wsl_classifier(num_classes=2, backbone="compact", pooling="gap", width=4)
    images = np.random.default_rng(0).normal(0, 1, (2, 32, 40, 3)).astype(np.float32)
    np.testing.assert_allclose(
        augmented_class_maps(model, images), class_maps(model, images), atol=1e-6
    )


def test_augmented_class_maps_flip_averages_the_unmirrored_maps():
    """A map that reads the pixel to the right, flipped and back, reads the one to the left."""
    inputs = keras.Input((8, 12, 1))
    shift = keras.layers.Conv2D(1, (1, 2), padding="same", use_bias=False, name="class_maps")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(shift(inputs)))
    shift.set_weights([np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1)])
    x = np.random.default_rng(1).normal(0, 1, (2, 8, 12, 1)).astype(np.float32)
    right = np.concatenate([x[:, :, 1:], np.zeros_like(x[:, :, :1])], axis=2)  # x[.., j + 1]
    left = np.concatenate([np.zeros_like(x[:, :, :1]), x[:, :, :-1]], axis=2)  # x[.., j - 1]
    maps = augmented_class_maps(model, x, TestTimeAugmentation(flip=True))
    np.testing.assert_allclose(maps, (right + left) / 2, atol=1e-6)


@pytest.mark.parametrize("scale", [1.5, 2.0])
def test_augmented_class_maps_upscaled_keep_the_peak_in_place(scale):
    """Stride-4 maps of an upscaled image, resized back, still peak on the object (<= 1 px)."""
    size = 64
    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.AveragePooling2D(4, padding="same", name="class_maps")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(pooled))
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    tta = TestTimeAugmentation(flip=True, scales=(scale,))
    for true_y, true_x in [(5.0, 58.0), (57.0, 9.5), (31.5, 22.0), (12.0, 40.0)]:
        blob = np.exp(-((yy - true_y) ** 2 + (xx - true_x) ** 2) / (2 * 3.0**2))
        images = np.repeat(blob[None, :, :, None], 3, axis=-1).astype(np.float32)
        maps = augmented_class_maps(model, images, tta)
        assert maps.shape == (1, size, size, 3)
        y, x = points_from_maps(maps)[0, 0]
        assert abs(y - true_y) <= 1 and abs(x - true_x) <= 1, (y, x, true_y, true_x)
        # NumPy reference: upscale, 4x4 cell means, upsample, (un)mirror, downscale, average.
        big = int(size * scale)
        passes = []
        for image in (blob, blob[:, ::-1]):
            up = _half_pixel_bilinear(image, big)
            cells = up.reshape(big // 4, 4, big // 4, 4).mean(axis=(1, 3))
            passes.append(_half_pixel_bilinear(_half_pixel_bilinear(cells, big), size))
        reference = (passes[0] + passes[1][:, ::-1]) / 2
        np.testing.assert_allclose(maps[0, ..., 0], reference, atol=1e-4)
