"""DeepLab v1 (LargeFOV) and v2 (ASPP-L) on VGG16: sizes, strides, dilations, CRF, saving.

The expected numbers come from the papers (Chen et al., ICLR 2015, Table 2: LargeFOV has a
3x3 fc6 at input stride 12, a 224-px field of view and 20.5 M parameters; Chen et al., TPAMI
2017: ASPP-L has four fc6-fc7-fc8 branches at rates 6, 12, 18, 24) and from the layer sizes,
written here by hand, never read from the code under test.
"""

from __future__ import annotations

import json
import math
import pathlib

import keras
import numpy as np
import pytest

import keras_dense
from keras_dense import cli
from keras_dense.analysis import receptive_field
from keras_dense.data import SHAPE_CLASSES, convert_shapes
from keras_dense.layers import CrfRnn
from keras_dense.tasks import get_task
from keras_dense.training import load_recipe
from keras_dense.training.builders import build_model
from keras_dense.utils.model_card import write_model_card

REPO = pathlib.Path(__file__).resolve().parents[1]

# VGG16's 13 convolutions (input channels, output channels), all 3x3.
VGG16_CONVS = [
    (3, 64), (64, 64),
    (64, 128), (128, 128),
    (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512),
    (512, 512), (512, 512), (512, 512),
]  # fmt: skip
ASPP_L_RATES = (6, 12, 18, 24)


def conv_params(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def head_params(num_classes: int, fc: int = 1024) -> int:
    """fc6 (3x3, 512 -> fc), fc7 (1x1, fc -> fc), fc8 (1x1, fc -> classes)."""
    return conv_params(3, 512, fc) + conv_params(1, fc, fc) + conv_params(1, fc, num_classes)


TRUNK_PARAMS = sum(conv_params(3, cin, cout) for cin, cout in VGG16_CONVS)


def test_largefov_parameter_count_follows_the_layer_sizes():
    assert TRUNK_PARAMS == 14_714_688
    expected = TRUNK_PARAMS + head_params(21)
    assert expected == 14_714_688 + 4_719_616 + 1_049_600 + 21_525
    model = keras_dense.apps.deeplab_v1(21)
    assert model.count_params() == expected
    assert round(model.count_params() / 1e6, 1) == 20.5  # the paper's Table 2


def test_aspp_l_parameter_count_follows_the_layer_sizes():
    model = keras_dense.apps.deeplab_v2(21)
    assert model.count_params() == TRUNK_PARAMS + 4 * head_params(21)
    assert keras_dense.apps.deeplab_v2(5, atrous_rates=(6, 12)).count_params() == (
        TRUNK_PARAMS + 2 * head_params(5)
    )


def _receptive_field(layers) -> tuple[int, int]:
    """Size and jump of a stack of (kernel, stride, dilation), by the textbook recurrence."""
    size, jump = 1, 1
    for kernel, stride, dilation in layers:
        size += (kernel - 1) * dilation * jump
        jump *= stride
    return size, jump


# LargeFOV as the paper's released prototxt has it, pool5 included (fc6 reads pool5a).
_CONV, _POOL2, _POOL1 = (3, 1, 1), (3, 2, 1), (3, 1, 1)
LARGEFOV_TO_POOL5 = [
    *[_CONV] * 2, _POOL2,
    *[_CONV] * 2, _POOL2,
    *[_CONV] * 3, _POOL2,
    *[_CONV] * 3, _POOL1,
    *[(3, 1, 2)] * 3, _POOL1,
]  # fmt: skip


def test_largefov_strides_dilations_and_field_of_view():
    model = keras_dense.apps.deeplab_v1(21)
    for b in range(1, 6):
        pool = model.get_layer(f"pool{b}").get_config()
        assert tuple(pool["pool_size"]) == (3, 3), b
        assert tuple(pool["strides"]) == ((2, 2) if b <= 3 else (1, 1)), b
        assert pool["padding"] == "same"
    for layer in model.layers:
        if layer.name.startswith("conv"):
            want = (2, 2) if layer.name.startswith("conv5") else (1, 1)
            assert tuple(layer.get_config()["dilation_rate"]) == want, layer.name
    fc6, fc7, fc8 = (model.get_layer(n).get_config() for n in ("fc6", "fc7", "fc8"))
    assert fc6["filters"] == 1024 and tuple(fc6["kernel_size"]) == (3, 3)
    assert tuple(fc6["dilation_rate"]) == (12, 12)
    assert fc7["filters"] == 1024 and tuple(fc7["kernel_size"]) == (1, 1)
    assert fc8["filters"] == 21 and tuple(fc8["kernel_size"]) == (1, 1)
    # The released model's fc8 filler: Gaussian, std 0.01 (its kernels start small).
    kernel = model.get_layer("fc8").get_weights()[0]
    assert abs(float(np.std(kernel)) - 0.01) < 0.001
    assert model.get_layer("drop6").rate == 0.5 and model.get_layer("drop7").rate == 0.5
    # The paper's "receptive field 224": fc6's window spans (3 - 1) * 12 cells of the
    # stride-8 grid plus one 32-px cell of VGG16's fc6 grid, as its 7x7 fc6 did (6 * 32 + 32).
    kernel, rate = fc6["kernel_size"][0], fc6["dilation_rate"][0]
    assert (kernel - 1) * rate * 8 + 32 == 224
    # The whole network's field of view, against the textbook recurrence over the prototxt.
    size, jump = _receptive_field([*LARGEFOV_TO_POOL5, (3, 1, 1), (3, 1, 12)])
    assert jump == 8
    field = receptive_field(model, "fc8")
    assert field.size == (size, size) and field.jump == (jump, jump)


def test_aspp_l_branches_and_fields_of_view():
    model = keras_dense.apps.deeplab_v2(21)
    for i, rate in enumerate(ASPP_L_RATES, start=1):
        fc6 = model.get_layer(f"fc6_{i}").get_config()
        assert tuple(fc6["dilation_rate"]) == (rate, rate) and fc6["filters"] == 1024
        assert tuple(fc6["kernel_size"]) == (3, 3)
        assert model.get_layer(f"fc7_{i}").get_config()["filters"] == 1024
        assert model.get_layer(f"fc8_{i}").get_config()["filters"] == 21
        size, jump = _receptive_field([*LARGEFOV_TO_POOL5, (3, 1, rate)])
        field = receptive_field(model, f"fc8_{i}")
        assert field.size == (size, size) and field.jump == (jump, jump) == (8, 8)
    assert isinstance(model.get_layer("fc8"), keras.layers.Add)
    assert len(model.get_layer("fc8").input) == 4
    # The widest branch (rate 24) gives the summed map its field of view.
    assert (
        receptive_field(model, "fc8").size[0]
        == _receptive_field([*LARGEFOV_TO_POOL5, (3, 1, 24)])[0]
    )


@pytest.mark.parametrize("builder", ["deeplab_v1", "deeplab_v2"])
@pytest.mark.parametrize("size", [(64, 64), (33, 47)])
def test_output_stride_8_and_output_at_the_input_size(builder, size):
    model = getattr(keras_dense.apps, builder)(3, fc_filters=8)
    probe = keras.Model(model.inputs, [model.get_layer("fc8").output, model.output])
    x = np.random.default_rng(0).normal(0, 50, (1, *size, 3)).astype("float32")
    scores, output = (np.asarray(t) for t in probe(x))
    # Three stride-2 poolings that round up (Caffe's ceil mode), nothing else strides.
    assert scores.shape == (1, *(math.ceil(s / 8) for s in size), 3)
    assert output.shape == (1, *size, 3)


def test_both_are_segmentation_builders_taking_crf():
    builders = get_task("segmentation").builders
    assert "deeplab_v1" in builders and "deeplab_v2" in builders
    for builder in (keras_dense.apps.deeplab_v1, keras_dense.apps.deeplab_v2):
        model = builder(3, input_shape=(32, 40, 3), fc_filters=8, crf=True)
        assert isinstance(model.get_layer("crf_rnn"), CrfRnn)
        assert model.get_layer("crf_image").normalization == "caffe"
        assert model.output_shape == (None, 32, 40, 3)


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="atrous_rates"):
        keras_dense.apps.deeplab_v2(3, atrous_rates=(6, 0))
    with pytest.raises(ValueError, match="atrous_rates"):
        keras_dense.apps.deeplab_v2(3, atrous_rates=())
    with pytest.raises(ValueError, match="fc_filters"):
        keras_dense.apps.deeplab_v1(3, fc_filters=0)
    with pytest.raises(ValueError, match="dropout"):
        keras_dense.apps.deeplab_v1(3, dropout=1.0)
    with pytest.raises(ValueError, match="backbone"):
        keras_dense.apps.deeplab_v1(3, backbone="resnet50")


def test_no_top_vgg16_file_loads_the_trunk_and_leaves_the_head_fresh(tmp_path):
    keras.utils.set_random_seed(3)
    source = keras.applications.VGG16(weights=None, include_top=False)
    path = str(tmp_path / "vgg16_notop.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(4)
    fresh = keras_dense.apps.deeplab_v2(3, atrous_rates=(6, 12), fc_filters=8)
    keras.utils.set_random_seed(4)
    model = keras_dense.apps.deeplab_v2(
        3, atrous_rates=(6, 12), fc_filters=8, backbone_weights=path
    )
    for b, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, convs + 1):
            ours = model.get_layer(f"conv{b}_{i}").get_weights()
            theirs = source.get_layer(f"block{b}_conv{i}").get_weights()
            for got, want in zip(ours, theirs, strict=True):
                np.testing.assert_array_equal(got, want)
    for name in ("fc6_1", "fc7_1", "fc8_1", "fc6_2", "fc7_2", "fc8_2"):
        for got, want in zip(
            model.get_layer(name).get_weights(), fresh.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)


def test_keras_round_trip(tmp_path):
    # v2 (the harness reloads v1 in a fresh process): the summed branches survive the file.
    model = keras_dense.apps.deeplab_v2(3, atrous_rates=(6, 12), fc_filters=8, activation="softmax")
    path = str(tmp_path / "aspp_l.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(0, 50, (1, 21, 27, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.get_layer("fc6_2").dilation_rate == (12, 12)


def test_shipped_recipes_name_the_builders():
    for version, builder in (("v1", "deeplab_v1"), ("v2", "deeplab_v2")):
        recipe = load_recipe(str(REPO / "apps" / f"deeplab_{version}_pets.toml"))
        assert recipe["model"]["builder"] == builder
        assert recipe["data"]["normalization"] == "caffe"  # VGG16's, for its ImageNet weights


def test_a_recipe_built_model_is_scored_by_evaluate_crf(tmp_path):
    """`model.builder = "deeplab_v2"` with TOML kwargs (a list of rates), then evaluate --crf."""
    convert_shapes(str(tmp_path / "val"), 2, size=32, seed=2, progress=False)
    model, kwargs = build_model("deeplab_v2", {"atrous_rates": [6, 12], "fc_filters": 8}, 4, 3)
    assert kwargs["atrous_rates"] == (6, 12) and model.get_layer("fc6_2").dilation_rate == (12, 12)
    path = str(tmp_path / "model.keras")
    model.save(path)
    write_model_card(
        path, {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    )
    out = tmp_path / "eval"
    val = str(tmp_path / "val-*.tfrecord")
    argv = ["evaluate", "--model", path, "--data", val, "--crf", "--output", str(out)]
    assert cli.main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["crf"] is True and report["images"] == 2
    assert np.sum(report["confusion_matrix"]) == 2 * 32 * 32
    assert len(report["confusion_matrix"]) == len(SHAPE_CLASSES)
