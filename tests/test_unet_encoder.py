"""U-Net with a registered backbone as its encoder (`unet(backbone=...)`), and the plain U-Net
(`backbone=None`) unchanged."""

from __future__ import annotations

import subprocess
import types

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT

from keras_dense.apps import unet
from keras_dense.backbones import get_backbone

K = 3
# The commit before U-Net got an encoder choice: its plain U-Net is the reference.
OLD_COMMIT = "6dee29d"
# From the family docstrings: the features a U-Net decoder merges, deepest first. compact
# reaches stride 8 (blocks at 1, 2, 4, 8); MobileNetV2 reaches 32 (features at 4 ... 32).
DECODER_SKIPS = {"compact": (4,), "mobilenetv2": (16, 8, 4)}
SKIP_LAYERS = {"mobilenetv2": {16: "block_12_add", 8: "block_5_add", 4: "block_2_add"}}


def _old_unet_module() -> types.ModuleType:
    """keras_dense/apps/unet_model.py as of OLD_COMMIT, executed against today's package."""
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:keras_dense/apps/unet_model.py"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"git history with {OLD_COMMIT} not available: {error}")
    module = types.ModuleType("old_unet_model")
    exec(compile(source, "old_unet_model.py", "exec"), module.__dict__)
    return module


PLAIN_CASES = {
    "defaults": dict(filters=2),
    "valid-depth3": dict(num_classes=2, input_shape=(None, None, 1), filters=4, depth=3),
    "same-bn-dropout": dict(
        num_classes=4,
        input_shape=(None, None, 3),
        padding="same",
        filters=4,
        depth=3,
        batch_norm=True,
        dropout=0.5,
        activation="softmax",
    ),
}


@pytest.mark.parametrize("case", PLAIN_CASES)
def test_plain_unet_is_the_previous_network(case):
    old = _old_unet_module().unet(**PLAIN_CASES[case])
    new = unet(**PLAIN_CASES[case])
    assert new.get_config() == old.get_config()
    assert new.count_params() == old.count_params()
    new.set_weights(old.get_weights())
    # 572: the paper's tile (the default input); 60: valid for depth 3 (4 k + 12).
    shape = (1, 572, 572, 1) if case == "defaults" else (1, 60, 60, old.input_shape[-1])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(new.predict(x, verbose=0), old.predict(x, verbose=0), atol=1e-5)


def _names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers}


def _head_names(skips) -> set[str]:
    """The layers the spec adds after the encoder: per skip stride, upsample, concat and two
    conv-BN-ReLU; then the classifier and the upsampling to the input size."""
    names = {"logits", "upsample_logits"}
    for s in skips:
        names |= {f"decoder{s}_upsample", f"decoder{s}_concat"}
        for conv in ("conv1", "conv2"):
            names |= {f"decoder{s}_{conv}", f"decoder{s}_{conv}_bn", f"decoder{s}_{conv}_relu"}
    return names


@pytest.mark.parametrize("backbone", sorted(DECODER_SKIPS))
def test_encoder_layers_are_exactly_the_backbones(backbone):
    model = unet(K, input_shape=(None, None, 3), filters=4, backbone=backbone)
    family = get_backbone(backbone)
    reference = family.model(output_stride=max(family.output_strides))
    encoder = _names(reference) - {"image"}
    assert encoder <= _names(model)
    assert _names(model) - encoder - {"image"} == _head_names(DECODER_SKIPS[backbone])
    # Filters halve from the deepest decoder stage: filters * stride / 4.
    for s in DECODER_SKIPS[backbone]:
        assert model.get_layer(f"decoder{s}_conv1").filters == 4 * s // 4
        assert model.get_layer(f"decoder{s}_conv2").filters == 4 * s // 4
    for s, layer in SKIP_LAYERS.get(backbone, {}).items():
        sources = {
            t._keras_history.operation.name for t in model.get_layer(f"decoder{s}_concat").input
        }
        assert layer in sources, (s, sources)


@pytest.mark.parametrize("backbone", sorted(DECODER_SKIPS))
@pytest.mark.parametrize("size", [(33, 47), (37, 41)])
def test_output_is_input_sized_for_odd_sizes(backbone, size):
    model = unet(K, input_shape=(None, None, 3), filters=4, backbone=backbone)
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    assert model.predict(x, verbose=0).shape == (2, *size, K)


def test_backbone_weights_reach_the_encoder(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    path = str(tmp_path / "mobilenet_v2.weights.h5")
    source.save_weights(path)
    model = unet(
        K, input_shape=(None, None, 3), filters=4, backbone="mobilenetv2", backbone_weights=path
    )
    compared = 0
    for layer in source.layers:
        if layer.weights and layer.name in _names(model):
            for got, want in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(got, want, err_msg=layer.name)
            compared += 1
    assert compared >= 50  # every conv and BN of the 17 blocks


def _blocks(n=4, height=24, width=28):
    labels = np.zeros((n, height, width), np.int32)
    labels[:, height // 2 :, :] = 1
    labels[:, :, width // 2 :] += 1
    x = np.random.default_rng(0).normal(0, 0.3, (n, height, width, 3)).astype(np.float32)
    return x + 2.0 * np.eye(3, dtype=np.float32)[labels], labels


def test_a_short_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = unet(K, input_shape=(None, None, 3), filters=4, backbone="compact")
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = _blocks()
    losses = model.fit(x, y, epochs=8, batch_size=4, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses


def _crf_normalization(model: keras.Model) -> str:
    return model.get_layer("crf_image").get_config()["normalization"]


def test_crf_inverts_the_families_normalization():
    plain = unet(K, input_shape=(None, None, 3), padding="same", filters=2, depth=2, crf=True)
    encoder = unet(K, input_shape=(None, None, 3), filters=2, backbone="compact", crf=True)
    assert _crf_normalization(plain) == "caffe"
    assert _crf_normalization(encoder) == get_backbone("compact").normalization == "tf"


def test_refusals_name_the_argument():
    with pytest.raises(ValueError, match="padding='valid'.*overlap-tile"):
        unet(K, input_shape=(None, None, 3), padding="valid", backbone="compact")
    with pytest.raises(ValueError, match="depth"):
        unet(K, input_shape=(None, None, 3), depth=4, backbone="compact")
    with pytest.raises(ValueError, match="backbone="):
        unet(K, input_shape=(None, None, 3), backbone="resnet5")
    with pytest.raises(ValueError, match="backbone_weights"):
        unet(K, input_shape=(None, None, 3), backbone_weights="imagenet")
    with pytest.raises(ValueError, match="3 channels"):
        unet(K, input_shape=(None, None, 1), backbone="mobilenetv2")
    with pytest.raises(ValueError, match="never pretrained"):
        unet(K, backbone="compact", backbone_weights="imagenet")
