"""Class masks of segmentation records written by other tools (issue 18, same family as item 4).

A palette PNG, a 1/2/4-bit greyscale PNG or a 16-bit PNG in `image/segmentation/class/encoded`
is read silently wrong by `tf.io.decode_png(..., channels=1)`, which every segmentation reader
uses: the grey level of a palette colour instead of its index, a 1-bit object as 255 (the
ignore label), a 16-bit id as 0. Our converters write 8-bit grey masks; these records are
written by hand with `tf.train.Example`, as another tool writes them. `train`, `evaluate` and
`tune-crf` must refuse them before a model runs, naming the shard, record, source_id and field.
"""

from __future__ import annotations

import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.data import segmentation_records
from keras_dense.data.errors import BadInputError
from keras_dense.tasks import get_task
from keras_dense.training.recipe import validate
from keras_dense.utils.model_card import write_model_card
from tests.data_fixtures import grey_png_bytes, palette_png_bytes

CLASSES = ["background", "circle", "square"]
HEIGHT, WIDTH = 32, 48
FIELD = "image/segmentation/class/encoded"
_RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _own_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path / "cache"))


def _ids(class_id=1) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[8:20, 10:30] = class_id
    return mask


# case -> (the mask's bytes, words the refusal must hold)
BAD_MASKS = {
    "palette": (lambda t: palette_png_bytes(t, _ids(2)), "palette PNG"),
    "1-bit": (lambda t: grey_png_bytes(_ids(1), 1), "1-bit greyscale PNG"),
    "2-bit": (lambda t: grey_png_bytes(_ids(2), 2), "2-bit greyscale PNG"),
    "16-bit": (lambda t: grey_png_bytes(_ids(2), 16), "16-bit PNG"),
}


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _example(source_id: str, mask: bytes) -> bytes:
    """A record as another tool writes it: a PNG image and its class mask."""
    ok, image = cv2.imencode(".png", _RNG.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8))
    assert ok
    feature = {
        "image/encoded": _bytes(image.tobytes()),
        "image/format": _bytes(b"png"),
        "image/height": _ints(HEIGHT),
        "image/width": _ints(WIDTH),
        "image/source_id": _bytes(source_id.encode()),
        FIELD: _bytes(mask),
        "image/segmentation/class/format": _bytes(b"png"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _good_mask(class_id=1) -> bytes:
    ok, data = cv2.imencode(".png", _ids(class_id))  # 8-bit greyscale
    assert ok
    return data.tobytes()


def _write(folder, name, examples) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), f"{name}-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example)
    return path


def _data(tmp_path, bad_mask: bytes | None, into: str = "train") -> tuple[str, str]:
    """Training and validation shards (no manifest); the bad record is record 2 of `into`."""
    folder = tmp_path / "data"
    shards = {}
    for name in ("train", "val"):
        examples = [_example(f"{name}0", _good_mask(1)), _example(f"{name}1", _good_mask(2))]
        if bad_mask is not None and name == into:
            examples.append(_example("bad", bad_mask))
        shards[name] = _write(folder, name, examples)
    return str(folder), shards[into]


def _recipe(folder, **data):
    return validate(
        {
            "task": "segmentation",
            "model": {"builder": "unet", "kwargs": {"padding": "same", "filters": 4, "depth": 2}},
            "data": {
                "train": os.path.join(folder, "train-*.tfrecord"),
                "validation": os.path.join(folder, "val-*.tfrecord"),
                "classes": CLASSES,
                "crop_size": [HEIGHT, WIDTH],
                **data,
            },
            "training": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 1},
            "optimizer": {"name": "sgd", "learning_rate": 0.01},
            "schedule": {"name": "poly"},
        }
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = unet(3, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(tmp_path_factory.mktemp("segmenter") / "model.keras")
    model.save(path)
    write_model_card(path, {"task": "segmentation", "normalization": "caffe", "classes": CLASSES})
    return path


def _datasets(recipe):
    model = unet(3, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    return get_task("segmentation").datasets(recipe, model, 1, 0)


# ------------------------------------------------------------------------------ the reference


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_tensorflow_reads_these_masks_silently_wrong(tmp_path, case):
    """The silent error the check prevents: TF's decode gives other ids, and no error."""
    data = BAD_MASKS[case][0](tmp_path)
    truth = _ids(2 if case in ("palette", "2-bit", "16-bit") else 1)
    decoded = tf.io.decode_png(data, channels=1).numpy()[..., 0]
    assert decoded.shape == truth.shape
    assert not np.array_equal(decoded, truth)
    if case == "1-bit":
        assert decoded[10, 12] == 255  # the object becomes the ignore label
    if case == "2-bit":
        assert decoded[10, 12] == 2 * 255 // 3  # id 2 of 0..3 scaled to 0..255
    if case == "16-bit":
        assert decoded.max() == 0  # the ids' high bytes
    # The 8-bit greyscale mask of the same ids decodes to them exactly.
    good = tf.io.decode_png(_good_mask(int(truth.max())), channels=1).numpy()[..., 0]
    np.testing.assert_array_equal(good, truth)


# ------------------------------------------------------------------------------------- train


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_training_refuses_the_mask_naming_the_record(tmp_path, case):
    folder, shard = _data(tmp_path, BAD_MASKS[case][0](tmp_path))
    with pytest.raises(BadInputError) as info:
        _datasets(_recipe(folder))
    message = str(info.value)
    assert f"{shard} record 2 (source_id 'bad')" in message, message
    assert FIELD in message and BAD_MASKS[case][1] in message, message
    assert "8-bit" in message and "keras-dense convert pairs" in message, message


def test_a_bad_validation_mask_is_refused_too(tmp_path):
    folder, shard = _data(tmp_path, grey_png_bytes(_ids(1), 1), into="val")
    with pytest.raises(BadInputError, match=rf"{shard} record 2 \(source_id 'bad'\)"):
        _datasets(_recipe(folder))


def test_on_error_skip_does_not_leave_a_bad_mask_out(tmp_path):
    folder, shard = _data(tmp_path, palette_png_bytes(tmp_path, _ids(2)))
    with pytest.raises(BadInputError, match=r"on_error.*does not apply") as info:
        _datasets(_recipe(folder, on_error="skip"))
    assert f"{shard} record 2" in str(info.value)


def test_train_command_exits_2_with_one_line(tmp_path, capsys):
    folder, shard = _data(tmp_path, grey_png_bytes(_ids(1), 1))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"""task = "segmentation"
[model]
builder = "unet"
kwargs = {{ padding = "same", filters = 4, depth = 2 }}
[data]
train = "{folder}/train-*.tfrecord"
validation = "{folder}/val-*.tfrecord"
classes = {CLASSES!r}
crop_size = [{HEIGHT}, {WIDTH}]
[training]
batch_size = 2
epochs = 1
steps_per_epoch = 1
[optimizer]
name = "sgd"
learning_rate = 0.01
""".replace("'", '"')
    )
    run = tmp_path / "run"
    code = cli.main(["train", str(recipe), "--output", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{shard} record 2 (source_id 'bad')" in err and "1-bit" in err, err
    assert "Graph execution" not in err
    assert not (run / "best.keras").exists()


def test_eight_bit_grey_masks_are_accepted_and_checked_once(tmp_path, monkeypatch):
    folder, _ = _data(tmp_path, _good_mask(2))
    train, validation, steps, _ = _datasets(_recipe(folder))
    images, masks = next(iter(train))
    assert images.shape[1:3] == (HEIGHT, WIDTH) and steps == 1
    assert set(np.unique(masks.numpy())) <= {0, 1, 2, 255}  # 255: padding

    # A second run reads the remembered checks, not the records.
    def fail(*args, **kwargs):
        raise AssertionError("shard read again")

    monkeypatch.setattr(segmentation_records, "_check_shard", fail)
    _datasets(_recipe(folder))


# --------------------------------------------------------------------- evaluate and tune-crf


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_evaluate_refuses_the_mask_naming_the_record(model_path, tmp_path, capsys, case):
    folder, shard = _data(tmp_path, BAD_MASKS[case][0](tmp_path), into="val")
    out = tmp_path / "eval"
    pattern = os.path.join(folder, "val-*.tfrecord")
    code = cli.main(["evaluate", "--model", model_path, "--data", pattern, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{shard} record 2 (source_id 'bad')" in err and FIELD in err, err
    assert BAD_MASKS[case][1] in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "metrics.json").exists()


def test_tune_crf_refuses_the_mask_naming_the_record(model_path, tmp_path, capsys):
    folder, shard = _data(tmp_path, palette_png_bytes(tmp_path, _ids(2)), into="val")
    pattern = os.path.join(folder, "val-*.tfrecord")
    code = cli.main(
        ["tune-crf", "--model", model_path, "--data", pattern, "--coarse-only", "--dry-run"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{shard} record 2 (source_id 'bad')" in err and "palette PNG" in err, err


def test_evaluate_accepts_eight_bit_grey_masks(model_path, tmp_path, capsys):
    folder, _ = _data(tmp_path, _good_mask(2), into="val")
    out = tmp_path / "eval"
    pattern = os.path.join(folder, "val-*.tfrecord")
    code = cli.main(["evaluate", "--model", model_path, "--data", pattern, "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "metrics.json").exists()
