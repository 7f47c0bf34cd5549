"""Reliability of training and the WSL classifier's commands (issue 18).

- Recipes take any Keras optimizer by name, its arguments checked against the class.
- A run killed between its checkpoint and its `metrics.csv` row resumes where the checkpoint
  says, and the CSV holds every finished epoch exactly once, with the values that run logged.
- `evaluate`, `tune-threshold` and `pseudo-label` of a classifier refuse shards of another
  class list, as every other task does.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_dense import apps, cli
from keras_dense.data import convert_shapes
from keras_dense.training import load_recipe
from keras_dense.training.optimizers import build_optimizer, optimizer_class
from keras_dense.training.recipe import DEFAULTS, RecipeError, validate
from keras_dense.utils.model_card import write_model_card

from data_fixtures import write_tiny_unet_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
MINIMAL = {"model": {"builder": "unet"}, "data": {"train": "x-*.tfrecord"}}

# ------------------------------------------------------------------------------ optimizers


def _recipe_file(tmp_path, optimizer: str, schedule: str = 'name = "constant"') -> str:
    path = tmp_path / "r.toml"
    path.write_text(
        f'[model]\nbuilder = "unet"\n[data]\ntrain = "t-*.tfrecord"\n'
        f"[optimizer]\n{optimizer}\n[schedule]\n{schedule}\n"
    )
    return str(path)


def _built(recipe: dict, total_steps: int = 100, mixed_precision: bool = False):
    return build_optimizer(recipe["optimizer"], recipe["schedule"], total_steps, mixed_precision)


def _config(optimizer) -> dict:
    """The optimizer's config without its name (the reference is built by hand)."""
    config = dict(optimizer.get_config())
    config.pop("name", None)
    return config


@pytest.mark.parametrize(
    ("toml", "reference"),
    [
        (
            'name = "adam"\nlearning_rate = 0.003\nbeta_1 = 0.8\namsgrad = true',
            lambda: keras.optimizers.Adam(learning_rate=0.003, beta_1=0.8, amsgrad=True),
        ),
        (
            'name = "rmsprop"\nlearning_rate = 0.002\nrho = 0.8\ncentered = true',
            # Keras' own momentum default (0.0), not the recipe's SGD default (0.9).
            lambda: keras.optimizers.RMSprop(learning_rate=0.002, rho=0.8, centered=True),
        ),
        (
            'name = "lion"\nlearning_rate = 1e-4\nbeta_2 = 0.98\nweight_decay = 0.01',
            lambda: keras.optimizers.Lion(learning_rate=1e-4, beta_2=0.98, weight_decay=0.01),
        ),
        (
            'name = "adagrad"\nlearning_rate = 0.05\ninitial_accumulator_value = 0.2',
            lambda: keras.optimizers.Adagrad(learning_rate=0.05, initial_accumulator_value=0.2),
        ),
        (
            'name = "Nadam"\nlearning_rate = 0.001\nepsilon = 1e-6\nclipnorm = 1.5',
            lambda: keras.optimizers.Nadam(learning_rate=0.001, epsilon=1e-6, clipnorm=1.5),
        ),
        (
            'name = "adamax"\nlearning_rate = 0.001\nclipvalue = 0.5',
            lambda: keras.optimizers.Adamax(learning_rate=0.001, clipvalue=0.5),
        ),
        # SGD and AdamW exactly as before: SGD with the recipe's momentum 0.9, AdamW with
        # weight_decay 0 unless written (not Keras' 0.004).
        (
            'name = "sgd"',
            lambda: keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=False),
        ),
        (
            'name = "adamw"\nlearning_rate = 0.001',
            lambda: keras.optimizers.AdamW(learning_rate=0.001, weight_decay=0.0),
        ),
        (
            'name = "sgd"\nmomentum = 0.5\nnesterov = true\nweight_decay = 5e-4\nclipnorm = 2.0',
            lambda: keras.optimizers.SGD(
                learning_rate=0.01, momentum=0.5, nesterov=True, weight_decay=5e-4, clipnorm=2.0
            ),
        ),
    ],
)
def test_any_keras_optimizer_by_name_with_its_arguments(tmp_path, toml, reference):
    recipe = load_recipe(_recipe_file(tmp_path, toml))
    built = _built(recipe)
    want = reference()
    assert type(built) is type(want)
    assert _config(built) == _config(want)


def test_weight_decay_stays_explicit(tmp_path):
    adam = _built(load_recipe(_recipe_file(tmp_path, 'name = "adam"')))
    assert adam.weight_decay is None
    adamw = _built(load_recipe(_recipe_file(tmp_path, 'name = "adamw"')))
    assert adamw.weight_decay == 0.0  # Keras' AdamW would decay by 0.004 by default
    assert _built(load_recipe(_recipe_file(tmp_path, 'name = "sgd"'))).weight_decay is None


def test_schedule_and_loss_scale_apply_to_any_optimizer(tmp_path):
    recipe = load_recipe(_recipe_file(tmp_path, 'name = "rmsprop"', 'name = "poly"'))
    built = _built(recipe, total_steps=10)
    # Step 0 of the poly decay from RMSprop's own default rate (none written).
    assert float(built.learning_rate) == pytest.approx(keras.optimizers.RMSprop().learning_rate)
    assert type(built._learning_rate).__name__ == "PolyDecay"
    scaled = _built(recipe, 10, mixed_precision=True)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert isinstance(scaled.inner_optimizer, keras.optimizers.RMSprop)


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        ({"name": "adamm"}, r"'optimizer.name': 'adamm' is not a Keras optimizer.*'adam'"),
        ({"name": "loss_scale_optimizer"}, r"'optimizer.name'"),
        ({"name": "multioptimizer"}, r"'optimizer.name'"),  # wraps others: not from a table
        ({"name": "adam", "momentum": 0.5}, r"'optimizer.momentum'.*Adam.*'amsgrad'"),
        ({"name": "rmsprop", "rhoo": 0.5}, r"'optimizer.rhoo'.*did you mean 'rho'"),
        ({"name": "sgd", "beta_1": 0.5}, r"'optimizer.beta_1'.*SGD"),
        ({"name": "rmsprop", "rho": "high"}, r"'optimizer.rho': expected a number"),
        ({"name": "adam", "amsgrad": 1}, r"'optimizer.amsgrad': expected a boolean"),
        ({"name": "adam", "name_": "x"}, r"'optimizer.name_'"),
        ({"name": "adam", "weight_decay": -1.0}, r"'optimizer.weight_decay'"),
        # Arguments whose Keras default is None: checked as the others, not at the first step.
        ({"name": "adamax", "clipvalue": "x"}, r"'optimizer.clipvalue': expected a number > 0"),
        (
            {"name": "adam", "gradient_accumulation_steps": 2.5},
            r"'optimizer.gradient_accumulation_steps': expected an integer >= 1 .*got 2.5",
        ),
        ({"name": "sgd", "global_clipnorm": -2.0}, r"'optimizer.global_clipnorm': .*-2.0.*> 0"),
        # Out of range: the key, the value and the range are named.
        ({"name": "adam", "beta_1": 1.5}, r"'optimizer.beta_1': 1.5 .*expected .*\[0, 1\)"),
        ({"name": "adamw", "beta_2": -0.1}, r"'optimizer.beta_2': -0.1 .*\[0, 1\)"),
        ({"name": "nadam", "epsilon": -1.0}, r"'optimizer.epsilon': -1.0 .*> 0"),
        ({"name": "rmsprop", "rho": 7}, r"'optimizer.rho': 7 .*\[0, 1\)"),
        ({"name": "rmsprop", "momentum": 1.0}, r"'optimizer.momentum'.*\[0, 1\)"),
        ({"name": "adam", "ema_momentum": 2.0, "use_ema": True}, r"'optimizer.ema_momentum': 2.0"),
        ({"name": "adagrad", "initial_accumulator_value": -1}, r"accumulator_value': -1 .*>= 0"),
        ({"name": "ftrl", "l1_regularization_strength": -1}, r"l1_regularization_strength': -1"),
        ({"name": "lion", "learning_rate": -1e-4}, r"'optimizer.learning_rate'.*> 0"),
        # What only Keras' constructor knows is named at validation too, not at the first step.
        ({"name": "lion", "beta_1": 0.0}, r"'optimizer.beta_1'.*Lion refused .*beta_1"),
        (
            {"name": "adam", "clipnorm": 1.0, "global_clipnorm": 1.0},
            r"'optimizer.clipnorm', 'optimizer.global_clipnorm'.*Adam refused",
        ),
    ],
)
def test_bad_optimizer_names_and_arguments_are_named(optimizer, message):
    with pytest.raises(RecipeError, match=message):
        validate({**MINIMAL, "optimizer": optimizer})


def test_optimizer_arguments_in_range_are_accepted_and_built():
    recipe = validate(
        {
            **MINIMAL,
            "optimizer": {
                "name": "adam",
                "beta_1": 0.0,
                "epsilon": 1e-8,
                "clipvalue": 0.5,
                "use_ema": True,
                "ema_momentum": 0.9,
                "gradient_accumulation_steps": 3,
            },
        }
    )
    want = keras.optimizers.Adam(
        learning_rate=0.001,
        beta_1=0.0,
        epsilon=1e-8,
        clipvalue=0.5,
        use_ema=True,
        ema_momentum=0.9,
        gradient_accumulation_steps=3,
    )
    assert _config(_built(recipe)) == _config(want)
    # 1 is every step, what Keras means by leaving it out (Keras itself refuses 1).
    once = validate({**MINIMAL, "optimizer": {"name": "adam", "gradient_accumulation_steps": 1}})
    assert _built(once).gradient_accumulation_steps is None


@pytest.mark.parametrize("name", ["adam", "lion", "rmsprop", "schedulefreeadamw", "sgd", "adamw"])
def test_the_learning_rate_not_written_is_the_optimizers_own(name):
    # sgd and adamw keep the recipe's 0.01 (as before); the others take Keras' default, as
    # their other arguments do (Lion at SGD's 0.01 would step 10x its authors' advice).
    recipe = validate({**MINIMAL, "optimizer": {"name": name}})
    keras_default = optimizer_class(name)().get_config()["learning_rate"]
    want = 0.01 if name in ("sgd", "adamw") else keras_default
    assert recipe["optimizer"]["learning_rate"] == pytest.approx(want)
    assert float(_built(recipe).learning_rate) == pytest.approx(want)
    written = validate({**MINIMAL, "optimizer": {"name": name, "learning_rate": 0.2}})
    assert float(_built(written).learning_rate) == pytest.approx(0.2)


def test_an_optimizer_without_weight_decay_refuses_it(monkeypatch):
    from keras_dense.training import optimizers

    class NoDecay(keras.optimizers.SGD):
        def __init__(self, learning_rate=0.01, clipnorm=None, name="nodecay"):
            super().__init__(learning_rate=learning_rate, clipnorm=clipnorm, name=name)

    table = {**optimizers.optimizer_classes(), "nodecay": NoDecay}
    monkeypatch.setattr(optimizers, "optimizer_classes", lambda: table)
    recipe = validate({**MINIMAL, "optimizer": {"name": "nodecay"}})
    assert isinstance(_built(recipe), NoDecay)
    with pytest.raises(RecipeError, match=r"'optimizer.weight_decay'.*NoDecay"):
        validate({**MINIMAL, "optimizer": {"name": "nodecay", "weight_decay": 1e-4}})


def test_resolved_recipe_of_another_optimizer_revalidates_and_resume_lists_its_keys(tmp_path):
    from keras_dense.training.trainer import check_resume

    recipe = validate({**MINIMAL, "optimizer": {"name": "rmsprop", "rho": 0.8}})
    # The recipe's SGD/AdamW defaults are not carried into another optimizer's table.
    assert recipe["optimizer"] == {
        "name": "rmsprop",
        "learning_rate": pytest.approx(float(keras.optimizers.RMSprop().learning_rate)),
        "weight_decay": 0.0,
        "clipnorm": 0.0,
        "rho": 0.8,
    }
    assert validate(json.loads(json.dumps(recipe))) == recipe  # recipe.json reads back
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "w.weights.h5").write_bytes(b"")
    (run_dir / "backup" / "state.json").write_text('{"epoch": 1, "weights": "w.weights.h5"}')
    (run_dir / "recipe.json").write_text(json.dumps(recipe))
    changed = validate({**MINIMAL, "optimizer": {"name": "rmsprop", "rho": 0.7}})
    with pytest.raises(RecipeError, match=r"optimizer.rho \(0.8 -> 0.7\)"):
        check_resume(str(run_dir), changed)
    # Resolved SGD recipes are unchanged, so runs trained before resume as they did.
    sgd = validate(MINIMAL)["optimizer"]
    assert sgd == DEFAULTS["optimizer"]


# --------------------------------------------------------------------------------- resume

# Runs `keras-dense train RECIPE --output OUT` and SIGKILLs itself as soon as, after any
# callback's epoch end, the resume checkpoint names epoch `EPOCH` (1-based). Before, it logs
# every epoch it trains (with the values Keras gives the callbacks) to OUT.seen.jsonl, and after
# each callback's epoch end what a SIGKILL there would leave on disk (the metrics.csv rows and
# the checkpoint's epoch; every write is atomic) to OUT.disk.jsonl.
_KILLING_CHILD = """
import csv, json, os, signal, sys
import keras
from keras_dense import cli

recipe, out, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])

def on_disk():
    rows, state = [], 0
    if os.path.isfile(os.path.join(out, "metrics.csv")):
        rows = [int(r["epoch"]) for r in csv.DictReader(open(os.path.join(out, "metrics.csv")))]
    if os.path.isfile(os.path.join(out, "backup", "state.json")):
        state = json.load(open(os.path.join(out, "backup", "state.json")))["epoch"]
    return rows, state

class Seen(keras.callbacks.Callback):
    def on_epoch_end(self, index, logs=None):
        with open(out + ".seen.jsonl", "a") as f:
            f.write(json.dumps({"epoch": index, **{k: float(v) for k, v in logs.items()}}) + "\\n")

def killing(callback):
    inner = callback.on_epoch_end
    def on_epoch_end(index, logs=None):
        inner(index, logs)
        rows, state = on_disk()
        with open(out + ".disk.jsonl", "a") as f:
            after = type(callback).__name__
            f.write(json.dumps({"after": after, "rows": rows, "state": state}) + "\\n")
        if state >= epoch:
            os.kill(os.getpid(), signal.SIGKILL)
    return on_epoch_end

fit = keras.Model.fit
def patched_fit(self, *args, callbacks=None, **kwargs):
    callbacks = [Seen(), *(callbacks or [])]
    for callback in callbacks:
        callback.on_epoch_end = killing(callback)
    return fit(self, *args, callbacks=callbacks, **kwargs)
keras.Model.fit = patched_fit
sys.exit(cli.main(["train", recipe, "--output", out]))
"""


def _train_killed(recipe, out, epoch: int):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-c", _KILLING_CHILD, str(recipe), str(out), str(epoch)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _csv_rows(out) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _state_epoch(out) -> int:
    return json.loads((out / "backup" / "state.json").read_text())["epoch"]


def test_sigkill_between_checkpoint_and_metrics_row_resumes_without_redoing(
    tmp_path, monkeypatch, capsys
):
    convert_shapes(str(tmp_path / "train"), 4, size=32, seed=0, progress=False)
    convert_shapes(str(tmp_path / "val"), 2, size=32, seed=1, progress=False)
    recipe = write_tiny_unet_recipe(tmp_path / "tiny.toml", tmp_path, 3, 1, learning_rate=0.01)
    out = tmp_path / "run"

    # 1. Killed the moment epoch 2's checkpoint exists: its row is not written yet.
    killed = _train_killed(recipe, out, 2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _state_epoch(out) == 2
    assert [int(r["epoch"]) for r in _csv_rows(out)] == [0]
    # A SIGKILL after any callback would have left rows only of epochs the checkpoint holds
    # (a row without its checkpoint would be trained again and logged twice).
    disk = [json.loads(line) for line in open(str(out) + ".disk.jsonl")]
    assert {d["after"] for d in disk} >= {"MetricsLog", "Seen"}
    for d in disk:
        assert all(row < d["state"] for row in d["rows"]), d
    assert {"after": "MetricsLog", "rows": [0], "state": 1} in disk

    # 2. The same command finishes the run (in this process, logging what it trains).
    class Seen(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            with open(str(out) + ".seen.jsonl", "a") as f:
                f.write(json.dumps({"epoch": index, **{k: float(v) for k, v in logs.items()}}))
                f.write("\n")

    fit = keras.Model.fit

    def logged_fit(self, *args, callbacks=None, **kwargs):
        return fit(self, *args, callbacks=[Seen(), *(callbacks or [])], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", logged_fit)
    capsys.readouterr()
    assert cli.main(["train", str(recipe), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"resuming {out} after epoch 2 of 3" in printed
    # The row of epoch 2 comes back from the checkpoint, with a word.
    assert "restored the row of epoch 2 from the saved state" in printed

    # Every epoch was trained once, by one process, and its row holds what that process logged.
    seen = [json.loads(line) for line in open(str(out) + ".seen.jsonl")]
    assert [s["epoch"] for s in seen] == [0, 1, 2]
    rows = _csv_rows(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for row, logged in zip(rows, seen):
        assert set(row) == set(logged)
        for key, value in logged.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert _state_epoch(out) == 3
    assert not [p for p in out.rglob("*") if "tmp-" in p.name]


def test_reconcile_history_drops_rows_the_checkpoint_lacks_and_says_so(tmp_path):
    from keras_dense.training.callbacks import reconcile_history

    path = tmp_path / "metrics.csv"
    # Written by an older version: a torn last line, epoch 1 twice, epochs past the state.
    path.write_text("epoch,loss\n0,0.9\n1,0.8\n1,0.7\n2,0.6\n3,0.5\n4,")
    rows, notes = reconcile_history(str(path), 2, {"loss": 0.8})
    assert [(r["epoch"], r["loss"]) for r in rows] == [("0", "0.9"), ("1", "0.8")]
    assert any("dropped the rows of epochs [3, 4, 5]" in n and "trained again" in n for n in notes)
    assert any("repeated rows of epochs [2]" in n for n in notes)
    assert path.read_text() == "epoch,loss\n0,0.9\n1,0.8\n"
    # The row of the checkpoint's epoch comes back from its logs; nothing else is invented.
    path.write_text("epoch,loss,val_loss\n0,0.9,1.0\n")
    rows, notes = reconcile_history(str(path), 3, {"loss": 0.25, "val_loss": 0.5})
    assert [r["epoch"] for r in rows] == ["0", "2"] and rows[1]["val_loss"] == "0.5"
    assert any("restored the row of epoch 3" in n for n in notes)
    assert any("no rows for the finished epochs [2]" in n for n in notes)
    # A fresh start (no checkpoint) never silently keeps or overwrites rows of a killed run.
    path.write_text("epoch,loss\n0,0.9\n")
    rows, notes = reconcile_history(str(path), 0, None)
    assert rows == [] and "dropped the rows of epochs [1]" in notes[0]
    assert reconcile_history(str(path), 0, None) == ([], [])


# ------------------------------------------------------- classification: class-list checks


@pytest.fixture(scope="module")
def classifier_and_shards(tmp_path_factory):
    """A 3-class wsl_classifier (circle, square, triangle), shapes shards of its class list
    and pairs shards of another 3-class list (cat, dog, bird) with the same ids."""
    from keras_dense.data import convert_pairs

    from data_fixtures import make_pairs_folder

    root = tmp_path_factory.mktemp("wsl")
    convert_shapes(str(root / "shapes"), 3, size=32, seed=5, progress=False)
    make_pairs_folder(root / "pets", n=3, num_classes=4, seed=1)
    convert_pairs(
        str(root / "pets" / "images"),
        str(root / "pets" / "masks"),
        str(root / "cats"),
        classes="background,cat,dog,bird",
        progress=False,
    )
    keras.utils.set_random_seed(0)
    model = apps.wsl_classifier(num_classes=3, backbone="compact", pooling="gap", width=4)
    path = str(root / "cls.keras")
    model.save(path)
    # A hand-written card without ignore_label: the commands read it as 255.
    classes = ["circle", "square", "triangle"]
    write_model_card(path, {"task": "classification", "normalization": "tf", "classes": classes})
    return path, str(root / "shapes-*.tfrecord"), str(root / "cats-*.tfrecord"), root


@pytest.mark.parametrize("command", ["evaluate", "tune-threshold", "pseudo-label"])
def test_classifier_commands_refuse_shards_of_another_class_list(
    classifier_and_shards, command, tmp_path, capsys
):
    model, _, cats, _ = classifier_and_shards
    args = [command, "--model", model, "--data", cats]
    args += ["--dry-run"] if command == "tune-threshold" else []
    out = tmp_path / "out"
    args += ["--output", str(out / "pseudo")] if command == "pseudo-label" else []
    args += ["--output", str(out)] if command == "evaluate" else []
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "['cat', 'dog', 'bird']" in error and "['circle', 'square', 'triangle']" in error
    assert "cats.json" in error
    assert not out.exists() or not any(out.rglob("*.tfrecord"))


def test_classifier_commands_accept_shards_of_its_class_list(
    classifier_and_shards, tmp_path, capsys
):
    from keras_dense.data import read_examples

    model, shapes, _, _ = classifier_and_shards
    classes = ["circle", "square", "triangle"]
    inputs = {e["source_id"]: e for e in read_examples(shapes)}
    assert len(inputs) == 3
    evaluate = ["evaluate", "--model", model, "--data", shapes, "--output", str(tmp_path)]
    assert cli.main(evaluate) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["images"] == 3
    assert list(metrics["ap"]) == classes
    assert all(0 <= ap <= 1 for ap in metrics["ap"].values())
    assert metrics["map"] == pytest.approx(np.mean(list(metrics["ap"].values())))
    assert f"mAP = {metrics['map']:.4f} over 3 images" in capsys.readouterr().out

    card = pathlib.Path(os.path.splitext(model)[0] + ".json")
    before = card.read_text()
    tune = ["tune-threshold", "--model", model, "--data", shapes, "--grid", "0.5", "--dry-run"]
    assert cli.main(tune) == 0
    printed = capsys.readouterr().out
    assert "over 3 images: 0.5: " in printed and "best background threshold 0.5" in printed
    assert card.read_text() == before  # --dry-run

    out = tmp_path / "pseudo"
    assert cli.main(["pseudo-label", "--model", model, "--data", shapes, "--output", str(out)]) == 0
    manifest = json.loads((tmp_path / "pseudo.json").read_text())
    assert manifest["classes"] == ["background", *classes] and manifest["num_images"] == 3
    pseudo = {e["source_id"]: e for e in read_examples(str(tmp_path / "pseudo-*.tfrecord"))}
    assert set(pseudo) == set(inputs)
    for source_id, record in pseudo.items():
        assert np.array_equal(record["image"], inputs[source_id]["image"])
        assert record["mask"].shape == inputs[source_id]["image"].shape[:2]
        assert set(np.unique(record["mask"])) <= {0, 1, 2, 3, 255}


def test_resume_refuses_shards_whose_class_list_changed(tmp_path):
    from keras_dense.data import convert_pairs
    from keras_dense.data.image_io import encode_png
    from keras_dense.training import train

    convert_shapes(str(tmp_path / "train"), 4, size=32, seed=0, progress=False)
    convert_shapes(str(tmp_path / "val"), 2, size=32, seed=1, progress=False)
    recipe_path = write_tiny_unet_recipe(tmp_path / "r.toml", tmp_path, 1, 1, learning_rate=0.01)
    out = tmp_path / "run"
    train(load_recipe(str(recipe_path)), str(out), verbose=0)
    # The same globs now hold shards of another 4-class list (the model's shapes fit).
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        for i in range(count):
            image = rng.integers(0, 255, (32, 32, 3)).astype("uint8")
            mask = rng.integers(0, 4, (32, 32)).astype("uint8")
            (tmp_path / split / "images" / f"p{i}.png").write_bytes(encode_png(image))
            (tmp_path / split / "masks" / f"p{i}.png").write_bytes(encode_png(mask))
        convert_pairs(
            str(tmp_path / split / "images"),
            str(tmp_path / split / "masks"),
            str(tmp_path / split),
            classes="background,cat,dog,bird",
            progress=False,
        )
    longer = load_recipe(str(recipe_path), ["training.epochs=2"])
    with pytest.raises(RecipeError, match=r"circle.*cat|cat.*circle") as err:
        train(longer, str(out), verbose=0)
    assert "--output" in str(err.value)
    assert _state_epoch(out) == 1 and len(_csv_rows(out)) == 1
