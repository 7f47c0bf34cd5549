"""DeepLabv3 / DeepLabv3+ builder and the atrous keras.applications backbones."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_dense.apps import deeplab
from keras_dense.backbones import get_backbone

NUM_CLASSES = 5
APPLICATIONS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "xception": keras.applications.Xception,
    "mobilenetv2": keras.applications.MobileNetV2,
}
# Channels of the last and of the stride-4 features DeepLab uses (from the keras.applications
# summaries: ResNet conv5 / conv2 outputs, Xception block14 / block3, MobileNetV2 block_16 /
# block_2), and keras.applications layers DeepLab leaves out (MobileNetV2's 1280-channel head).
FEATURE_CHANNELS = {
    "resnet50": (2048, 256),
    "resnet101": (2048, 256),
    "xception": (2048, 256),
    "mobilenetv2": (320, 24),
}
UNUSED_SOURCE_LAYERS = {"mobilenetv2": {"Conv_1", "Conv_1_bn"}}


_MODELS: dict = {}


def _model(backbone: str, output_stride: int = 16) -> keras.Model:
    """Builds each (backbone, output stride) DeepLabv3+ once per test session."""
    key = (backbone, output_stride)
    if key not in _MODELS:
        _MODELS[key] = deeplab(
            num_classes=NUM_CLASSES, backbone=backbone, output_stride=output_stride
        )
    return _MODELS[key]


def _randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Random BN statistics, so that copied BN weights differ from a fresh initialisation."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shapes[0]),
                    rng.normal(0.0, 0.2, shapes[1]),
                    rng.normal(0.0, 0.2, shapes[2]),
                    rng.uniform(0.5, 2.0, shapes[3]),
                ]
            )


@pytest.fixture(scope="module")
def source_weight_files(tmp_path_factory):
    """keras.applications backbones (random weights, random BN stats) saved to disk."""
    folder = tmp_path_factory.mktemp("applications")
    files = {}
    for backbone in ("resnet50", "mobilenetv2", "xception"):
        source = APPLICATIONS[backbone](weights=None, include_top=False)
        _randomize_batch_norms(source, seed=len(backbone))
        files[backbone] = (source, str(folder / f"{backbone}_notop.weights.h5"))
        source.save_weights(files[backbone][1])
    return files


# ---------------------------------------------------------------------------------------
# Output size for any input size
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2", "xception", "resnet101"])
def test_output_is_input_size_for_odd_sizes(backbone, output_stride):
    model = _model(backbone, output_stride)
    sizes = [(33, 47), (65, 97)] if backbone in ("resnet50", "mobilenetv2") else [(33, 47)]
    for height, width in sizes:
        x = np.zeros((2, height, width, 3), np.float32)
        assert tuple(model(x).shape) == (2, height, width, NUM_CLASSES)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_feature_strides(output_stride):
    """ASPP runs at 1/output_stride of the input, the decoder at 1/4 (sizes rounded up)."""
    model = _model("resnet50", output_stride)
    probe = keras.Model(
        model.input, [model.get_layer("aspp").output, model.get_layer("decoder").output]
    )
    aspp, decoder = probe(np.zeros((1, 65, 97, 3), np.float32))
    assert tuple(aspp.shape) == (1, -(-65 // output_stride), -(-97 // output_stride), 256)
    assert tuple(decoder.shape) == (1, -(-65 // 4), -(-97 // 4), 256)


def test_deeplabv3_without_decoder_and_softmax():
    model = deeplab(num_classes=3, backbone="mobilenetv2", decoder=False, activation="softmax")
    names = [layer.name for layer in model.layers]
    assert "aspp" in names and not any(name.startswith("decoder") for name in names)
    # The classifier sits directly on the ASPP output.
    assert model.get_layer("logits").input.shape[-1] == 256
    y = np.asarray(model(np.random.default_rng(0).normal(size=(1, 33, 47, 3))))
    assert y.shape == (1, 33, 47, 3)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)


def test_default_atrous_rates_follow_the_output_stride():
    for output_stride, rates in [(16, (6, 12, 18)), (8, (12, 24, 36))]:
        assert _model("resnet50", output_stride).get_layer("aspp").atrous_rates == rates


@pytest.mark.parametrize(
    "backbone, output_stride, normalization",
    [("vgg16", 16, "caffe"), ("compact", 8, "tf"), ("mobilenetv2", 32, "tf")],
)
def test_any_registered_backbone(backbone, output_stride, normalization):
    """ASPP on the family's features at `output_stride`, the decoder on its stride-4 ones,
    and the CRF de-normalises the input as the family expects."""
    model = deeplab(
        num_classes=3,
        backbone=backbone,
        output_stride=output_stride,
        input_shape=(65, 97, 3),
        crf=True,
    )
    assert model.get_layer("crf_image").normalization == normalization
    probe = keras.Model(
        model.input, [model.get_layer("aspp").input, model.get_layer("decoder_low_level").input]
    )
    aspp, low_level = probe.output
    assert aspp.shape[1:3] == (-(-65 // output_stride), -(-97 // output_stride))
    assert low_level.shape[1:3] == (-(-65 // 4), -(-97 // 4))
    if output_stride == 32:
        assert model.get_layer("aspp").atrous_rates == (3, 6, 9)


# ---------------------------------------------------------------------------------------
# Parameter counts: keras.applications backbone + the head counted from the paper's sizes
# ---------------------------------------------------------------------------------------
def _head_parameters(high: int, low: int, num_classes: int, decoder: bool = True) -> int:
    f = 256  # ASPP and decoder filters
    bn = 4  # gamma, beta, moving mean, moving variance
    aspp = high * f + 3 * 9 * high * f + high * f + 5 * f * f + 6 * bn * f
    head = aspp + f * num_classes + num_classes
    if decoder:
        head += low * 48 + bn * 48 + 9 * (f + 48) * f + bn * f + 9 * f * f + bn * f
    return head


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2", "xception", "resnet101"])
def test_parameter_count(backbone):
    source = APPLICATIONS[backbone](weights=None, include_top=False)
    unused = UNUSED_SOURCE_LAYERS.get(backbone, set())
    backbone_params = source.count_params() - sum(
        source.get_layer(name).count_params() for name in unused
    )
    expected = backbone_params + _head_parameters(*FEATURE_CHANNELS[backbone], NUM_CLASSES)
    assert _model(backbone, 16).count_params() == expected


# ---------------------------------------------------------------------------------------
# ImageNet weights load by layer name (checked with a saved keras.applications file)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["resnet50", "mobilenetv2", "xception"])
def test_backbone_weights_from_path(backbone, source_weight_files):
    source, path = source_weight_files[backbone]
    model = deeplab(num_classes=NUM_CLASSES, backbone=backbone, backbone_weights=path)
    target_names = {layer.name for layer in model.layers}
    # Xception's unnamed residual convs / BNs: identified here by their number of filters.
    residual_block = {128: 2, 256: 3, 728: 4, 1024: 13}
    compared = 0
    for layer in source.layers:
        if not layer.weights or layer.name in UNUSED_SOURCE_LAYERS.get(backbone, ()):
            continue
        name = layer.name
        if backbone == "xception" and not name.startswith("block"):
            kind = "conv" if isinstance(layer, keras.layers.Conv2D) else "bn"
            name = f"block{residual_block[layer.weights[0].shape[-1]]}_residual_{kind}"
        assert name in target_names, f"{layer.name} has no counterpart in DeepLab"
        for ours, theirs in zip(model.get_layer(name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(ours, theirs)
        compared += 1
    assert compared > 50


def _atrous_backbones(backbone: str, path: str, input_shape=(None, None, 3)):
    """The backbone at output strides 32, 16 and 8 with the weights of the file `path`, as
    `[stride-4 features, deepest features]` models."""
    models = {}
    for output_stride in (32, 16, 8):
        model = get_backbone(backbone).model(input_shape, output_stride, weights=path)
        outputs = [model.output["stride_4"], model.output[f"stride_{output_stride}"]]
        models[output_stride] = keras.Model(model.input, outputs)
    return models


@pytest.mark.parametrize(
    "backbone, last_layer, stride16_layer",
    [
        ("resnet50", "conv5_block3_out", "conv4_block6_out"),
        ("mobilenetv2", "block_16_project_BN", "block_12_add"),
    ],
)
def test_atrous_backbone_is_the_dense_keras_applications_network(
    backbone, last_layer, stride16_layer, source_weight_files
):
    """The atrous algorithm computes the same features, only more densely.

    At output stride 32 our rebuilt topology equals keras.applications. Removing the last
    stride(s) and dilating what follows gives, sampled every 2 (OS16) or 4 (OS8) pixels, the
    OS32 output again; layers before the first removed stride are untouched.
    """
    source, path = source_weight_files[backbone]
    models = _atrous_backbones(backbone, path)
    x = np.random.default_rng(5).normal(size=(1, 64, 96, 3)).astype(np.float32)
    outputs = {os_: model.predict(x, verbose=0) for os_, model in models.items()}
    reference = keras.Model(
        source.input, [source.get_layer(stride16_layer).output, source.get_layer(last_layer).output]
    ).predict(x, verbose=0)
    scale = np.abs(reference[1]).max()
    assert scale > 0.1
    low32, high32 = outputs[32]
    np.testing.assert_allclose(high32, reference[1], atol=1e-5 * scale)
    np.testing.assert_allclose(outputs[16][1][:, ::2, ::2], reference[1], atol=1e-5 * scale)
    np.testing.assert_allclose(outputs[8][1][:, ::4, ::4], reference[1], atol=1e-5 * scale)
    assert outputs[16][1].shape[1:3] == (4, 6) and outputs[8][1].shape[1:3] == (8, 12)
    # Stride-4 features are identical whatever the output stride.
    for output_stride in (16, 8):
        np.testing.assert_array_equal(outputs[output_stride][0], low32)
    # Before the first modified stride (stride-16 features at OS16) nothing changed.
    probe = keras.Model(models[16].input, models[16].get_layer(stride16_layer).output)
    np.testing.assert_allclose(
        probe.predict(x, verbose=0), reference[0], atol=1e-5 * np.abs(reference[0]).max()
    )


def test_mobilenetv2_static_odd_size_keeps_the_keras_padding(source_weight_files):
    """With a static odd size keras.applications pads (1, 1) before its stride-2 depthwise
    convs instead of (0, 1); the dense equivalence must still hold."""
    path = source_weight_files["mobilenetv2"][1]
    shape = (65, 97, 3)
    source = keras.applications.MobileNetV2(weights=path, include_top=False, input_shape=shape)
    x = np.random.default_rng(8).normal(size=(1, *shape)).astype(np.float32)
    reference = keras.Model(source.input, source.get_layer("block_16_project_BN").output)
    reference = reference.predict(x, verbose=0)
    scale = np.abs(reference).max()
    models = _atrous_backbones("mobilenetv2", path, input_shape=shape)
    for output_stride, step in [(32, 1), (16, 2), (8, 4)]:
        features = models[output_stride].predict(x, verbose=0)[1][:, ::step, ::step]
        assert features.shape == reference.shape
        np.testing.assert_allclose(features, reference, atol=1e-5 * scale)


def test_multi_grid_rates():
    model = get_backbone("resnet50").model(output_stride=16, multi_grid=(1, 2, 4))
    rates = [model.get_layer(f"conv5_block{b}_2_conv").dilation_rate[0] for b in (1, 2, 3)]
    assert rates == [2, 4, 8]
    assert model.get_layer("conv4_block6_2_conv").dilation_rate == (1, 1)
    assert model.get_layer("conv5_block1_1_conv").strides == (1, 1)


# ---------------------------------------------------------------------------------------
# Serialisation and argument checks
# ---------------------------------------------------------------------------------------
def test_full_model_weights_argument(tmp_path):
    model = deeplab(num_classes=3, backbone="mobilenetv2", decoder=False)
    _randomize_batch_norms(model, seed=4)
    path = str(tmp_path / "deeplab.weights.h5")
    model.save_weights(path)
    reloaded = deeplab(num_classes=3, backbone="mobilenetv2", decoder=False, weights=path)
    x = np.random.default_rng(7).normal(size=(1, 32, 40, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded(x), model(x), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"backbone": "vgg19"}, "backbone"),
        ({"output_stride": 4}, "output_stride"),
        ({"backbone": "compact", "output_stride": 2, "atrous_rates": (1, 2, 3)}, "output_stride"),
        ({"atrous_rates": (6, 12)}, "atrous_rates"),
        ({"num_classes": 0}, "num_classes"),
        ({"backbone": "mobilenetv2", "multi_grid": (1, 2, 4)}, "multi_grid"),
        ({"multi_grid": (1, 2)}, "multi_grid"),
        ({"input_shape": (64, 64)}, "input_shape"),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        deeplab(**kwargs)


def test_missing_backbone_weight_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        deeplab(backbone="mobilenetv2", backbone_weights=str(tmp_path / "missing.h5"))
