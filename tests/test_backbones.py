"""The backbone registry and its contract, checked for every registered family.

Enumerated from `backbone_names()`, so a new family is checked without editing this file:

- its model's outputs are keyed `stride_S`, and `S` is the measured ratio of input size to
  feature size; the largest key is the output stride it was built at;
- a bad argument is refused with a message naming it;
- a family built with keras.applications layer names loads a keras.applications weight file by
  name, and then computes the keras.applications network's own features.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_dense.backbones import backbone_names, get_backbone, stride_key
from keras_dense.backbones.vgg16 import VGG16_IMAGENET_NAMES

SIZE = 64
NAMES = backbone_names()
# The families built here from keras.applications names. ResNet-101 is ResNet-50's code with
# more blocks (tests/test_deeplab.py counts its parameters); the newer families (ResNet v2,
# MobileNetV3, EfficientNetV2, ConvNeXt) have their parity tests in test_backbone_families.py.
PARITY = ("vgg16", "resnet50", "xception", "mobilenetv2")
# Families whose first convolutions are "valid" (Xception): their maps are one cell smaller.
VALID_PADDING = {"xception"}
# Families small enough to build at every output stride; the others at their default only.
MAX_LAYERS_FOR_EVERY_STRIDE = 200


def _models_to_check(name: str):
    """The family's model at its default stride, then, for a small family, at the others."""
    family = get_backbone(name)
    model = family.model((SIZE, SIZE, 3))
    yield family.default_output_stride, model
    if len(model.layers) <= MAX_LAYERS_FOR_EVERY_STRIDE:
        for output_stride in family.output_strides:
            if output_stride != family.default_output_stride:
                yield output_stride, family.model((SIZE, SIZE, 3), output_stride)


@pytest.mark.parametrize("name", NAMES)
def test_features_are_keyed_by_their_measured_stride(name):
    for output_stride, model in _models_to_check(name):
        assert model.name == f"{name}_os{output_stride}"
        strides = []
        for key, tensor in model.output.items():
            height, width = tensor.shape[1:3]
            assert height == width, (name, key, tensor.shape)
            measured = 2 ** round(math.log2(SIZE / height))
            assert key == stride_key(measured), (name, output_stride, key, tensor.shape)
            expected = -(-SIZE // measured)
            slack = 1 if name in VALID_PADDING else 0
            assert expected - slack <= height <= expected, (name, key, tensor.shape)
            strides.append(measured)
        assert max(strides) == output_stride, (name, output_stride, strides)


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_are_named(name, tmp_path):
    family = get_backbone(name)
    with pytest.raises(ValueError, match="output_stride=3"):
        family.check(3)
    with pytest.raises(ValueError, match="no_such_option"):
        family.check(None, no_such_option=1)
    missing = str(tmp_path / "missing.weights.h5")
    if family.pretrained:
        with pytest.raises(FileNotFoundError, match="backbone_weights"):
            family.check(None, missing)
    else:
        with pytest.raises(ValueError, match="backbone_weights.*never pretrained"):
            family.check(None, "imagenet")
    if family.input_channels is not None:
        with pytest.raises(ValueError, match="input_shape"):
            family.model((SIZE, SIZE, family.input_channels + 1))


def test_registry_names_the_choices():
    with pytest.raises(ValueError, match=r"backbone='vgg19': expected one of \[.*'vgg16'"):
        get_backbone("vgg19")
    with pytest.raises(ValueError, match=r"expected one of \['vgg16'\]"):
        get_backbone("resnet50", allowed=("vgg16",))
    assert get_backbone("vgg16", allowed=("vgg16",)).name == "vgg16"


def _layer_name(tensor) -> str:
    return tensor._keras_history[0].name


def _keras_applications_name(name: str) -> str:
    """Our VGG16 names (`conv5_3`, `pool5`) in keras.applications (`block5_conv3`, ...)."""
    if name.startswith("pool"):
        return f"block{name[4:]}_pool"
    return VGG16_IMAGENET_NAMES.get(name, name)


@pytest.mark.parametrize("name", PARITY)
def test_keras_applications_weights_load_by_name_and_give_its_features(name, tmp_path):
    """Every feature map at the network's own stride is the keras.applications layer of the
    same name, once the keras.applications weights (random, saved to a file) are loaded."""
    family = get_backbone(name)
    constructor = getattr(keras.applications, family.weights_source.rsplit(".", 1)[-1])
    source = constructor(weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in source.layers:  # statistics unlike a fresh initialisation
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.2, beta.shape),
                    rng.normal(0, 0.2, mean.shape),
                    rng.uniform(0.5, 2.0, variance.shape),
                ]
            )
    path = str(tmp_path / f"{name}.weights.h5")
    source.save_weights(path)
    output_stride = max(family.output_strides)
    ours = family.model((SIZE, SIZE, 3), output_stride, weights=path)
    keys = list(ours.output)
    names = [_keras_applications_name(_layer_name(ours.output[key])) for key in keys]
    reference = keras.Model(source.input, [source.get_layer(n).output for n in names])
    x = rng.normal(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    expected = reference.predict(x, verbose=0)
    got = ours.predict(x, verbose=0)
    assert stride_key(output_stride) in keys
    for key, want in zip(keys, expected):
        scale = np.abs(want).max()
        assert scale > 1e-3, (name, key)
        np.testing.assert_allclose(got[key], want, atol=1e-4 * scale, err_msg=f"{name} {key}")


@pytest.mark.parametrize("builder", ["fcn32s", "fcn16s", "fcn8s", "deconvnet", "rcnn"])
def test_vgg16_builders_go_through_the_registry(builder):
    """FCN, DeconvNet and R-CNN stay VGG16 by their papers: another registered backbone is
    refused with the one choice named."""
    from keras_dense import apps

    with pytest.raises(ValueError, match=r"backbone='resnet50': expected one of \['vgg16'\]"):
        getattr(apps, builder)(num_classes=2, backbone="resnet50")
