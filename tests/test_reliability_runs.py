"""Reliability of training, evaluation, prediction, export and the client on bad setups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.data import BadInputError, convert_shapes
from keras_dense.data.image_io import encode_png
from keras_dense.serving.client import Client, ServingError, parse_rest_response
from keras_dense.tasks import get_task
from keras_dense.tasks.recipe_data import data_classes
from keras_dense.training import backup, callbacks
from keras_dense.training.recipe import RecipeError, validate
from keras_dense.training.trainer import check_resume, train
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.run_lock import RunLockedError, run_lock


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Shapes shards (4 classes) and pairs-style shards with another class list (2)."""
    from keras_dense.data import convert_pairs

    root = tmp_path_factory.mktemp("two_sets")
    convert_shapes(str(root / "shapes" / "train"), 6, size=32, seed=0, progress=False)
    convert_shapes(str(root / "shapes" / "val"), 2, size=32, seed=1, progress=False)
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        (images / f"p{i}.png").write_bytes(encode_png(rng.integers(0, 255, (32, 32, 3), np.uint8)))
        (masks / f"p{i}.png").write_bytes(encode_png(rng.integers(0, 2, (32, 32), np.uint8)))
    convert_pairs(str(images), str(masks), str(root / "shapes" / "other"), classes="bg,fg")
    return root / "shapes"


def _recipe(root, **changes):
    data = {
        "train": str(root / "train-*.tfrecord"),
        "validation": str(root / "val-*.tfrecord"),
        "crop_size": 32,
        **changes.pop("data", {}),
    }
    return validate(
        {
            "model": {"builder": "unet", "kwargs": {"padding": "same", "filters": 4, "depth": 2}},
            "data": data,
            "training": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 1, **changes},
            "optimizer": {"name": "sgd", "learning_rate": 0.01},
            "schedule": {"name": "poly"},
        }
    )


def test_a_glob_over_two_data_sets_is_refused_naming_both(two_sets):
    recipe = _recipe(two_sets, data={"train": str(two_sets / "*-*.tfrecord")})
    with pytest.raises(BadInputError, match=r"different class lists.*other\.json.*train\.json"):
        data_classes(recipe["data"], get_task("segmentation"))


def test_recipe_classes_must_match_the_manifests(two_sets):
    recipe = _recipe(two_sets, data={"classes": ["background", "circle"]})
    with pytest.raises(RecipeError, match=r"'data.classes' = \['background', 'circle'\] differs"):
        data_classes(recipe["data"], get_task("segmentation"))
    recipe = _recipe(two_sets, data={"ignore_label": 0})
    with pytest.raises(RecipeError, match="'data.ignore_label' = 0 differs"):
        data_classes(recipe["data"], get_task("segmentation"))


def test_batch_larger_than_the_data_is_refused_with_both_numbers(two_sets, tmp_path):
    recipe = _recipe(two_sets, batch_size=100)
    with pytest.raises(RecipeError, match=r"batch_size' = 100 is larger than the 6 record"):
        train(recipe, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run" / "best.keras").exists()
    assert backup.read_state(str(tmp_path / "run" / "backup")) is None


def test_an_epoch_without_steps_is_never_recorded():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 2)), np.zeros((0, 1)))).batch(1)
    saved = []
    marker = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: saved.append(e))
    with pytest.raises(RuntimeError, match="epoch 1 ran no training step"):
        model.fit(empty, epochs=1, callbacks=[callbacks.RequireSteps(), marker], verbose=0)
    assert saved == []


def test_second_training_into_one_folder_fails_naming_the_holder(two_sets, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from keras_dense.utils.run_lock import run_lock
                with run_lock({str(run_dir)!r}):
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        with pytest.raises(
            RunLockedError, match=rf"{run_dir}: another training \(PID {holder.pid}\)"
        ):
            train(_recipe(two_sets), str(run_dir), verbose=0)
        assert time.monotonic() - start < 30  # at once, not after training
    finally:
        holder.kill()
        holder.wait()
    with run_lock(str(run_dir)):  # a dead holder never blocks
        pass


def test_resume_with_another_recipe_lists_the_keys(two_sets, tmp_path):
    run_dir = tmp_path / "run"
    train(_recipe(two_sets), str(run_dir), verbose=0)
    check_resume(str(run_dir), _recipe(two_sets, epochs=3))  # more epochs: allowed
    with pytest.raises(RecipeError) as err:
        check_resume(str(run_dir), _recipe(two_sets, batch_size=3, steps_per_epoch=2))
    message = str(err.value)
    assert "training.batch_size (2 -> 3)" in message and "training.steps_per_epoch" in message
    assert "--output" in message and "--set training.batch_size=2" in message
    assert len(message) < 1000
    # A run saved by an older version lacks the keys added since: at their defaults they are
    # what that run did, so it resumes; set otherwise they are a change.
    saved = json.loads((run_dir / "recipe.json").read_text())
    del saved["data"]["on_error"], saved["model"]["num_classes"]
    (run_dir / "recipe.json").write_text(json.dumps(saved))
    check_resume(str(run_dir), _recipe(two_sets))
    skipping = _recipe(two_sets)
    skipping["data"]["on_error"] = "skip"
    with pytest.raises(RecipeError, match=r"data\.on_error \(None -> 'skip'\)"):
        check_resume(str(run_dir), skipping)


@pytest.fixture(scope="module")
def four_class_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = unet(4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(tmp_path_factory.mktemp("model") / "m.keras")
    model.save(path)
    classes = ["background", "circle", "square", "triangle"]
    write_model_card(path, {"task": "segmentation", "normalization": "caffe", "classes": classes})
    return path


def test_evaluate_refuses_shards_of_another_class_list(two_sets, four_class_model, capsys):
    code = cli.main(["evaluate", "--model", four_class_model, "--data", str(two_sets / "other-*")])
    err = capsys.readouterr().err
    assert code == 2
    assert "differ from the model card's" in err and "['bg', 'fg']" in err
    code = cli.main(
        [
            "predict",
            "--model",
            four_class_model,
            "--data",
            str(two_sets / "other-*"),
            "--output",
            str(two_sets / "pred"),
        ]
    )
    assert code == 2 and "differ from the model card's" in capsys.readouterr().err


def test_model_without_a_card_is_refused(tmp_path, capsys):
    path = str(tmp_path / "bare.keras")
    unet(2, input_shape=(None, None, 3), padding="same", filters=4, depth=2).save(path)
    image = tmp_path / "x.png"
    image.write_bytes(encode_png(np.zeros((32, 32, 3), np.uint8)))
    code = cli.main(["predict", "--model", path, str(image), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no model card" in err and "normalization" in err


def test_truncated_keras_file_is_named(four_class_model, tmp_path, capsys):
    broken = tmp_path / "broken.keras"
    data = open(four_class_model, "rb").read()
    broken.write_bytes(data[: len(data) // 2])
    code = cli.main(["evaluate", "--model", str(broken), "--data", "x-*.tfrecord"])
    err = capsys.readouterr().err
    assert code == 2 and f"{broken}: not a complete .keras archive" in err
    assert "Traceback" not in err


def test_empty_predict_folder_is_an_error(four_class_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(
        ["predict", "--model", four_class_model, str(tmp_path / "empty"), "--output", str(tmp_path)]
    )
    assert code == 2 and "no image files found" in capsys.readouterr().err


def test_output_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = cli.main(
        [
            "convert",
            "shapes",
            "--num-images",
            "2",
            "--size",
            "32",
            "--output",
            str(blocker / "sub" / "train"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "file.txt" in err[0] and "Traceback" not in err[0]


def test_predict_plans_within_the_memory_budget(four_class_model):
    from keras_dense.prediction.inference import plan_prediction
    from keras_dense.tasks.model_loading import load_model_with_card

    model, card = load_model_with_card(four_class_model)
    assert plan_prediction(model, card, 64, 64, 2**31) == "whole"
    assert plan_prediction(model, card, 4000, 4000, 2**31) == "tiled"
    with pytest.raises(ValueError, match=r"8000x8000 image needs about .* --max-memory"):
        plan_prediction(model, card, 8000, 8000, 2**31)


def test_serving_refuses_a_49_megapixel_request_before_decoding(tmp_path):
    from keras_dense.export.saved_model_export import export_saved_model

    keras.utils.set_random_seed(0)
    model = unet(2, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    result = export_saved_model(model, str(tmp_path), name="tiny", verify=False)
    budget = result.memory_budget
    assert budget.max_request_pixels < 7000 * 7000
    card = json.load(open(os.path.join(result.path, "assets.extra", "model_card.json")))
    assert card["serving"]["memory_budget"]["max_request_pixels"] == budget.max_request_pixels
    serve = tf.saved_model.load(result.path).signatures["serving_default"]
    big = encode_png(np.zeros((7000, 7000, 3), np.uint8))
    start = time.monotonic()
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(budget.max_request_pixels)):
        serve(image_bytes=tf.constant([big]))
    assert time.monotonic() - start < 5  # refused from the header, nothing decoded
    # Many small images that add up past the budget are refused too; one small is served.
    side = int((budget.max_request_pixels / 3) ** 0.5) + 1
    small = encode_png(np.zeros((side, side, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels per request"):
        serve(image_bytes=tf.constant([small] * 3))
    out = serve(image_bytes=tf.constant([encode_png(np.zeros((40, 30, 3), np.uint8))]))
    assert out["classes"].shape == (1, 40, 30)


def test_rest_client_errors_name_the_url():
    client = Client("127.0.0.1", rest_port=9, timeout=5)  # the discard port: nothing listens
    with pytest.raises(ServingError, match=r"http://127\.0\.0\.1:9/v1/models/m.*cannot reach"):
        client.predict([np.zeros((8, 8, 3), np.uint8)], model="m", protocol="rest")
    with pytest.raises(ServingError, match="response is not JSON"):
        parse_rest_response(b"<html>bad gateway</html>")


def test_labels_outside_the_classes_stop_the_pipeline_naming_the_record(tmp_path):
    from keras_dense.data import convert_pairs, segmentation_dataset

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i, top in enumerate((1, 5)):  # p1 holds label 5: outside a 2-class model
        (images / f"p{i}.png").write_bytes(encode_png(rng.integers(0, 255, (16, 16, 3), np.uint8)))
        mask = np.zeros((16, 16), np.uint8)
        mask[:4, :4] = top
        (masks / f"p{i}.png").write_bytes(encode_png(mask))
    convert_pairs(str(images), str(masks), str(tmp_path / "s" / "train"), progress=False)
    pattern = str(tmp_path / "s" / "train-*.tfrecord")
    for training in (True, False):
        ds = segmentation_dataset(
            pattern, 2, crop_size=16, training=training, num_classes=2, photometric=False
        )
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"p1.*train-00000-of-00001"):
            for _ in ds:
                pass
    # Without the class count (e.g. inspecting data), the labels pass through as they are.
    masks_seen = [m.numpy() for _, m in segmentation_dataset(pattern, 2, crop_size=16)]
    assert 5 in np.concatenate([m.ravel() for m in masks_seen])


def test_a_flipped_byte_in_a_shard_without_manifest_is_named(tmp_path, monkeypatch):
    from keras_dense.data import convert_shapes, segmentation_dataset

    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path / "cache"))
    convert_shapes(str(tmp_path / "s" / "train"), 3, size=32, progress=False)
    (tmp_path / "s" / "train.json").unlink()
    shard = tmp_path / "s" / "train-00000-of-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record's payload: only its CRC shows it
    shard.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match=r"train-00000-of-00001\.tfrecord: corrupt TFRecord"):
        segmentation_dataset(str(tmp_path / "s" / "train-*.tfrecord"), 1)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_resize_to_match_with_sizes_known_only_at_run_time(interpolation):
    """Validation batches have dynamic sizes: the resize must work inside tf.function."""
    from keras_dense.layers import ResizeToMatch

    layer = ResizeToMatch(interpolation=interpolation)
    spec = [tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([None, None, None, 3])]
    graph = tf.function(lambda x, r: layer([x, r]), input_signature=spec)
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 2)).astype(np.float32)
    reference = np.zeros((2, 11, 13, 3), np.float32)
    want = tf.image.resize(x, (11, 13), method=interpolation).numpy()
    np.testing.assert_allclose(graph(x, reference).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(layer([x, reference]).numpy(), want, atol=1e-5)  # static path
