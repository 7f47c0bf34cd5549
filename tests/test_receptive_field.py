"""Receptive fields (keras_dense.analysis): known networks, hand-computed stacks, gradients."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.analysis import ReceptiveField, empirical_receptive_field, receptive_field
from keras_dense.layers import ResizeToMatch


def _ones_conv(kernel, **kwargs):
    return keras.layers.Conv2D(1, kernel, use_bias=False, kernel_initializer="ones", **kwargs)


def _support(model, layer_name, image_shape, unit):
    """Rows and columns (first, last) where the gradient of one output unit is non-zero."""
    probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
    images = tf.ones((1, *image_shape))
    with tf.GradientTape() as tape:
        tape.watch(images)
        value = probe(images)[0, unit[0], unit[1], 0]
    gradient = np.abs(tape.gradient(value, images).numpy()[0, ..., 0])
    rows = np.nonzero(gradient.sum(axis=1) > 0)[0]
    cols = np.nonzero(gradient.sum(axis=0) > 0)[0]
    return (rows[0], rows[-1]), (cols[0], cols[-1])


def test_vgg16_known_values():
    model = keras.applications.VGG16(weights=None, include_top=False)
    conv = receptive_field(model, "block5_conv3")
    pool = receptive_field(model, "block5_pool")
    assert isinstance(conv, ReceptiveField)
    assert conv.size == (196, 196) and conv.jump == (16, 16)
    assert pool.size == (212, 212) and pool.jump == (32, 32)
    assert receptive_field(model, "block1_conv2").size == (5, 5)


def _hand_stack(input_shape=(64, 64, 1)):
    inputs = keras.Input(input_shape)
    x = _ones_conv(3, padding="same", name="c1")(inputs)  # 3, 1, 0
    x = _ones_conv(3, dilation_rate=2, padding="same", name="c2")(x)  # 7, 1, 0
    x = _ones_conv(3, strides=2, padding="valid", name="c3")(x)  # 9, 2, 1
    x = keras.layers.AveragePooling2D(2, name="p4")(x)  # 11, 4, 2
    x = keras.layers.ReLU(name="relu")(x)
    x = _ones_conv((5, 3), padding="valid", name="c5")(x)  # (27, 19), 4, (10, 6)
    return keras.Model(inputs, x)


HAND_STACK = {
    "c1": ((3, 3), (1, 1), (0.0, 0.0)),
    "c2": ((7, 7), (1, 1), (0.0, 0.0)),
    "c3": ((9, 9), (2, 2), (1.0, 1.0)),
    "p4": ((11, 11), (4, 4), (2.0, 2.0)),
    "relu": ((11, 11), (4, 4), (2.0, 2.0)),
    "c5": ((27, 19), (4, 4), (10.0, 6.0)),
}


@pytest.mark.parametrize("layer_name", sorted(HAND_STACK))
def test_hand_computed_stack(layer_name):
    field = receptive_field(_hand_stack(), layer_name)
    assert (field.size, field.jump, field.start) == HAND_STACK[layer_name]


@pytest.mark.parametrize(("layer_name", "unit"), [("c3", (10, 12)), ("p4", (5, 6)), ("c5", (4, 6))])
def test_the_field_is_the_gradient_support(layer_name, unit):
    """With all-ones kernels and average pooling every pixel of the field has a gradient."""
    model = _hand_stack()
    field = receptive_field(model, layer_name)
    rows, cols = _support(model, layer_name, (64, 64, 1), unit)
    for axis, (first, last) in enumerate((rows, cols)):
        centre = field.start[axis] + unit[axis] * field.jump[axis]
        half = (field.size[axis] - 1) / 2
        assert (first, last) == (centre - half, centre + half)


@pytest.mark.parametrize(("size", "start"), [(16, 1.0), (15, 0.0)])
def test_same_padding_with_stride_depends_on_the_static_size(size, start):
    inputs = keras.Input((size, size, 1))
    x = _ones_conv(3, strides=2, padding="same", name="down")(inputs)
    model = keras.Model(inputs, x)
    field = receptive_field(model, "down")
    assert field.size == (3, 3) and field.jump == (2, 2) and field.start == (start, start)
    rows, _ = _support(model, "down", (size, size, 1), (3, 3))
    assert rows == (start + 6 - 1, start + 6 + 1)


def test_zero_padding_and_the_resnet_stem():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.ZeroPadding2D(3, name="pad1")(inputs)
    x = keras.layers.Conv2D(4, 7, strides=2, name="conv1")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad2")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = keras.layers.Cropping2D(((1, 0), (2, 0)), name="crop")(x)
    model = keras.Model(inputs, x)
    assert receptive_field(model, "conv1") == ((7, 7), (2, 2), (0.0, 0.0))
    assert receptive_field(model, "pool1") == ((11, 11), (4, 4), (0.0, 0.0))
    assert receptive_field(model, "crop") == ((11, 11), (4, 4), (4.0, 8.0))
    resnet = keras.applications.ResNet50(weights=None, include_top=False)
    assert receptive_field(resnet, "pool1_pool") == ((11, 11), (4, 4), (0.0, 0.0))
    # through every residual branch (Araujo et al., Distill 2019: 483 px)
    assert receptive_field(resnet, "conv5_block3_out")[:2] == ((483, 483), (32, 32))


def test_branches_take_the_largest_size_and_need_one_jump():
    inputs = keras.Input((None, None, 1))
    a = _ones_conv(3, padding="same", name="a1")(inputs)
    a = _ones_conv(3, padding="same", name="a2")(a)
    b = _ones_conv(1, name="b")(inputs)
    added = keras.layers.Add(name="add")([b, a])
    strided = _ones_conv(3, strides=2, padding="same", name="strided")(inputs)
    model = keras.Model(inputs, [added, strided])
    assert receptive_field(model, "add").size == (5, 5)
    up = ResizeToMatch(name="resize")([strided, inputs])
    mixed = keras.layers.Concatenate(name="mixed")([strided, _ones_conv(1, name="c")(inputs)])
    # the unknown layer on another path does no harm
    assert receptive_field(keras.Model(inputs, [up, added]), "add").size == (5, 5)
    with pytest.raises(ValueError, match="mixed.*different jumps"):
        receptive_field(keras.Model(inputs, mixed), "mixed")


def _backbone():
    inputs = keras.Input((None, None, 1))
    x = _ones_conv(3, strides=2, padding="same", name="inner1")(inputs)
    x = _ones_conv(3, padding="same", name="inner2")(x)
    return keras.Model(inputs, x, name="backbone")


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_nested_models(kind):
    if kind == "functional":
        inputs = keras.Input((32, 32, 1))
        x = _ones_conv(3, padding="same", name="stem")(inputs)
        x = _backbone()(x)
        x = _ones_conv(3, padding="same", name="head")(x)
        model = keras.Model(inputs, x)
    else:
        model = keras.Sequential(
            [
                keras.Input((32, 32, 1)),
                _ones_conv(3, padding="same", name="stem"),
                _backbone(),
                _ones_conv(3, padding="same", name="head"),
            ]
        )
    # stem 3/1/0; inner1 5/2/1 (even size: no padding before); inner2 9/2/1; head 13/2/1
    assert receptive_field(model, "inner1") == ((5, 5), (2, 2), (1.0, 1.0))
    assert receptive_field(model, "inner2") == ((9, 9), (2, 2), (1.0, 1.0))
    assert receptive_field(model, "backbone") == ((9, 9), (2, 2), (1.0, 1.0))
    assert receptive_field(model, "head") == ((13, 13), (2, 2), (1.0, 1.0))


def test_unsupported_layers_are_refused_by_name():
    inputs = keras.Input((None, None, 1))
    up = keras.layers.Conv2DTranspose(1, 2, strides=2, name="deconv")(inputs)
    after = _ones_conv(3, name="after")(up)
    model = keras.Model(inputs, after)
    with pytest.raises(ValueError, match="'deconv'.*Conv2DTranspose"):
        receptive_field(model, "after")
    resize = ResizeToMatch(name="resize")([_ones_conv(1, name="c")(inputs), inputs])
    with pytest.raises(ValueError, match="'resize'.*unknown spatial layer"):
        receptive_field(keras.Model(inputs, resize), "resize")
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(inputs)
    with pytest.raises(ValueError, match="'gap'.*not spatial"):
        receptive_field(keras.Model(inputs, pooled), "gap")
    with pytest.raises(ValueError, match="no such layer"):
        receptive_field(model, "nope")


# -------------------------------------------------------------------------------- empirical


def _box_power(times: int) -> np.ndarray:
    """The 2-D `times`-fold convolution of a 3x3 box, normalised to a maximum of 1."""
    line = np.ones(1)
    for _ in range(times):
        line = np.convolve(line, np.ones(3))
    square = np.outer(line, line)
    return square / square.max()


@pytest.mark.parametrize(("layers", "effective"), [(1, 3), (4, 7)])
def test_empirical_field_of_linear_box_filters(layers, effective):
    inputs = keras.Input((None, None, 1))
    x = inputs
    for i in range(layers):
        x = _ones_conv(3, padding="same", name=f"c{i}")(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(0).normal(size=(2, 33, 33, 1)).astype(np.float32)
    measured = empirical_receptive_field(model, f"c{layers - 1}", images)
    theoretical = receptive_field(model, f"c{layers - 1}").size[0]
    assert theoretical == 2 * layers + 1
    want = np.zeros((33, 33))
    half = layers
    want[16 - half : 16 + half + 1, 16 - half : 16 + half + 1] = _box_power(layers)
    np.testing.assert_allclose(measured.map, want, atol=1e-6)
    assert measured.centre == (16, 16) and measured.unit == (16, 16)
    # 95% of the mass: for four layers the 7x7 square holds (79 / 81)^2 = 95.1%
    assert measured.size == effective <= theoretical


def test_empirical_field_is_smaller_than_the_theoretical_one_in_a_deep_stack():
    # Seeded, with 8 channels a layer: with unseeded weights the suite's order decided them,
    # and some draws left the centre unit dead (ReLU) for every image, a zero gradient.
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 2))
    x = inputs
    for i in range(6):
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"c{i}")(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(1).normal(size=(4, 31, 31, 2)).astype(np.float32)
    measured = empirical_receptive_field(model, "c5", images)
    assert measured.map.shape == (31, 31) and measured.map.max() == pytest.approx(1.0)
    assert measured.size <= receptive_field(model, "c5").size[0] == 13
    with pytest.raises(ValueError, match="fraction"):
        empirical_receptive_field(model, "c5", images, fraction=0)
    with pytest.raises(ValueError, match="no such layer"):
        empirical_receptive_field(model, "nope", images)
