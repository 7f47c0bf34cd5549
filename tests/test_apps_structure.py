"""keras_dense.apps as a package: module names, the shared builder skeleton, saved names."""

from __future__ import annotations

import importlib
import json
import types
import zipfile

import keras
import pytest

from keras_dense import apps
from keras_dense.apps.builder import build_model
from keras_dense.layers.crf_rnn import CrfRnn, crf_layers, is_crf_layer
from keras_dense.layers.roi_pooling import RoIPooling
from keras_dense.layers.walk import iter_layers

from helpers import run_python

# The builders' shared argument checks, the config round trip and the fresh-process reload of
# every name of apps.__all__ are in tests/test_model_harness.py.


@pytest.mark.parametrize("name", apps.__all__)
def test_public_names_never_resolve_to_a_function_as_modules(name):
    try:
        module = importlib.import_module(f"keras_dense.apps.{name}")
    except ModuleNotFoundError:
        return
    assert isinstance(module, types.ModuleType)


@pytest.mark.parametrize("name", apps.__all__)
def test_public_names_are_the_builders(name):
    assert not isinstance(getattr(apps, name), types.ModuleType)


def test_fcn_docstrings_come_from_one_template():
    for builder, title in ((apps.fcn8s, "FCN-8s"), (apps.fcn16s, "FCN-16s")):
        assert builder.__doc__.startswith(f"Builds {title}:")
        for section in ("Args:", "weights:", "activation:", "crf:", "Returns:", "Raises:"):
            assert section in builder.__doc__


def test_build_model_skeleton_activation_crf_and_frozen_layers():
    def graph(inputs, num_classes):
        x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
        return keras.layers.Conv2D(num_classes, 1, name="score")(x)

    model = build_model(
        graph,
        num_classes=3,
        input_shape=(None, None, 3),
        name="tiny",
        activation="softmax",
        crf=True,
        frozen_layers=("conv",),
    )
    names = [layer.name for layer in model.layers]
    assert names[-2:] == ["crf_rnn", "score_softmax"] and model.name == "tiny_crf"
    assert not model.get_layer("conv").trainable
    assert model.output.shape[-1] == 3
    with pytest.raises(ValueError, match="no backbone"):
        build_model(
            graph, num_classes=3, input_shape=(8, 8, 3), name="t", backbone_weights="imagenet"
        )
    with pytest.raises(ValueError, match="crf"):
        build_model(graph, num_classes=3, input_shape=(8, 8, 3), name="t", crf="yes")


def test_iter_layers_walks_nested_models_once_and_finds_crf_layers():
    inner_in = keras.Input((None, None, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(2, 1, name="inner_conv")(inner_in))
    image = keras.Input((None, None, 3))
    logits = inner(image)
    refined = CrfRnn(num_classes=2, num_iterations=1, name="crf")([logits, image])
    nested = keras.Model(image, refined)
    outer_in = keras.Input((None, None, 3))
    outer = keras.Model(outer_in, nested(outer_in))
    walked = [layer.name for layer in iter_layers(outer)]
    assert "inner_conv" in walked and "crf" in walked
    assert len(walked) == len(set(walked))
    assert [layer.name for layer in crf_layers(outer)] == ["crf"]
    assert is_crf_layer(nested.get_layer("crf")) and not is_crf_layer(inner)


def _tiny_fast_rcnn() -> apps.FastRCNN:
    images = keras.Input((None, None, 3), name="images")
    rois = keras.Input((None, 4), name="rois")
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="conv")(images)
    x = RoIPooling(2, 0.25, name="roi_pool")([x, rois])
    x = keras.layers.Reshape((-1, 16), name="flatten")(x)
    cls = keras.layers.Dense(3, name="cls_score")(x)
    bbox = keras.layers.Dense(12, name="bbox_pred")(x)
    return apps.FastRCNN(inputs=[images, rois], outputs=[cls, bbox], rois_per_image=8)


def test_registered_names_are_kept():
    assert keras.saving.get_registered_name(apps.FastRCNN) == "keras_dense>FastRCNN"
    assert keras.saving.get_registered_object("keras_dense>FastRCNN") is apps.FastRCNN


def test_file_saved_under_the_old_module_path_loads(tmp_path):
    """A .keras file written before the rename names `keras_dense.apps.fast_rcnn`."""
    model = _tiny_fast_rcnn()
    path = tmp_path / "model.keras"
    model.save(path)
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                assert config["registered_name"] == "keras_dense>FastRCNN"
                config["module"] = "keras_dense.apps.fast_rcnn"
                data = json.dumps(config).encode()
            target.writestr(item, data)
    out = run_python(
        f"""
        import keras, keras_dense
        model = keras.models.load_model({str(old)!r}, safe_mode=True)
        print(type(model).__name__, model.rois_per_image)
        """
    )
    assert out.split()[-2:] == ["FastRCNN", "8"]
