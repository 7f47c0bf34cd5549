"""`keras-dense receptive-field`: the printed fields and the PNG of the empirical map."""

from __future__ import annotations

import re

import keras
import numpy as np

from keras_dense import cli
from keras_dense.analysis import empirical_receptive_field, receptive_field
from keras_dense.data import convert_shapes, read_examples
from keras_dense.data.image_io import read_mask_file
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.normalization import normalize


def _model(path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="p1")(x)
    x = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="c2")(x)
    model = keras.Model(inputs, x)
    model.save(path)
    write_model_card(
        path, {"task": "segmentation", "normalization": "caffe", "classes": list("abcd")}
    )
    return model


def test_theoretical_field_is_printed(tmp_path, capsys):
    path = str(tmp_path / "m.keras")
    model = _model(path)
    assert cli.main(["receptive-field", "--model", path, "--layer", "c2"]) == 0
    out = capsys.readouterr().out
    # 3x3 (3) -> pool 2 (4, jump 2) -> dilated 3x3 (k_eff 5): 4 + 4 * 2 = 12.
    assert "theoretical receptive field size 12x12 px, jump 2x2" in out
    assert receptive_field(model, "c2").size == (12, 12)
    assert "empirical" not in out
    assert cli.main(["receptive-field", "--model", path, "--layer", "nope"]) == 2


def test_empirical_field_and_png(tmp_path, capsys):
    path = str(tmp_path / "m.keras")
    model = _model(path)
    convert_shapes(str(tmp_path / "s"), 3, size=32, seed=0, progress=False)
    pattern = str(tmp_path / "s-*.tfrecord")
    png = str(tmp_path / "erf.png")
    args = ["receptive-field", "--model", path, "--layer", "c2", "--data", pattern]
    assert cli.main([*args, "--images", "2", "--output", png]) == 0
    out = capsys.readouterr().out
    size = int(re.search(r"empirical receptive field (\d+) px", out).group(1))
    images = np.stack([r["image"] for r in list(read_examples(pattern))[:2]])
    want = empirical_receptive_field(model, "c2", np.asarray(normalize(images, "caffe")))
    assert size == want.size <= 13  # odd squares: 13 holds the 12-px theoretical field
    written = read_mask_file(png)
    np.testing.assert_array_equal(written, np.rint(want.map * 255).astype(np.uint8))
    assert not list(tmp_path.glob("*.tmp-*"))
