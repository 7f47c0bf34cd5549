"""`backbone_weights` loading is exact, complete and reported.

The sources are written the way their tools write them: keras.applications networks saved
with Keras' `save_weights` (random weights), a Keras-2 style `.h5` written by hand with h5py
(root attribute `layer_names`, per-layer `weight_names`, as Keras 2 and the
keras.applications downloads hold them), and in-memory `keras.Model`s. Every check compares
the model's weights with the arrays of the network that wrote the file.
"""

from __future__ import annotations

import json
import logging

import h5py
import keras
import numpy as np
import pytest

from keras_dense import apps, cli
from keras_dense.backbones import get_backbone
from keras_dense.backbones.pretrained_weights import weights_record
from keras_dense.backbones.vgg16 import VGG16_IMAGENET_NAMES, load_vgg16_weights
from keras_dense.data import convert_shapes

CONVS = list(VGG16_IMAGENET_NAMES)  # conv1_1 ... conv5_3, in the network's order


def _randomize(model: keras.Model, seed: int) -> keras.Model:
    """Random values for every weight (biases too, so that a bias left at 0 is caught)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(
                [rng.normal(0, 0.1, w.shape).astype("float32") for w in layer.weights]
            )
    return model


@pytest.fixture(scope="module")
def vgg16_notop(tmp_path_factory):
    """A keras.applications VGG16 without its top (random weights) and its saved file."""
    source = _randomize(
        keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)), 1
    )
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_notop.weights.h5"
    source.save_weights(path)
    return source, str(path)


def _assert_convs_equal(model: keras.Model, source: keras.Model) -> None:
    for ours, theirs in VGG16_IMAGENET_NAMES.items():
        got, want = model.get_layer(ours).get_weights(), source.get_layer(theirs).get_weights()
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            assert np.array_equal(a, b), ours


def _vgg16_family_model(weights) -> keras.Model:
    return get_backbone("vgg16").model((32, 32, 3), output_stride=32, weights=weights)


def _fresh_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "start fresh" in r.getMessage()]


# --------------------------------------------------------------------------- no-top file


@pytest.mark.parametrize(
    "build",
    [
        lambda w: apps.fcn8s(2, input_shape=(32, 32, 3), backbone_weights=w),
        lambda w: apps.deconvnet(2, input_shape=(32, 32, 3), fc_padding="same", backbone_weights=w),
        lambda w: apps.fast_rcnn(1, backbone_weights=w),
    ],
    ids=["fcn8s", "deconvnet", "fast_rcnn"],
)
def test_notop_file_loads_every_conv_exactly_and_fc6_fc7_start_fresh(build, vgg16_notop, caplog):
    source, path = vgg16_notop
    caplog.set_level(logging.INFO)
    model = build(path)
    _assert_convs_equal(model, source)
    record = weights_record(model)
    assert record["source"] == path
    assert record["loaded"] == CONVS
    assert record["fresh"] == ["fc6", "fc7"]
    json.dumps(record)  # JSON-able, for the model card
    lines = _fresh_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "fc6" in lines[0] and "fc7" in lines[0] and path in lines[0]


def test_a_file_without_fc_needs_no_message_for_a_model_without_fc(vgg16_notop, caplog):
    source, path = vgg16_notop
    caplog.set_level(logging.INFO)
    model = apps.unet(2, backbone="vgg16", filters=4, backbone_weights=path)
    _assert_convs_equal(model, source)
    assert weights_record(model) == {"source": path, "loaded": CONVS, "fresh": []}
    assert _fresh_lines(caplog) == []


# --------------------------------------------------------------------------- other sources


def test_keras_model_source_loads_exactly(vgg16_notop):
    source, _ = vgg16_notop
    model = _vgg16_family_model(source)
    _assert_convs_equal(model, source)
    built = apps.unet(2, backbone="vgg16", filters=4, backbone_weights=source)
    _assert_convs_equal(built, source)
    record = weights_record(built)
    assert source.name in record["source"] and record["loaded"] == CONVS


def test_names_nested_in_a_submodel_load_from_the_model_and_its_file(vgg16_notop, tmp_path):
    source, _ = vgg16_notop
    image = keras.Input((32, 32, 3))
    wrapper = keras.Model(image, keras.layers.Conv2D(1, 1, name="edges")(source(image)))
    _assert_convs_equal(_vgg16_family_model(wrapper), source)
    path = str(tmp_path / "wrapper.weights.h5")  # layers/functional/layers/conv2d/... groups
    wrapper.save_weights(path)
    _assert_convs_equal(_vgg16_family_model(path), source)


def _write_keras2_h5(path, layers: dict[str, list[np.ndarray]]) -> None:
    """A weight file laid out as Keras 2's `save_weights("x.h5")` writes it."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in ["input_1", *layers]]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        f.create_group("input_1").attrs["weight_names"] = []
        for name, arrays in layers.items():
            group = f.create_group(name)
            kinds = ["kernel:0", "bias:0"] if len(arrays) == 2 else [f"w{i}:0" for i in arrays]
            weight_names = [f"{name}/{kind}" for kind in kinds]
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            for weight_name, array in zip(weight_names, arrays):
                group.create_dataset(weight_name, data=array)


def test_keras2_h5_file_loads_exactly(vgg16_notop, tmp_path):
    source, _ = vgg16_notop
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_keras2_h5(
        path, {n: source.get_layer(n).get_weights() for n in VGG16_IMAGENET_NAMES.values()}
    )
    model = _vgg16_family_model(str(path))
    _assert_convs_equal(model, source)


def test_keras3_file_without_layer_names_still_loads(vgg16_notop, tmp_path):
    """Older Keras 3 files name their groups by class only (`conv2d_4`), without the names."""
    source, path = vgg16_notop
    old = tmp_path / "old.weights.h5"
    old.write_bytes(open(path, "rb").read())
    with h5py.File(old, "r+") as f:
        for key in f["layers"]:
            if "vars" in f["layers"][key] and "name" in f["layers"][key]["vars"].attrs:
                del f["layers"][key]["vars"].attrs["name"]
    _assert_convs_equal(_vgg16_family_model(str(old)), source)


# --------------------------------------------------------------------------- top detection


def _tiny_fc_model() -> keras.Model:
    """conv1_1 and two Dense layers named like the papers' fc6 / fc7 (small sizes)."""
    image = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", name="conv1_1")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, name="fc6")(x)
    return keras.Model(image, keras.layers.Dense(8, name="fc7")(x))


def test_top_is_detected_from_the_layers_a_file_holds(tmp_path, caplog):
    rng = np.random.default_rng(3)
    layers = {
        "block1_conv1": [rng.normal(size=(3, 3, 3, 64)), rng.normal(size=64)],
        "fc1": [rng.normal(size=(64, 8)), rng.normal(size=8)],
        "fc2": [rng.normal(size=(8, 8)), rng.normal(size=8)],
    }
    layers = {k: [a.astype("float32") for a in v] for k, v in layers.items()}
    top = tmp_path / "top.h5"
    _write_keras2_h5(top, layers)
    model = _tiny_fc_model()
    report = load_vgg16_weights(model, str(top))
    assert list(report) == ["conv1_1", "fc6", "fc7"] and report.fresh == []
    for ours, theirs in [("conv1_1", "block1_conv1"), ("fc6", "fc1"), ("fc7", "fc2")]:
        for a, b in zip(model.get_layer(ours).get_weights(), layers[theirs]):
            assert np.array_equal(a, b)

    # The same file without its top: fc6 / fc7 keep their initialisation.
    notop = tmp_path / "notop.h5"
    _write_keras2_h5(notop, {"block1_conv1": layers["block1_conv1"]})
    model = _tiny_fc_model()
    before = model.get_layer("fc6").get_weights()
    report = load_vgg16_weights(model, str(notop))
    assert list(report) == ["conv1_1"] and report.fresh == ["fc6", "fc7"]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_layer("fc6").get_weights(), before))


def test_top_in_a_keras3_file_is_detected_too(tmp_path):
    image = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", name="block1_conv1")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, name="fc1")(x)
    source = _randomize(keras.Model(image, keras.layers.Dense(8, name="fc2")(x)), 4)
    path = tmp_path / "top.weights.h5"
    source.save_weights(path)
    model = _tiny_fc_model()
    report = load_vgg16_weights(model, str(path))
    assert report.fresh == []
    for ours, theirs in [("conv1_1", "block1_conv1"), ("fc6", "fc1"), ("fc7", "fc2")]:
        for a, b in zip(
            model.get_layer(ours).get_weights(), source.get_layer(theirs).get_weights()
        ):
            assert np.array_equal(a, b)


# --------------------------------------------------------------------------- refusals


def test_a_file_of_another_architecture_is_refused_naming_its_first_layer(tmp_path):
    other = keras.applications.MobileNetV2(
        weights=None, include_top=False, alpha=0.35, input_shape=(32, 32, 3)
    )
    path = str(tmp_path / "mobilenetv2_notop.weights.h5")
    other.save_weights(path)
    with pytest.raises(ValueError) as error:
        _vgg16_family_model(path)
    message = str(error.value)
    assert path in message and "'block1_conv1'" in message, message
    assert "(3, 3, 3, 64)" in message and "no such layer" in message, message


def test_a_vgg16_file_with_a_wrong_block3_conv1_is_refused_naming_it(tmp_path):
    image = keras.Input((32, 32, 3))
    x = image
    for name, filters in [
        ("block1_conv1", 64), ("block1_conv2", 64), ("block2_conv1", 128),
        ("block2_conv2", 128), ("block3_conv1", 128), ("block3_conv2", 256),
    ]:  # fmt: skip
        x = keras.layers.Conv2D(filters, 3, padding="same", name=name)(x)
    path = str(tmp_path / "bad_vgg16.weights.h5")
    keras.Model(image, x).save_weights(path)
    with pytest.raises(ValueError) as error:
        _vgg16_family_model(path)
    message = str(error.value)
    assert path in message and "'block3_conv1'" in message, message
    assert "(3, 3, 128, 256)" in message and "(3, 3, 128, 128)" in message, message
    assert "block3_conv2" not in message  # the first mismatch only


def test_a_file_that_is_not_hdf5_is_refused(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not hdf5")
    with pytest.raises(ValueError, match="weights.h5"):
        _vgg16_family_model(str(path))


# --------------------------------------------------------------------------- model card


@pytest.mark.parametrize("scale_fresh", [True, False])
def test_train_card_records_where_the_backbone_weights_came_from(
    vgg16_notop, tmp_path, scale_fresh
):
    _, path = vgg16_notop
    convert_shapes(str(tmp_path / "train"), 4, size=32, seed=0, progress=False)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"""
[model]
builder = "unet"
[model.kwargs]
backbone = "vgg16"
backbone_weights = "{path}"
filters = 4
[data]
train = "{tmp_path / "train-*.tfrecord"}"
crop_size = 32
normalization = "caffe"
[training]
epochs = 1
steps_per_epoch = 1
batch_size = 2
scale_fresh_layers = {str(scale_fresh).lower()}
[optimizer]
learning_rate = 0.001
name = "sgd"
"""
    )
    out = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--output", str(out)]) == 0
    card = json.loads((out / "best.json").read_text())
    record = card["backbone_weights"]
    assert {key: record[key] for key in ("source", "loaded", "fresh")} == {
        "source": path,
        "loaded": CONVS,
        "fresh": [],
    }
    # Fresh layers scaled to the trunk's features (training.fresh_layer_scaling): never a
    # trunk layer, and only ever shrunk.
    if not scale_fresh:
        assert "scaled" not in record
        return
    assert not set(record["scaled"]) & set(CONVS), record["scaled"]
    assert all(0 < factor < 1 for factor in record["scaled"].values()), record["scaled"]
    reloaded = keras.models.load_model(out / "best.keras", compile=False)  # .keras still saves
    assert reloaded.get_layer("conv5_3").get_weights()[0].shape == (3, 3, 512, 512)
