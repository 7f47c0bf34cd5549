"""FCN-32s / 16s / 8s and `convolutionalize`, checked against independent references.

FCN has ~134 M parameters: each variant is built once per module (fixtures) and fed small
inputs. The VGG16 classifier (random weights, never downloaded) is also built once: it is the
source of the `backbone_weights=path` test and the classifier `convolutionalize` is checked on.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_dense
from keras_dense.apps import convolutionalize, fcn8s, fcn16s, fcn32s
from tests.test_upsampling import numpy_bilinear_matrix

VARIANTS = ("fcn32s", "fcn16s", "fcn8s")
PAPER_FCN8S_PARAMS = 134.5e6  # FCN-8s, 21 classes (Long et al.; Caffe model zoo)


def random_image(h: int, w: int, seed: int = 0, batch: int = 1) -> np.ndarray:
    """An image in the range of "caffe"-preprocessed VGG16 inputs."""
    return np.random.default_rng(seed).uniform(-120, 130, (batch, h, w, 3)).astype("float32")


def submodel(model: keras.Model, names: list[str]) -> keras.Model:
    return keras.Model(model.input, [model.get_layer(n).output for n in names])


@pytest.fixture(scope="module")
def vgg16_classifier() -> keras.Model:
    return keras.applications.VGG16(weights=None)


@pytest.fixture(scope="module")
def fcn32s_model(vgg16_classifier, tmp_path_factory) -> keras.Model:
    """FCN-32s whose backbone comes from a saved random VGG16 via backbone_weights=path."""
    path = tmp_path_factory.mktemp("vgg16") / "vgg16.weights.h5"
    vgg16_classifier.save_weights(path)
    model = fcn32s(backbone_weights=str(path))
    path.unlink()
    return model


@pytest.fixture(scope="module")
def fcn16s_model() -> keras.Model:
    return fcn16s(activation="softmax")


@pytest.fixture(scope="module")
def fcn8s_model() -> keras.Model:
    return fcn8s(21)


@pytest.fixture
def fcn(request):
    return request.getfixturevalue(f"{request.param}_model")


# --------------------------------------------------------------------------- structure


def test_fcn8s_parameter_count_matches_paper(fcn8s_model):
    assert abs(fcn8s_model.count_params() - PAPER_FCN8S_PARAMS) / PAPER_FCN8S_PARAMS < 0.01


@pytest.mark.parametrize("fcn", VARIANTS, indirect=True)
@pytest.mark.parametrize("size", [(33, 33), (47, 47), (64, 64), (100, 100), (33, 47), (1, 1)])
def test_output_is_input_size_for_any_size(fcn, size):
    out = fcn(random_image(*size, seed=sum(size)), training=False)
    assert tuple(out.shape) == (1, *size, 21)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))


def test_layer_names_follow_the_paper(fcn32s_model, fcn16s_model, fcn8s_model):
    common = ["conv1_1", "conv5_3", "pool5", "fc6", "drop6", "fc7", "drop7", "score_fr"]
    expected = {
        "fcn32s": common + ["upscore", "score"],
        "fcn16s": common + ["upscore2", "score_pool4", "fuse_pool4", "upscore16", "score"],
        "fcn8s": common
        + ["upscore2", "score_pool4", "fuse_pool4", "upscore_pool4", "score_pool3"]
        + ["fuse_pool3", "upscore8", "score"],
    }
    models = {"fcn32s": fcn32s_model, "fcn16s": fcn16s_model, "fcn8s": fcn8s_model}
    for variant, names in expected.items():
        layer_names = {layer.name for layer in models[variant].layers}
        assert set(names) <= layer_names, variant
    assert fcn8s_model.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    assert fcn8s_model.get_layer("fc7").kernel.shape == (1, 1, 4096, 4096)


def hat_kernel(factor: int, channels: int) -> np.ndarray:
    """Bilinear upsampling kernel built from the triangle function with np.interp."""
    k = 2 * factor - factor % 2
    c = (k - 1) / 2
    hat = np.interp(np.arange(k), [c - factor, c, c + factor], [0.0, 1.0, 0.0])
    kernel = np.zeros((k, k, channels, channels))
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(hat, hat)[..., None]
    return kernel


def test_skips_zero_init_and_upscores_bilinear(fcn32s_model, fcn16s_model, fcn8s_model):
    for model in (fcn16s_model, fcn8s_model):
        for name in ("score_pool4", "score_pool3"):
            if name in {layer.name for layer in model.layers}:
                kernel, bias = model.get_layer(name).get_weights()
                assert kernel.shape[-1] == 21 and not kernel.any() and not bias.any()
    learned = [
        (fcn16s_model, "upscore2"),
        (fcn8s_model, "upscore2"),
        (fcn8s_model, "upscore_pool4"),
    ]
    for model, name in learned:
        layer = model.get_layer(name)
        assert layer.trainable and not layer.use_bias and layer.strides == (2, 2)
        np.testing.assert_allclose(layer.get_weights()[0], hat_kernel(2, 21), atol=1e-7)
    fixed = [(fcn32s_model, "upscore", 32), (fcn16s_model, "upscore16", 16)]
    for model, name, factor in fixed + [(fcn8s_model, "upscore8", 8)]:
        layer = model.get_layer(name)
        assert not layer.trainable and not layer.use_bias and layer.strides == (factor, factor)
        np.testing.assert_allclose(layer.get_weights()[0], hat_kernel(factor, 21), atol=1e-7)
        assert not any(w is layer.kernel for w in model.trainable_weights)


# --------------------------------------------------------------------------- alignment


def upsample_with_mask(x: np.ndarray, valid: np.ndarray, factor: int, out_hw: tuple[int, int]):
    """Half-pixel bilinear upsampling by `factor` (NumPy), tracking where it is exact.

    `valid` (H, W) marks trustworthy input cells; an output is valid when its sample point is
    inside the input and every input cell it reads is valid.
    """
    rows, inside_r = numpy_bilinear_matrix(x.shape[1], factor, out_hw[0])
    cols, inside_c = numpy_bilinear_matrix(x.shape[2], factor, out_hw[1])
    y = np.einsum("ph,bhwc,qw->bpqc", rows, x.astype("float64"), cols)
    reads_invalid = (rows != 0).astype(int) @ (~valid).astype(int) @ (cols != 0).T.astype(int)
    return y, np.outer(inside_r, inside_c) & (reads_invalid == 0)


@pytest.mark.parametrize("fcn", VARIANTS, indirect=True)
def test_output_is_bilinear_upsampling_of_fused_scores(fcn):
    """The heads compose exact bilinear x2 / x8 / x16 / x32 steps on half-pixel-aligned grids.

    The skip scores are made non-zero for the test so their alignment is checked too.
    """
    skips = [
        name
        for name in ("score_pool4", "score_pool3")
        if name in {layer.name for layer in fcn.layers}
    ]
    saved = {name: fcn.get_layer(name).get_weights() for name in skips}
    rng = np.random.default_rng(3)
    try:
        for name in skips:
            kernel, bias = saved[name]
            fcn.get_layer(name).set_weights(
                [rng.normal(0, 0.01, kernel.shape), rng.normal(0, 1, bias.shape)]
            )
        h, w = 100, 75
        outputs = submodel(fcn, ["score_fr", *skips, "score"])(random_image(h, w, seed=5))
        score_fr, *skip_scores, final = [keras.ops.convert_to_numpy(t) for t in outputs]
    finally:
        for name in skips:
            fcn.get_layer(name).set_weights(saved[name])

    score, valid = score_fr, np.ones(score_fr.shape[1:3], dtype=bool)
    for skip in skip_scores:
        score, valid = upsample_with_mask(score, valid, 2, skip.shape[1:3])
        score = score + skip
    factor = 32 // 2 ** len(skip_scores)
    reference, valid = upsample_with_mask(score, valid, factor, (h, w))
    assert final.shape == (1, h, w, 21)
    assert valid.sum() > 0.25 * h * w
    np.testing.assert_allclose(final[:, valid], reference[:, valid], rtol=1e-4, atol=1e-4)


def test_softmax_activation(fcn16s_model):
    probs, logits = submodel(fcn16s_model, ["score_softmax", "score"])(random_image(40, 52))
    probs, logits = keras.ops.convert_to_numpy(probs), keras.ops.convert_to_numpy(logits)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


# --------------------------------------------------------------------------- weights


def test_backbone_weights_path_loads_convs_and_fc_layers(fcn32s_model, vgg16_classifier):
    for ours, theirs in [("conv1_1", "block1_conv1"), ("conv5_3", "block5_conv3")]:
        for a, b in zip(
            fcn32s_model.get_layer(ours).get_weights(),
            vgg16_classifier.get_layer(theirs).get_weights(),
        ):
            np.testing.assert_array_equal(a, b)
    fc1_kernel, fc1_bias = vgg16_classifier.get_layer("fc1").get_weights()
    fc6_kernel, fc6_bias = fcn32s_model.get_layer("fc6").get_weights()
    np.testing.assert_array_equal(fc6_kernel, fc1_kernel.reshape(7, 7, 512, 4096))
    np.testing.assert_array_equal(fc6_bias, fc1_bias)

    # Independent check of the reshape order: at 224x224 the centre cell of fc6 / fc7 sees
    # exactly the 7x7 pool5 window that the classifier flattens into fc1 / fc2.
    x = random_image(224, 224, seed=7)
    fc6, fc7 = submodel(fcn32s_model, ["fc6", "fc7"])(x)
    fc1, fc2 = submodel(vgg16_classifier, ["fc1", "fc2"])(x)
    for ours, theirs in [(fc6, fc1), (fc7, fc2)]:
        ours, theirs = keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
        assert ours.shape == (1, 7, 7, 4096) and np.abs(theirs).max() > 0
        np.testing.assert_allclose(
            ours[:, 3, 3], theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max()
        )


def test_fc_filters_other_than_vgg16s_load_the_convolutions_only(vgg16_classifier):
    # The classifier (with fc1 / fc2) as an in-memory source: its fc layers cannot fill a
    # 1024-wide fc6, so only the 13 convolutions are copied and fc6 / fc7 keep their init.
    fresh = fcn8s(2, input_shape=(32, 32, 3), fc_filters=16)
    model = fcn8s(2, input_shape=(32, 32, 3), fc_filters=16, backbone_weights=vgg16_classifier)
    assert model.get_layer("fc6").kernel.shape == (7, 7, 512, 16)
    assert model.get_layer("fc7").kernel.shape == (1, 1, 16, 16)
    for a, b in zip(
        model.get_layer("conv4_2").get_weights(),
        vgg16_classifier.get_layer("block4_conv2").get_weights(),
    ):
        np.testing.assert_array_equal(a, b)
    # Fresh means initialised as usual: the bias is zero and the kernel's scale is Glorot's,
    # not fc1's (which has 4096 outputs and would not even fit).
    assert not np.any(model.get_layer("fc6").get_weights()[1])
    glorot_std = np.sqrt(2.0 / (7 * 7 * 512 + 7 * 7 * 16))
    for m in (model, fresh):
        std = float(np.std(m.get_layer("fc6").get_weights()[0]))
        assert 0.8 * glorot_std < std < 1.2 * glorot_std
    with pytest.raises(ValueError, match="fc_filters"):
        fcn32s(fc_filters=0)


def test_bad_arguments():
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        fcn8s(backbone_weights="/nonexistent/vgg16.weights.h5")
    with pytest.raises(ValueError, match="num_classes"):
        fcn32s(num_classes=0)
    with pytest.raises(ValueError, match="input_shape"):
        fcn16s(input_shape=(64, 64))
    with pytest.raises(ValueError, match="activation"):
        fcn8s(activation="no-such-activation")


# --------------------------------------------------------------------------- convolutionalize


def test_convolutionalize_vgg16_equals_classifier_and_slides(vgg16_classifier):
    fully_conv = convolutionalize(vgg16_classifier)
    assert fully_conv.get_layer("fc1").kernel.shape == (7, 7, 512, 4096)
    assert fully_conv.get_layer("fc2").kernel.shape == (1, 1, 4096, 4096)

    x = random_image(224, 224, seed=1, batch=2)
    expected_fc2, expected = submodel(vgg16_classifier, ["fc2", "predictions"])(x)
    got_fc2, got = submodel(fully_conv, ["fc2", "predictions"])(x)
    assert tuple(got.shape) == (2, 1, 1, 1000)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got)[:, 0, 0], expected, atol=1e-5)
    scale = np.abs(keras.ops.convert_to_numpy(expected_fc2)).max()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got_fc2)[:, 0, 0], expected_fc2, atol=1e-5 * scale
    )

    # 384x384: a 6x6 heatmap; each cell is the classifier's Dense head applied (in NumPy) to
    # the 7x7x512 window of pool5 features at that position (the seed's "FC <=> conv").
    pool5, heatmap = submodel(fully_conv, ["block5_pool", "predictions"])(random_image(384, 384))
    pool5, heatmap = keras.ops.convert_to_numpy(pool5), keras.ops.convert_to_numpy(heatmap)
    assert heatmap.shape == (1, 6, 6, 1000)
    windows = np.stack(
        [pool5[0, i : i + 7, j : j + 7].reshape(-1) for i in range(6) for j in range(6)]
    )
    h = windows
    for name in ("fc1", "fc2"):
        kernel, bias = vgg16_classifier.get_layer(name).get_weights()
        h = np.maximum(h @ kernel + bias, 0.0)
    kernel, bias = vgg16_classifier.get_layer("predictions").get_weights()
    logits = (h @ kernel + bias).astype("float64")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(heatmap.reshape(36, 1000), probs, atol=1e-5)
    np.testing.assert_allclose(heatmap.sum(-1), 1.0, atol=1e-5)


def small_classifier(dropout: bool = True) -> keras.Model:
    inputs = keras.Input((20, 24, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="tanh")(x)
    if dropout:
        x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, x)


def test_convolutionalize_generic_chain_and_errors():
    classifier = small_classifier()
    fully_conv = convolutionalize(classifier, name="small_fc")
    x = np.random.default_rng(2).normal(size=(3, 20, 24, 2)).astype("float32")
    got = keras.ops.convert_to_numpy(fully_conv(x))
    np.testing.assert_allclose(got[:, 0, 0], classifier(x), atol=1e-6)
    big = keras.ops.convert_to_numpy(fully_conv(np.zeros((1, 26, 36, 2), "float32")))
    assert big.shape == (1, 4, 7, 3)  # pool 13x18, 10x12 window -> 4x7

    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="Flatten"):
        convolutionalize(keras.Model(inputs, keras.layers.Dense(2)(pooled)))
    conv = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    residual = keras.layers.Add()([inputs, conv])
    flat = keras.layers.Flatten()(residual)
    with pytest.raises(ValueError, match="chain"):
        convolutionalize(keras.Model(inputs, keras.layers.Dense(2)(flat)))


def test_exports():
    assert keras_dense.apps.fcn8s is fcn8s and keras_dense.apps.convolutionalize is convolutionalize
    assert keras_dense.layers.bilinear_upsampling is not None
