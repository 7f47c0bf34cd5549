"""The backbone families ResNet v2, MobileNetV3, EfficientNetV2 and ConvNeXt.

The references are keras.applications' own networks: their layer output shapes, their
parameter counts and, with the same (randomised) weights saved to a file, their feature values.
No test touches the network: weights are never "imagenet".
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_dense.backbones import get_backbone

HEIGHT, WIDTH = 64, 96

# keras.applications constructor and parameter count of its no-top network (keras 3.15:
# `constructor(include_top=False, weights=None).count_params()`). ConvNeXt's backbone leaves
# out the no-top network's final LayerNormalization (2 x 768 parameters).
FAMILIES = {
    "resnet50v2": (keras.applications.ResNet50V2, 23_564_800),
    "resnet101v2": (keras.applications.ResNet101V2, 42_626_560),
    "mobilenetv3small": (keras.applications.MobileNetV3Small, 939_120),
    "mobilenetv3large": (keras.applications.MobileNetV3Large, 2_996_352),
    "efficientnetv2b0": (keras.applications.EfficientNetV2B0, 5_919_312),
    "efficientnetv2b1": (keras.applications.EfficientNetV2B1, 6_931_124),
    "efficientnetv2b2": (keras.applications.EfficientNetV2B2, 8_769_374),
    "efficientnetv2b3": (keras.applications.EfficientNetV2B3, 12_930_622),
    "efficientnetv2s": (keras.applications.EfficientNetV2S, 20_331_360),
    "convnexttiny": (keras.applications.ConvNeXtTiny, 27_820_128 - 2 * 768),
}
# The smallest network of each kind: built once more as the keras.applications reference.
PARITY = ("resnet50v2", "mobilenetv3small", "mobilenetv3large", "efficientnetv2b0", "convnexttiny")


def _randomise(model: keras.Model, seed: int) -> None:
    """Gives every constant-initialised weight (batch norm statistics and scales, biases,
    layer scales) random values, so that a weight left out of a transfer shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if value.size and np.ptp(value) == 0:
            if value.flat[0] > 0:
                new = rng.uniform(0.5, 1.5, value.shape)
            else:
                new = rng.normal(0.0, 0.1, value.shape)
            variable.assign(new.astype(value.dtype))


def _image(name: str, shape=(1, HEIGHT, WIDTH, 3), seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if get_backbone(name).normalization == "tf":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return rng.uniform(0.0, 255.0, shape).astype(np.float32)  # networks that normalise inside


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`built(name) -> (ours, reference or None, weight file or None)`, each built once.

    For the `PARITY` families the keras.applications network (`weights=None`, randomised) is
    saved to a `.weights.h5` file and ours is built with `Backbone.model(weights=path)`.
    """
    cache = {}

    def get(name):
        if name not in cache:
            constructor = FAMILIES[name][0]
            reference = path = None
            if name in PARITY:
                reference = constructor(
                    include_top=False, weights=None, input_shape=(HEIGHT, WIDTH, 3)
                )
                _randomise(reference, seed=len(name))
                path = str(tmp_path_factory.mktemp(name) / f"{name}.weights.h5")
                reference.save_weights(path)
            ours = get_backbone(name).model(input_shape=(HEIGHT, WIDTH, 3), weights=path)
            cache[name] = (ours, reference, path)
        return cache[name]

    return get


def _producer(tensor) -> str:
    """The name of the layer whose output `tensor` is."""
    return tensor._keras_history.operation.name


def _reference_outputs(name: str, ours: keras.Model, reference: keras.Model) -> dict:
    """The reference network's tensors for our outputs: the same layer at strides 4-16; at 32
    the network's own output (ConvNeXt: its last stage, before the unnamed final norm)."""
    outputs = {}
    for key, tensor in ours.output.items():
        if key == "stride_32" and name != "convnexttiny":
            outputs[key] = reference.output
        else:
            outputs[key] = reference.get_layer(_producer(tensor)).output
    return outputs


def test_families_are_registered_with_their_contract():
    for name, (constructor, _) in FAMILIES.items():
        family = get_backbone(name)
        assert family.weights_source == f"keras.applications.{constructor.__name__}"
        if name.startswith("resnet"):
            assert (family.output_strides, family.normalization) == ((8, 16, 32), "tf")
        else:
            assert (family.output_strides, family.normalization) == ((32,), None)
    with pytest.raises(ValueError, match=r"output_stride=16 for backbone='convnexttiny'.*\[32\]"):
        get_backbone("convnexttiny").model(output_stride=16)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_features_have_the_claimed_strides(name, built):
    ours, reference, _ = built(name)
    shapes = {int(key.split("_")[1]): tuple(t.shape[1:]) for key, t in ours.output.items()}
    assert sorted(shapes) == [4, 8, 16, 32]
    for stride, shape in shapes.items():
        assert shape[:2] == (HEIGHT // stride, WIDTH // stride), (stride, shape)
    # The whole no-top network is used: every weighted layer feeds some feature.
    assert ours.count_params() == FAMILIES[name][1]
    if reference is not None:
        for key, tensor in _reference_outputs(name, ours, reference).items():
            assert tuple(tensor.shape) == tuple(ours.output[key].shape), key


@pytest.mark.parametrize("name", PARITY)
def test_weights_from_a_keras_applications_file_give_its_features(name, built):
    ours, reference, _ = built(name)
    x = _image(name)
    got = ours.predict(x, verbose=0)
    probe = keras.Model(reference.input, _reference_outputs(name, ours, reference))
    expected = probe.predict(x, verbose=0)
    for key, value in expected.items():
        scale = np.abs(value).max()
        assert scale > 1e-3, key
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-4 * scale, err_msg=key)


def test_mobilenetv3_sizes_static_and_unknown():
    """At a static odd size the features have keras.applications' sizes for that size
    (`ceil(size / stride)`: it pads its stride-2 depthwise convolutions (1, 1) there). Built on
    an unknown size, keras.applications pads (0, 1) as for an even size: after the stem's
    "same" convolution (which rounds up) each halving rounds down (the documented behaviour)."""

    def unknown_size(size: int, stride: int) -> int:
        size = -(-size // 2)
        while stride > 2:
            size, stride = size // 2, stride // 2
        return size

    size = (33, 47, 3)
    family = get_backbone("mobilenetv3small")
    static = family.model(input_shape=size)
    reference = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=size
    )
    for key, tensor in _reference_outputs("mobilenetv3small", static, reference).items():
        assert tuple(static.output[key].shape) == tuple(tensor.shape), key
    got = family.model().predict(np.zeros((1, *size), np.float32), verbose=0)
    for key, tensor in static.output.items():
        stride = int(key.split("_")[1])
        assert tuple(tensor.shape[1:3]) == (-(-33 // stride), -(-47 // stride)), key
        assert got[key].shape[1:3] == (unknown_size(33, stride), unknown_size(47, stride)), key


def test_resnet_v2_dilated_features_are_the_dense_network(built):
    """Removing the last stride(s) and dilating what follows gives, sampled every 2 (OS16) or
    4 (OS8) pixels, the OS32 features again; the features before the first removed stride do
    not change. An odd size checks the borders."""
    _, _, path = built("resnet50v2")
    family = get_backbone("resnet50v2")
    models = {32: family.model(weights=path)}
    for stride in (16, 8):  # the same layers and weights, in the same order
        models[stride] = family.model(output_stride=stride)
        models[stride].set_weights(models[32].get_weights())
    assert {m.count_params() for m in models.values()} == {FAMILIES["resnet50v2"][1]}
    rates = [models[8].get_layer(f"conv{s}_block1_2_conv").dilation_rate[0] for s in (3, 4, 5)]
    assert rates == [1, 2, 4]  # conv3_block1, conv4_block1, conv5_block1
    grid = family.model(output_stride=16, multi_grid=(1, 2, 4))
    rates = [grid.get_layer(f"conv5_block{b}_2_conv").dilation_rate[0] for b in (1, 2, 3)]
    assert rates == [2, 4, 8]
    x = _image("resnet50v2", shape=(1, 65, 97, 3))
    out = {stride: model.predict(x, verbose=0) for stride, model in models.items()}
    deepest = out[32]["stride_32"]
    scale = np.abs(deepest).max()
    assert deepest.shape[1:3] == (3, 4) and scale > 1e-3
    np.testing.assert_allclose(out[16]["stride_16"][:, ::2, ::2], deepest, atol=1e-4 * scale)
    np.testing.assert_allclose(out[8]["stride_8"][:, ::4, ::4], deepest, atol=1e-4 * scale)
    assert out[16]["stride_16"].shape[1:3] == (5, 7) and out[8]["stride_8"].shape[1:3] == (9, 13)
    for stride, keys in ((16, ("stride_4", "stride_8")), (8, ("stride_4",))):
        for key in keys:
            np.testing.assert_allclose(out[stride][key], out[32][key], rtol=1e-5, atol=1e-5)
