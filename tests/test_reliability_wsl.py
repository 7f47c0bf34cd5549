"""Reliability of the weakly supervised commands, `predict` and `serving-config` (issue 18).

Records are written by hand with `tf.train.Example`, as another tool writes them (no manifest,
classes known only from the model card): every bad field must be named (shard, record,
source_id, field) before a model runs, never dropped or left to a TensorFlow graph error.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import apps, cli
from keras_dense.data.image_io import encode_png
from keras_dense.utils.model_card import write_model_card
from tests.data_fixtures import grey_png_bytes, palette_png_bytes, write_rgb
from tests.export_test_utils import tiny_faster_rcnn

CLASSES = ["circle", "square", "triangle"]
CARD = {"task": "classification", "normalization": "caffe", "classes": CLASSES}


@pytest.fixture(autouse=True)
def _own_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny wsl_classifier (compact backbone) saved with its card."""
    keras.utils.set_random_seed(0)
    model = apps.wsl_classifier(num_classes=3, backbone="compact", pooling="gap", width=4)
    path = str(tmp_path_factory.mktemp("model") / "cls.keras")
    model.save(path)
    write_model_card(path, CARD)
    return path


def _with_card(model_path, tmp_path, card) -> str:
    """A copy of the model beside a hand-edited card (a dict, or the card file's text)."""
    path = str(tmp_path / "edited.keras")
    with open(model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    text = card if isinstance(card, str) else json.dumps(card)
    (tmp_path / "edited.json").write_text(text)
    return path


# ----------------------------------------------------------------------- hand-written records

_RNG = np.random.default_rng(0)


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(*values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _mask(height=32, width=32, class_id=1) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[8:20, 8:20] = class_id
    return mask


def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _example(source_id, height=32, width=32, mask=None, boxes=None, labels=None, **fields):
    """A record as another tool writes it: PNG image, optional mask, boxes and labels."""
    image = fields.pop("image", None)
    if image is None:
        image = encode_png(_RNG.integers(0, 256, (height, width, 3), np.uint8))
    feature = {
        "image/encoded": _bytes(image),
        "image/format": _bytes(b"png"),
        "image/height": _ints(height),
        "image/width": _ints(width),
        "image/source_id": _bytes(source_id.encode()),
    }
    if mask is not None:
        data = mask if isinstance(mask, bytes) else encode_png(mask)
        feature["image/segmentation/class/encoded"] = _bytes(data)
        feature["image/segmentation/class/format"] = _bytes(b"png")
    if boxes is not None:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        for i, name in enumerate(("ymin", "xmin", "ymax", "xmax")):
            feature[f"image/object/bbox/{name}"] = _floats(*boxes[:, i].tolist())
    if labels is not None:
        feature["image/object/class/label"] = _ints(*labels)
    for key, value in fields.items():
        if value is None:
            feature.pop(key.replace("__", "/"), None)
        else:
            feature[key.replace("__", "/")] = value
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _shard(folder, examples) -> tuple[str, str]:
    """`(pattern, shard path)` of one hand-written shard without a manifest."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), "x-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example)
    return os.path.join(str(folder), "x-*.tfrecord"), path


def _good():
    return [_example("g0", mask=_mask(class_id=1)), _example("g1", mask=_mask(class_id=2))]


BOX = [[0.1, 0.1, 0.5, 0.5]]
# case -> (the bad record's fields, the field the message must name)
BAD_RECORDS = {
    "box label 0": (lambda t: {"boxes": BOX, "labels": [0]}, "image/object/class/label"),
    "box label -1": (lambda t: {"boxes": BOX, "labels": [-1]}, "image/object/class/label"),
    "box label 7": (lambda t: {"boxes": BOX, "labels": [7]}, "image/object/class/label"),
    "box without label": (lambda t: {"boxes": BOX}, "image/object/class/label"),
    "label without box": (lambda t: {"labels": [1]}, "image/object/class/label"),
    "pixel box": (lambda t: {"boxes": [[3, 3, 20, 20]], "labels": [1]}, "image/object/bbox/"),
    "NaN box": (lambda t: {"boxes": [[np.nan, 0.1, 0.5, 0.5]], "labels": [1]}, "bbox/ymin"),
    "inverted box": (lambda t: {"boxes": [[0.5, 0.5, 0.1, 0.1]], "labels": [1]}, "bbox/ymin"),
    "unequal coordinates": (
        lambda t: {
            "labels": [1],
            "image__object__bbox__ymin": _floats(0.1, 0.2),
            "image__object__bbox__xmin": _floats(0.1),
            "image__object__bbox__ymax": _floats(0.5),
            "image__object__bbox__xmax": _floats(0.5),
        },
        "image/object/bbox/ymin",
    ),
    "image label -2": (lambda t: {"image__class__label": _ints(-2)}, "image/class/label"),
    "image label 9": (lambda t: {"image__class__label": _ints(9)}, "image/class/label"),
    "float image label": (lambda t: {"image__class__label": _floats(1.0)}, "image/class/label"),
    "mask id 9": (lambda t: {"mask": _mask(class_id=9)}, "image/segmentation/class/encoded"),
    "mask of another size": (
        lambda t: {"mask": _mask(16, 16, 1)},
        "image/segmentation/class/encoded",
    ),
    "16-bit mask": (
        lambda t: {"mask": _png(_mask(class_id=2).astype(np.uint16))},
        "image/segmentation/class/encoded",
    ),
    "1-bit mask": (
        lambda t: {"mask": grey_png_bytes(_mask(class_id=1), 1)},
        "image/segmentation/class/encoded",
    ),
    "palette mask": (
        lambda t: {"mask": palette_png_bytes(t, _mask(class_id=2))},
        "image/segmentation/class/encoded",
    ),
    "colour mask": (
        lambda t: {"mask": encode_png(np.stack([_mask(class_id=2)] * 3, -1))},
        "image/segmentation/class/encoded",
    ),
    "undecodable mask": (
        lambda t: {"mask": b"\x89PNG\r\n\x1a\nxxxx"},
        "image/segmentation/class/encoded",
    ),
    "undecodable image": (lambda t: {"image": b"not an image"}, "image/encoded"),
    "missing image": (lambda t: {"image__encoded": None}, "image/encoded"),
}


def _bad_shard(tmp_path, case) -> tuple[str, str]:
    fields, _ = BAD_RECORDS[case]
    return _shard(tmp_path / "data", [*_good(), _example("bad", **fields(tmp_path))])


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_evaluate_names_each_bad_record(model_path, tmp_path, capsys, case):
    pattern, shard = _bad_shard(tmp_path, case)
    out = str(tmp_path / "eval")
    code = cli.main(["evaluate", "--model", model_path, "--data", pattern, "--output", out])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{shard} record 2 (source_id 'bad')" in err
    assert BAD_RECORDS[case][1] in err
    assert len(err.strip().splitlines()) == 1 and "Graph execution" not in err
    assert not os.path.exists(os.path.join(out, "metrics.json"))


@pytest.mark.parametrize("case", ["box label 0", "16-bit mask", "mask id 9", "undecodable image"])
def test_tune_threshold_and_pseudo_label_name_bad_records(model_path, tmp_path, capsys, case):
    pattern, shard = _bad_shard(tmp_path, case)
    card_before = open(model_path.replace(".keras", ".json")).read()
    code = cli.main(["tune-threshold", "--model", model_path, "--data", pattern])
    err = capsys.readouterr().err
    assert code == 2 and f"{shard} record 2 (source_id 'bad')" in err, err
    assert open(model_path.replace(".keras", ".json")).read() == card_before
    out = str(tmp_path / "pseudo" / "train")
    code = cli.main(["pseudo-label", "--model", model_path, "--data", pattern, "--output", out])
    err = capsys.readouterr().err
    assert code == 2 and f"{shard} record 2 (source_id 'bad')" in err, err
    assert BAD_RECORDS[case][1] in err
    assert not os.path.exists(out + ".json")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_training_a_classifier_names_a_bad_record_before_the_first_step(tmp_path, capsys, split):
    import pathlib

    bad = _example("bad", mask=_png(_mask(class_id=2).astype(np.uint16)))
    good, _ = _shard(tmp_path / "good", [*_good(), *_good()])
    pattern, shard = _shard(tmp_path / "bad", [*_good(), bad])
    data = {"train": good, "validation": good, split: pattern}
    recipe = pathlib.Path(__file__).resolve().parents[1] / "apps" / "wsl_shapes.toml"
    run = tmp_path / "run"
    overrides = [
        f'data.train="{data["train"]}"',
        f'data.validation="{data["validation"]}"',
        'data.classes=["background", "circle", "square", "triangle"]',
        "data.crop_size=32",
        "model.kwargs.width=4",
        "training.batch_size=2",
        "training.epochs=1",
        "training.steps_per_epoch=1",
    ]
    argv = ["train", str(recipe), "--output", str(run)]
    for item in overrides:
        argv += ["--set", item]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and f"{shard} record 2 (source_id 'bad')" in err and "16-bit" in err, err
    assert not (run / "best.keras").exists()


def test_image_label_zero_is_counted_as_background(model_path, tmp_path, capsys):
    pattern, _ = _shard(tmp_path / "data", [*_good(), _example("bg", image__class__label=_ints(0))])
    out = str(tmp_path / "eval")
    assert cli.main(["evaluate", "--model", model_path, "--data", pattern, "--output", out]) == 0
    err = capsys.readouterr().err
    assert "1 of 3 records" in err and "image/class/label 0" in err


def test_evaluate_refuses_records_without_a_class_label(model_path, tmp_path, capsys):
    pattern, _ = _shard(
        tmp_path / "data", [_example("a"), _example("b", image__class__label=_ints(0))]
    )
    out = str(tmp_path / "eval")
    code = cli.main(["evaluate", "--model", model_path, "--data", pattern, "--output", out])
    err = capsys.readouterr().err
    assert code == 2 and pattern in err and "mAP" in err, err
    assert not os.path.exists(os.path.join(out, "metrics.json"))


def test_evaluate_says_what_it_could_not_measure(model_path, tmp_path, capsys):
    """Image labels only: no AP for the classes never present, no localisation truth."""
    examples = [_example(f"r{i}", image__class__label=_ints(1)) for i in range(2)]
    pattern, _ = _shard(tmp_path / "data", examples)
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--model", model_path, "--data", pattern, "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "nan" not in captured.out, captured.out
    assert "square, triangle" in captured.out and "not measured" in captured.out, captured.out
    report = json.loads((out / "metrics.json").read_text())
    assert report["ap_excluded"] == ["square", "triangle"]


def test_tune_threshold_names_the_record_without_a_mask(model_path, tmp_path, capsys):
    pattern, shard = _shard(tmp_path / "data", [*_good(), _example("boxed", boxes=BOX, labels=[1])])
    code = cli.main(["tune-threshold", "--model", model_path, "--data", pattern, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and f"{shard} record 2 (source_id 'boxed')" in err, err
    assert "image/segmentation/class/encoded" in err


def test_pseudo_label_of_no_records_says_so(model_path, tmp_path, capsys):
    pattern, _ = _shard(tmp_path / "data", [])
    out = str(tmp_path / "pseudo" / "train")
    code = cli.main(["pseudo-label", "--model", model_path, "--data", pattern, "--output", out])
    err = capsys.readouterr().err
    assert code == 2 and "no records" in err and "--on-error" not in err, err


def _padded_png(value: int, padding: int) -> bytes:
    """A 32x32 PNG carrying `padding` bytes in a comment chunk (decoders skip it)."""
    png = encode_png(np.full((32, 32, 3), value, np.uint8))
    body = b"tEXtComment\x00" + _RNG.integers(0, 256, padding, np.uint8).tobytes()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]  # before IEND


def test_pseudo_label_streams_the_records(model_path, tmp_path):
    """The records are read as they are written, not all held in memory first."""
    from keras_dense.localization import write_pseudo_labels

    def shard(name, count):  # small images in large records: the records' bytes dominate
        examples = [
            _example(f"r{i}", mask=_mask(class_id=1 + i % 3), image=_padded_png(i, 300_000))
            for i in range(count)
        ]
        return _shard(tmp_path / name, examples)

    model = keras.saving.load_model(model_path, compile=False)
    warm, _ = shard("warm", 1)  # the first call traces the model (Python memory of its own)
    write_pseudo_labels(model, warm, str(tmp_path / "w" / "train"), CLASSES, "caffe")
    pattern, path = shard("data", 40)
    tracemalloc.start()
    try:
        write_pseudo_labels(
            model, pattern, str(tmp_path / "out" / "train"), CLASSES, "caffe", progress=False
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = os.path.getsize(path)
    assert total > 12_000_000
    assert peak < total / 2, (peak, total)
    output = str(tmp_path / "out" / "train-00000-of-00001.tfrecord")
    assert sum(1 for _ in tf.data.TFRecordDataset(output)) == 40


# ------------------------------------------------------------------------------ model cards

BAD_CARDS = {
    "classes as a string": ({**CARD, "classes": "circle,square,triangle"}, "'classes'"),
    "two classes for three outputs": ({**CARD, "classes": ["circle", "square"]}, "'classes'"),
    "four classes for three outputs": ({**CARD, "classes": [*CLASSES, "star"]}, "'classes'"),
    "a class twice": ({**CARD, "classes": ["circle", "circle", "triangle"]}, "'classes'"),
    "numbers for names": ({**CARD, "classes": [1, 2, 3]}, "'classes'"),
    "ignore label text": ({**CARD, "ignore_label": "abc"}, "'ignore_label'"),
    "unknown normalisation": ({**CARD, "normalization": "foo"}, "'normalization'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CARDS))
def test_hand_edited_cards_are_refused_by_every_command(model_path, tmp_path, capsys, case):
    card, key = BAD_CARDS[case]
    path = _with_card(model_path, tmp_path, card)
    pattern, _ = _shard(tmp_path / "data", _good())
    image = tmp_path / "photo.png"
    write_rgb(image, _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    for argv in (
        ["evaluate", "--data", pattern, "--output", str(tmp_path / "e")],
        ["tune-threshold", "--data", pattern, "--dry-run"],
        ["pseudo-label", "--data", pattern, "--output", str(tmp_path / "p" / "train")],
        ["predict", str(image), "--output", str(tmp_path / "pred")],
    ):
        code = cli.main([argv[0], "--model", path, *argv[1:]])
        err = capsys.readouterr().err
        # The tasks' hooks get the card without its path: "the model card" of --model. A
        # class count that does not fit the model is the classifier's check, per input.
        per_input = argv[0] == "predict" and "outputs" in case
        card_named = "the model card" if argv[0] == "evaluate" or per_input else "edited.json"
        assert code == (1 if per_input else 2), (argv[0], err)
        assert card_named in err and key in err, (argv[0], err)
        assert len(err.strip().splitlines()) == (2 if per_input else 1), (argv[0], err)
    assert not (tmp_path / "pred" / "photo_scores.json").exists()


def test_pseudo_label_refuses_a_card_of_another_task(model_path, tmp_path, capsys):
    path = _with_card(model_path, tmp_path, {k: v for k, v in CARD.items() if k != "task"})
    pattern, _ = _shard(tmp_path / "data", _good())
    out = str(tmp_path / "p" / "train")
    code = cli.main(["pseudo-label", "--model", path, "--data", pattern, "--output", out])
    err = capsys.readouterr().err
    assert code == 2 and "pseudo-label does not apply to segmentation models" in err, err
    assert "classification models only" in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def nan_model_path(tmp_path_factory):
    """The tiny classifier with one NaN weight (a diverged training's checkpoint)."""
    keras.utils.set_random_seed(0)
    model = apps.wsl_classifier(num_classes=3, backbone="compact", pooling="gap", width=4)
    layer = model.get_layer("class_maps")
    kernel = np.array(keras.ops.convert_to_numpy(layer.kernel))
    kernel[0, 0, 0, 0] = np.nan
    layer.kernel.assign(kernel)
    path = str(tmp_path_factory.mktemp("nan_model") / "cls.keras")
    model.save(path)
    write_model_card(path, CARD)
    return path


def test_scores_that_are_not_finite_are_refused(nan_model_path, tmp_path, capsys):
    from keras_dense.evaluation.localization_metrics import multilabel_average_precision

    with pytest.raises(ValueError, match="not finite"):
        multilabel_average_precision(np.array([[np.nan, 1.0], [0.5, 0.2]]), np.eye(2))
    pattern, _ = _shard(tmp_path / "data", _good())
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", nan_model_path, "--data", pattern, "--output", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "not finite" in err, err
    assert not (out / "metrics.json").exists()
    image = tmp_path / "photo.png"
    write_rgb(image, _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    pred = tmp_path / "pred"
    argv = ["predict", "--model", nan_model_path, str(image), "--output", str(pred)]
    assert cli.main(argv) == 1
    assert "not finite" in capsys.readouterr().err
    assert not (pred / "photo_scores.json").exists()
    argv = ["tune-threshold", "--model", nan_model_path, "--data", pattern, "--dry-run"]
    assert cli.main(argv) == 2 and "not finite" in capsys.readouterr().err
    out = str(tmp_path / "pseudo" / "train")
    argv = ["pseudo-label", "--model", nan_model_path, "--data", pattern, "--output", out]
    assert cli.main(argv) == 2 and "not finite" in capsys.readouterr().err
    assert not os.path.exists(out + ".json")


def test_box_metrics_refuse_boxes_that_are_not_finite():
    from keras_dense.evaluation.localization_metrics import corloc, pointing_game

    truth = [{"boxes": np.array([[np.nan, 0.0, 3.0, 3.0]]), "labels": np.array([1])}]
    with pytest.raises(ValueError, match="finite"):
        pointing_game(np.zeros((1, 1, 2), np.int64), truth, 0, [1])
    with pytest.raises(ValueError, match="finite"):
        corloc(np.zeros((1, 1, 4)), truth, class_ids=[1])


# ------------------------------------------------------------------------------------ memory


def _png_header_only(path, width, height):
    """A PNG whose header claims a size; its pixels are never decoded when it is refused."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b"IHDR" + header
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data)


def test_predict_plans_a_classifier_image_within_max_memory(model_path, tmp_path, capsys):
    small = tmp_path / "in" / "small.png"
    small.parent.mkdir()
    write_rgb(small, _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    _png_header_only(tmp_path / "in" / "huge.png", 40000, 30000)
    out = tmp_path / "pred"
    code = cli.main(["predict", "--model", model_path, str(tmp_path / "in"), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "huge.png" in err and "--max-memory" in err, err
    assert (out / "small_scores.json").is_file() and not (out / "huge_scores.json").exists()
    # A budget below what the 40x48 image needs refuses it too; above, it is predicted.
    argv = ["predict", "--model", model_path, str(small), "--output", str(out)]
    assert cli.main([*argv, "--max-memory", "1KiB"]) == 1
    assert "small.png" in capsys.readouterr().err
    assert cli.main([*argv, "--max-memory", "64MiB"]) == 0


def test_evaluate_plans_each_record_within_max_memory(model_path, tmp_path, capsys):
    big = _example("big", 600, 800, mask=_mask(600, 800, 1))
    pattern, shard = _shard(tmp_path / "data", [*_good(), big])
    out = str(tmp_path / "eval")
    argv = ["evaluate", "--model", model_path, "--data", pattern, "--output", out]
    code = cli.main([*argv, "--max-memory", "8MiB"])
    err = capsys.readouterr().err
    assert code == 2 and f"{shard} record 2 (source_id 'big')" in err and "800x600" in err, err
    assert cli.main([*argv, "--max-memory", "1GiB"]) == 0


# ----------------------------------------------------------------------------------- predict


def test_predict_refuses_an_output_folder_holding_its_inputs(model_path, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_rgb(folder / "a.png", _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    write_rgb(folder / "a_class_map.png", _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for inputs in ([str(folder)], [str(folder / "a.png")]):
        code = cli.main(["predict", "--model", model_path, *inputs, "--output", str(folder)])
        err = capsys.readouterr().err
        assert code == 2 and str(folder) in err and "--output" in err, err
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_predict_lists_what_it_leaves_out_of_a_folder(model_path, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    write_rgb(folder / "a.png", _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "anim.gif").write_bytes(b"GIF89a")
    code = cli.main(
        ["predict", "--model", model_path, str(folder), "--output", str(tmp_path / "o")]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "anim.gif" in captured.err and "notes.txt" in captured.err and "sub" in captured.err


def test_predict_data_names_a_record_without_source_id_visibly(model_path, tmp_path, capsys):
    examples = [_example("", mask=_mask()), _example(".hidden", mask=_mask())]
    pattern, _ = _shard(tmp_path / "data", examples)
    out = tmp_path / "pred"
    assert (
        cli.main(["predict", "--model", model_path, "--data", pattern, "--output", str(out)]) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names
    assert names == [
        "record_0_class_map.png",
        "record_0_scores.json",
        "record_1_class_map.png",
        "record_1_scores.json",
    ], names


# ----------------------------------------------------------------------------- serving-config


def _version(root, name, version, card=None, saved_model=True):
    folder = root / name / str(version)
    (folder / "assets.extra").mkdir(parents=True)
    if saved_model:
        (folder / "saved_model.pb").write_bytes(b"")
    if card is not None:
        (folder / "assets.extra" / "model_card.json").write_text(json.dumps(card))
    return folder


def _serving(root, *extra):
    return cli.main(["serving-config", "--models", str(root), "--output", str(root), *extra])


UNET = {"task": "segmentation", "classes": ["background", "a"]}
DETECTOR = {"task": "detection", "classes": ["a"]}


@pytest.mark.parametrize("older", [[], [DETECTOR]])
def test_serving_config_refuses_two_models_as_stable_and_canary(tmp_path, capsys, older):
    for version, card in enumerate([*older, UNET, DETECTOR], start=1):
        _version(tmp_path, "m", version, card)
    newest = len(older) + 2
    assert _serving(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"version {newest - 1}" in err and f"version {newest}" in err and "task" in err, err
    assert not (tmp_path / "models.config").exists()
    assert _serving(tmp_path, "--allow-different-model") == 0


def test_serving_config_names_a_served_version_that_is_not_a_saved_model(tmp_path, capsys):
    _version(tmp_path, "m", 1, UNET)
    (_version(tmp_path, "m", 2, UNET) / "saved_model.pb").write_bytes(b"x")
    assert _serving(tmp_path) == 2
    err = capsys.readouterr().err
    assert os.path.join("m", "2", "saved_model.pb") in err and "SavedModel" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_serving_config_refuses_two_folders_of_one_version(tmp_path, capsys):
    _version(tmp_path, "m", "007")
    _version(tmp_path, "m", "7")
    assert _serving(tmp_path) == 2
    err = capsys.readouterr().err
    assert "007" in err and "'7'" in err, err


def test_serving_config_refuses_a_version_beyond_int64(tmp_path, capsys):
    _version(tmp_path, "m", "99999999999999999999")
    assert _serving(tmp_path) == 2
    assert "99999999999999999999" in capsys.readouterr().err


def test_serving_config_names_the_folders_it_leaves_out(tmp_path, capsys):
    _version(tmp_path, "m", 1)
    _version(tmp_path, "m", 2, saved_model=False)
    _version(tmp_path, "m", "v3")
    assert _serving(tmp_path) == 0
    err = capsys.readouterr().err
    assert os.path.join("m", "2") in err and "saved_model.pb" in err, err
    assert os.path.join("m", "v3") in err, err
    assert "versions: 1" in (tmp_path / "models.config").read_text()


def test_serving_config_refuses_a_model_name_tf_serving_cannot_serve(tmp_path, capsys):
    _version(tmp_path, 'my "model"', 1)
    assert _serving(tmp_path) == 2
    assert 'my "model"' in capsys.readouterr().err


def test_serving_config_says_when_models_is_one_model(tmp_path, capsys):
    _version(tmp_path, "m", 1)
    assert _serving(tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "versions" in err and str(tmp_path) in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-batch-threads", "0"], "--num-batch-threads"),
        (["--prometheus-path", "metrics"], "--prometheus-path"),
    ],
)
def test_serving_config_options_are_checked(tmp_path, capsys, argv, message):
    _version(tmp_path, "m", 1)
    assert _serving(tmp_path, *argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------- options typed at their default; card's crf


@pytest.fixture(scope="module")
def detector_path(tmp_path_factory):
    """A tiny Faster R-CNN (compact backbone) saved with a detection card."""
    model = tiny_faster_rcnn()
    path = str(tmp_path_factory.mktemp("detector") / "det.keras")
    model.save(path)
    card = {"task": "detection", "normalization": "caffe", "classes": ["circle", "square"]}
    write_model_card(path, {**card, "min_size": 64, "max_size": 96})
    return path


def test_predict_on_a_detector_accepts_options_typed_at_their_default(
    detector_path, tmp_path, capsys
):
    image = tmp_path / "photo.png"
    write_rgb(image, _RNG.integers(0, 256, (40, 48, 3), np.uint8))
    argv = ["predict", "--model", detector_path, str(image), "--output", str(tmp_path / "o")]
    for option in (["--tta", "none"], ["--tiled", "auto"]):
        code = cli.main([*argv, *option])
        err = capsys.readouterr().err
        assert code == 0, (option, err)
    assert (tmp_path / "o" / "photo_detections.json").is_file()
    code = cli.main([*argv, "--tta", "flip"])
    err = capsys.readouterr().err
    assert code == 2 and "--tta" in err and "does not apply" in err, err


@pytest.fixture(scope="module")
def segmenter_path(tmp_path_factory):
    """A tiny U-Net of the shapes classes and two shapes records."""
    from keras_dense.data import SHAPE_CLASSES, convert_shapes

    root = tmp_path_factory.mktemp("segmenter")
    convert_shapes(str(root / "val"), 2, size=32, seed=3, progress=False)
    keras.utils.set_random_seed(0)
    model = apps.unet(4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(root / "seg.keras")
    model.save(path)
    write_model_card(
        path, {"task": "segmentation", "normalization": "caffe", "classes": list(SHAPE_CLASSES)}
    )
    return path, str(root / "val-*.tfrecord")


BAD_CRF = {
    "misspelt key": ({"theta_alfa": 60.0}, r"crf\.theta_alfa.*theta_alpha"),
    "negative theta": ({"theta_alpha": -5.0}, r"crf\.theta_alpha.*-5"),
    "zero weight": ({"bilateral_weight": 0}, r"crf\.bilateral_weight"),
    "huge theta": ({"theta_beta": 1e30}, r"crf\.theta_beta"),
    "text theta": ({"theta_gamma": "3"}, r"crf\.theta_gamma"),
    "nan weight": ({"spatial_weight": float("nan")}, r"crf\.spatial_weight"),
    "fractional iterations": ({"num_iterations": 2.5}, r"crf\.num_iterations"),
    "negative iterations": ({"num_iterations": -1}, r"crf\.num_iterations"),
}


@pytest.mark.parametrize("case", sorted(BAD_CRF))
def test_card_crf_parameters_name_the_bad_card_key(case):
    from keras_dense.crf.card_parameters import card_crf_parameters

    stored, message = BAD_CRF[case]
    with pytest.raises(ValueError, match=message):
        card_crf_parameters({"task": "segmentation", "crf": stored})


def test_card_crf_parameters_keep_what_tune_crf_writes():
    """The tuner's record keys are accepted (not passed on), the range ends are valid."""
    from keras_dense.crf.card_parameters import card_crf_parameters
    from keras_dense.evaluation.crf_tuning import PARAMETER_RANGES

    stored = {
        "theta_alpha": PARAMETER_RANGES["theta_alpha"][0],
        "bilateral_weight": PARAMETER_RANGES["bilateral_weight"][1],
        "num_iterations": 5,
        "mean_iou": 0.5,
        "baseline_mean_iou": 0.4,
        "default_crf_mean_iou": 0.45,
        "tuned_on": "val-*",
        "images": 3,
    }
    assert card_crf_parameters({"crf": stored}) == {
        "theta_alpha": 0.1,
        "bilateral_weight": 1e3,
        "num_iterations": 5,
    }


def test_evaluate_crf_names_a_misspelt_card_key(segmenter_path, tmp_path, capsys):
    model, pattern = segmenter_path
    card = json.loads(open(os.path.splitext(model)[0] + ".json").read())
    path = _with_card(model, tmp_path, {**card, "crf": {"theta_alfa": 60.0}})
    code = cli.main(["evaluate", "--model", path, "--data", pattern, "--crf"])
    err = capsys.readouterr().err
    assert code == 2 and "crf.theta_alfa" in err and "theta_alpha" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "edited_eval" / "metrics.json").exists()
