"""DeconvNet: Table 1 of Noh et al. (layer sizes, parameter count), unpooling wiring, sizes."""

from __future__ import annotations

import gc

import keras
import numpy as np
import pytest
from test_pooling_switches import numpy_unpool

import keras_dense
from keras_dense.apps.deconvnet_model import deconvnet
from keras_dense.backbones import vgg16 as vgg

# Table 1 of the paper: (layer, kernel, output channels) of every convolution/deconvolution.
PAPER_CONV_NET = [
    ("conv1_1", 3, 64), ("conv1_2", 3, 64),
    ("conv2_1", 3, 128), ("conv2_2", 3, 128),
    ("conv3_1", 3, 256), ("conv3_2", 3, 256), ("conv3_3", 3, 256),
    ("conv4_1", 3, 512), ("conv4_2", 3, 512), ("conv4_3", 3, 512),
    ("conv5_1", 3, 512), ("conv5_2", 3, 512), ("conv5_3", 3, 512),
    ("fc6", 7, 4096), ("fc7", 1, 4096),
]  # fmt: skip
PAPER_DECONV_NET = [
    ("deconv_fc6", 7, 512),
    ("deconv5_1", 3, 512), ("deconv5_2", 3, 512), ("deconv5_3", 3, 512),
    ("deconv4_1", 3, 512), ("deconv4_2", 3, 512), ("deconv4_3", 3, 256),
    ("deconv3_1", 3, 256), ("deconv3_2", 3, 256), ("deconv3_3", 3, 128),
    ("deconv2_1", 3, 128), ("deconv2_2", 3, 64),
    ("deconv1_1", 3, 64), ("deconv1_2", 3, 64),
]  # fmt: skip
# Table 1 output sizes at 224x224.
PAPER_SIZES = {
    "pool1": 112, "pool2": 56, "pool3": 28, "pool4": 14, "pool5": 7, "fc6": 1, "fc7": 1,
    "deconv_fc6": 7, "unpool5": 14, "deconv5_3": 14, "unpool4": 28, "deconv4_3": 28,
    "unpool3": 56, "deconv3_3": 56, "unpool2": 112, "deconv2_2": 112, "unpool1": 224,
    "deconv1_2": 224, "score": 224,
}  # fmt: skip
PAPER_PARAMETERS = 252e6  # "252M" parameters (DeconvNet as reported by the SegNet comparison)


def table1_parameter_count(num_classes: int, fc_filters: int = 4096) -> int:
    """Kernel + bias of every layer of Table 1, plus 4 BatchNormalization numbers per channel."""
    total, previous = 0, 3
    for _, kernel, channels in PAPER_CONV_NET + PAPER_DECONV_NET:
        channels = fc_filters if channels == 4096 else channels
        total += kernel * kernel * previous * channels + channels + 4 * channels
        previous = channels
    return total + previous * num_classes + num_classes


def test_paper_architecture_and_parameter_count():
    model = deconvnet()
    try:
        assert model.output_shape == (None, 224, 224, 21)
        assert model.count_params() == table1_parameter_count(21)
        assert abs(model.count_params() - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.01
        for name, size in PAPER_SIZES.items():
            output = model.get_layer(name).output
            output = output[0] if isinstance(output, (list, tuple)) else output
            assert output.shape[1:3] == (size, size), name
        for name, kernel, channels in PAPER_CONV_NET + PAPER_DECONV_NET:
            layer = model.get_layer(name)
            assert layer.kernel_size == (kernel, kernel) and layer.filters == channels, name
            assert isinstance(model.get_layer(f"{name}_bn"), keras.layers.BatchNormalization)
        assert all(
            isinstance(model.get_layer(f"unpool{b}"), keras_dense.layers.MaxUnpooling2D)
            for b in range(1, 6)
        )
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def test_valid_fc6_handles_odd_sizes_from_193_pixels():
    model = deconvnet(3, (None, None, 3), fc_filters=16)
    out = model.predict(np.random.default_rng(0).normal(size=(1, 197, 211, 3)), verbose=0)
    assert out.shape == (1, 197, 211, 3)
    with pytest.raises(ValueError, match="fc_padding='same'"):
        deconvnet(input_shape=(192, 224, 3))


def _small_model(**kwargs):
    return deconvnet(3, (None, None, 3), fc_padding="same", fc_filters=8, **kwargs)


def test_unpooling_puts_decoder_values_at_encoder_switches():
    model = _small_model()
    names = ("deconv2_2_relu", "conv1_2_relu", "unpool1")
    pool1 = model.get_layer("pool1").output
    probe = keras.Model(model.inputs, [pool1[1], *(model.get_layer(n).output for n in names)])
    x = np.random.default_rng(1).normal(size=(2, 45, 67, 3)).astype(np.float32)
    switches, values, reference, unpooled = probe.predict(x, verbose=0)
    assert unpooled.shape == reference.shape == (2, 45, 67, 64)
    assert values.shape == (2, 23, 34, 64)
    np.testing.assert_array_equal(unpooled, numpy_unpool(values, switches, (45, 67)))
    assert model.predict(x, verbose=0).shape == (2, 45, 67, 3)


@pytest.mark.parametrize("hw", [(1, 1), (33, 17)])
def test_same_fc6_accepts_small_inputs(hw):
    model = _small_model(activation="softmax")
    out = model.predict(np.zeros((1, *hw, 3), np.float32), verbose=0)
    assert out.shape == (1, *hw, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_backbone_weights_copy_vgg16_convolutions_by_name():
    source = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    model = _small_model(backbone_weights=source)  # a keras.Model with VGG16's layer names
    for b, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, convs + 1):
            ours = model.get_layer(f"conv{b}_{i}").get_weights()
            theirs = source.get_layer(f"block{b}_conv{i}").get_weights()
            for w_ours, w_theirs in zip(ours, theirs):
                np.testing.assert_array_equal(w_ours, w_theirs)
            gamma = model.get_layer(f"conv{b}_{i}_bn").get_weights()[0]
            np.testing.assert_array_equal(gamma, np.ones_like(gamma))  # BN stays fresh


def test_dense_to_conv_transform_matches_dense_on_flattened_input():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 2, 5))
    kernel, bias = rng.normal(size=(2 * 2 * 5, 7)), rng.normal(size=7)
    conv_kernel, conv_bias = vgg.dense_to_conv((2, 2, 5))([kernel, bias])
    dense = x.reshape(3, -1) @ kernel + bias
    conv = np.einsum("nyxc,yxco->no", x, conv_kernel) + conv_bias
    np.testing.assert_allclose(conv, dense, rtol=1e-10)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="fc_padding"):
        deconvnet(fc_padding="full")
    with pytest.raises(ValueError, match="num_classes"):
        deconvnet(num_classes=0)
    with pytest.raises(ValueError, match="activation"):
        deconvnet(activation="no-such-activation")


def test_exported_from_apps():
    assert keras_dense.apps.deconvnet is deconvnet
