"""Per-variable learning-rate multipliers (`optimizer.learning_rate_multipliers`).

The references are the update rules written out in NumPy (SGD with momentum, Adam, AdamW's
decoupled decay at the base rate, gradient accumulation): the variables a pattern matches
must move as the rule says at the multiplied rate, the others at the optimizer's rate. Every
other Keras optimizer class is compared with itself built at the multiplied rate. The wrapper
leans on Keras internals (`update_step(gradient, variable, learning_rate)`,
`_get_variable_index`): these tests fail when a Keras release changes them.
"""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.training import load_recipe, parse_override, train, validate
from keras_dense.training.learning_rate_multipliers import (
    KerasInternalsError,
    _check_keras_internals,
    install_learning_rate_multipliers,
    multiplier_of,
    resolve_multipliers,
)
from keras_dense.training.optimizers import build_optimizer, optimizer_arguments, optimizer_classes
from keras_dense.training.recipe import DEFAULTS, RecipeError

KEY = "optimizer.learning_rate_multipliers"
MINIMAL = {"model": {"builder": "unet"}, "data": {"train": "x-*.tfrecord"}}
LR = 0.01
HEAD = {"head/*": 10}


def tiny_model(seed: int = 0) -> keras.Model:
    """Two Dense layers: `body/kernel`, `body/bias`, `head/kernel`, `head/bias`."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((5,))
    h = keras.layers.Dense(4, activation="relu", name="body")(x)
    return keras.Model(x, keras.layers.Dense(3, name="head")(h), name="tiny")


def gradients(model: keras.Model, steps: int, seed: int = 1) -> list[list[np.ndarray]]:
    """Fixed random gradients, one list per step (the update rules only see these)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(0, 1, v.shape).astype("float32") for v in model.trainable_variables]
        for _ in range(steps)
    ]


def rate_of(path: str, multipliers: dict) -> float:
    return LR * (10.0 if path.startswith("head/") and multipliers else 1.0)


def numpy_sgd(w, grads, lr, momentum):
    w, m = w.astype(np.float64), np.zeros(w.shape)
    for g in grads:
        m = momentum * m - lr * g
        w = w + m
    return w


def numpy_adam(w, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
    """Keras' Adam (its epsilon outside the square root); AdamW's decay at `decay_rate`."""
    w, m, v = w.astype(np.float64), np.zeros(w.shape), np.zeros(w.shape)
    for t, (g, decay_rate) in enumerate(grads, start=1):
        w = w - decay_rate * weight_decay * w  # decoupled decay, before the update
        m = m + (g - m) * (1 - beta_1)
        v = v + (g * g - v) * (1 - beta_2)
        # Keras takes the bias corrections' powers of the float32 betas, in float32
        # (1 - 0.999 in float32 is 1.3e-5 off): so does the reference.
        bias_1, bias_2 = (np.float32(1) - np.float32(b) ** np.float32(t) for b in (beta_1, beta_2))
        alpha = lr * np.sqrt(float(bias_2)) / float(bias_1)
        w = w - alpha * m / (np.sqrt(v) + epsilon)
    return w


def apply_steps(optimizer, model, steps, scale: float = 1.0) -> None:
    for grads in steps:
        optimizer.apply([tf.constant(g * scale) for g in grads], model.trainable_variables)


def make(kind: str, **kwargs):
    if kind == "sgd":
        return keras.optimizers.SGD(LR, momentum=0.9, **kwargs)
    return keras.optimizers.Adam(LR, **kwargs)


# ------------------------------------------------------------------- against NumPy rules


@pytest.mark.parametrize("loss_scale", [False, True], ids=["plain", "loss_scale"])
@pytest.mark.parametrize("multipliers", [HEAD, {}], ids=["head_x10", "none"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_matched_variables_step_at_the_multiplied_rate(kind, multipliers, loss_scale):
    model = tiny_model()
    before = [v.numpy() for v in model.trainable_variables]
    steps = gradients(model, 2)
    optimizer = make(kind)
    scale = 64.0 if loss_scale else 1.0  # a LossScaleOptimizer takes gradients scaled up
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=scale)
    record = install_learning_rate_multipliers(optimizer, model, multipliers)
    assert record == ({"head/*": {"multiplier": 10.0, "variables": 2}} if multipliers else {})
    apply_steps(optimizer, model, steps, scale)
    for i, v in enumerate(model.trainable_variables):
        lr = rate_of(v.path, multipliers)
        grads = [step[i] for step in steps]
        if kind == "sgd":
            want = numpy_sgd(before[i], grads, lr, 0.9)
        else:
            want = numpy_adam(before[i], [(g, 0.0) for g in grads], lr)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)


def test_weight_decay_uses_the_base_rate():
    model = tiny_model()
    before = [v.numpy() for v in model.trainable_variables]
    steps = gradients(model, 2)
    optimizer = keras.optimizers.AdamW(LR, weight_decay=0.5)
    install_learning_rate_multipliers(optimizer, model, HEAD)
    apply_steps(optimizer, model, steps)
    for i, v in enumerate(model.trainable_variables):
        # The update at the variable's rate, the decay at the optimizer's (LR) for all.
        grads = [(step[i], LR) for step in steps]
        want = numpy_adam(before[i], grads, rate_of(v.path, HEAD), weight_decay=0.5)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)


def test_gradient_accumulation_steps_at_the_multiplied_rate():
    model = tiny_model()
    before = [v.numpy() for v in model.trainable_variables]
    steps = gradients(model, 4)
    optimizer = keras.optimizers.SGD(LR, momentum=0.9, gradient_accumulation_steps=2)
    install_learning_rate_multipliers(optimizer, model, HEAD)
    apply_steps(optimizer, model, steps)
    for i, v in enumerate(model.trainable_variables):
        averaged = [(steps[0][i] + steps[1][i]) / 2, (steps[2][i] + steps[3][i]) / 2]
        want = numpy_sgd(before[i], averaged, rate_of(v.path, HEAD), 0.9)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)


@pytest.mark.parametrize("decay", [0.5, 1.0], ids=["schedule", "constant_rate"])
def test_a_distribution_strategy_and_a_schedule(decay):
    # Under a strategy Keras' update_step gets each replica's component tf.Variable; a
    # traced train step (tf.function) resolves it at trace time. The rate is a schedule's
    # tensor, or the optimizer's (mirrored) rate variable.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    rate = LR
    if decay != 1.0:
        rate = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=decay)
    with strategy.scope():
        model = tiny_model()
        optimizer = keras.optimizers.SGD(rate, momentum=0.9)
        install_learning_rate_multipliers(optimizer, model, HEAD)
        optimizer.build(model.trainable_variables)
    before = [v.numpy() for v in model.trainable_variables]
    steps = gradients(model, 2)

    @tf.function
    def step(grads):
        def replica_step(grads):
            optimizer.apply([tf.identity(g) for g in grads], model.trainable_variables)

        strategy.run(replica_step, args=(grads,))

    for grads in steps:
        step([tf.constant(g) for g in grads])
    for i, v in enumerate(model.trainable_variables):
        w, m = before[i].astype(np.float64), 0.0
        for t, grads in enumerate(steps):
            lr = rate_of(v.path, HEAD) * decay**t  # the rate at step t, multiplied
            m = 0.9 * m - lr * grads[i]
            w = w + m
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-7, err_msg=v.path)


def _without_decay(cls) -> dict:
    # Decoupled decay keeps the base rate, so the "built at the multiplied rate" reference
    # would decay differently: none here (AdamW, Muon decay by default).
    return {"weight_decay": 0.0} if "weight_decay" in optimizer_arguments(cls) else {}


@pytest.mark.parametrize("name", sorted(optimizer_classes()))
def test_every_keras_optimizer_steps_at_the_multiplied_rate(name):
    cls = optimizer_classes()[name]
    kwargs = _without_decay(cls)
    base = 1e-3
    models = [tiny_model() for _ in range(3)]
    steps = gradients(models[0], 2)
    scaled = cls(learning_rate=base, **kwargs)
    _check_keras_internals(scaled)
    install_learning_rate_multipliers(scaled, models[0], {"head/*": 3})
    apply_steps(scaled, models[0], steps)
    apply_steps(cls(learning_rate=base, **kwargs), models[1], steps)
    apply_steps(cls(learning_rate=3 * base, **kwargs), models[2], steps)
    moved = False
    for got, at_base, at_three in zip(*(m.trainable_variables for m in models)):
        want = at_three if got.path.startswith("head/") else at_base
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
        moved |= not np.allclose(at_base.numpy(), at_three.numpy(), rtol=1e-6, atol=1e-9)
    assert moved, f"{name}: the rate changes nothing here; the comparison would be empty"


def test_the_saved_optimizer_config_stays_plain_and_reinstalling_replaces(tmp_path):
    model = tiny_model()
    optimizer = keras.optimizers.SGD(LR, momentum=0.9)
    config = optimizer.get_config()
    install_learning_rate_multipliers(optimizer, model, {"head/*": 4})
    install_learning_rate_multipliers(optimizer, model, HEAD)  # not 40x
    assert optimizer.get_config() == config
    assert "update_step" in vars(optimizer)  # an instance attribute, not a subclass
    before = [v.numpy() for v in model.trainable_variables]
    steps = gradients(model, 1)
    apply_steps(optimizer, model, steps)
    for i, v in enumerate(model.trainable_variables):
        want = numpy_sgd(before[i], [steps[0][i]], rate_of(v.path, HEAD), 0.9)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7)
    model.compile(optimizer=optimizer, loss="mse")
    path = tmp_path / "m.keras"
    model.save(path)
    saved = json.loads(zipfile.ZipFile(path).read("config.json"))["compile_config"]["optimizer"]
    assert saved["class_name"] == "SGD" and "learning_rate_multipliers" not in json.dumps(saved)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is keras.optimizers.SGD
    assert "update_step" not in vars(loaded.optimizer)
    assert install_learning_rate_multipliers(optimizer, model, {}) == {}  # removes the wrapper
    assert "update_step" not in vars(optimizer)


def test_keras_internals_missing_are_named():
    class Renamed(keras.optimizers.SGD):
        def update_step(self, gradient, variable, rate):  # Keras renamed the argument
            return super().update_step(gradient, variable, rate)

    with pytest.raises(KerasInternalsError, match=r"update_step\(gradient, variable, learn"):
        install_learning_rate_multipliers(Renamed(LR), tiny_model(), HEAD)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [
        ({"fc6/*": -1}, r"pattern 'fc6/\*' is -1: expected a number > 0"),
        ({"fc6/*": 0}, r"pattern 'fc6/\*' is 0: expected a number > 0"),
        ({"fc6/*": "ten"}, r"pattern 'fc6/\*' is 'ten'"),
        ({"fc6/*": True}, r"pattern 'fc6/\*' is True"),
        ({"fc6/*": float("inf")}, r"pattern 'fc6/\*' is inf"),
        ({"fc6/*": float("nan")}, r"pattern 'fc6/\*' is nan"),
        ({"": 10}, r"pattern '': expected a non-empty fnmatch pattern"),
        (10, r"expected a table, got 10"),
    ],
)
def test_bad_values_are_refused_when_the_recipe_is_validated(multipliers, message):
    for name in ("sgd", "adam"):
        with pytest.raises(RecipeError, match=rf"'{KEY}'.*{message}"):
            validate({**MINIMAL, "optimizer": {"name": name, KEY.split(".")[1]: multipliers}})


def test_a_pattern_that_matches_nothing_lists_variable_paths():
    with pytest.raises(RecipeError) as err:
        install_learning_rate_multipliers(keras.optimizers.SGD(LR), tiny_model(), {"haed/*": 10})
    message = str(err.value)
    assert f"'{KEY}'" in message and "'haed/*' matches no trainable variable" in message
    assert "'head/kernel'" in message and "'body/kernel'" in message


def test_a_variable_two_patterns_give_different_multipliers_is_refused():
    with pytest.raises(RecipeError) as err:
        install_learning_rate_multipliers(
            keras.optimizers.SGD(LR), tiny_model(), {"head/*": 10, "*/kernel": 2}
        )
    message = str(err.value)
    assert f"'{KEY}'" in message and "'head/kernel'" in message
    assert "'head/*' (x10)" in message and "'*/kernel' (x2)" in message
    # The same multiplier twice is one multiplier.
    record = resolve_multipliers(["head/kernel", "head/bias"], {"head/*": 10, "*/kernel": 10})
    assert record == {
        "head/*": {"multiplier": 10.0, "variables": 2},
        "*/kernel": {"multiplier": 10.0, "variables": 1},
    }
    assert multiplier_of("head/kernel", {"head/*": 10, "*/kernel": 10}) == 10.0
    assert multiplier_of("body/kernel", {"head/*": 10}) == 1.0
    assert multiplier_of("Head/kernel", {"head/*": 10}) == 1.0  # case-sensitive


# ------------------------------------------------------------------------------ recipes


def test_recipe_key_from_toml_and_from_set(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\nbuilder = "unet"\n[data]\ntrain = "t-*.tfrecord"\n'
        '[optimizer]\nname = "sgd"\nlearning_rate = 0.001\n'
        'learning_rate_multipliers = { "fc6/*" = 10, "fc7/*" = 10, "fc8/*" = 10 }\n'
    )
    recipe = load_recipe(str(path))
    assert recipe["optimizer"]["learning_rate_multipliers"] == {
        "fc6/*": 10,
        "fc7/*": 10,
        "fc8/*": 10,
    }
    assert validate(json.loads(json.dumps(recipe))) == recipe  # recipe.json reads back
    setting = 'optimizer.learning_rate_multipliers={"fc*" = 10}'
    assert parse_override(setting) == (["optimizer", "learning_rate_multipliers"], {"fc*": 10})
    overridden = load_recipe(str(path), [setting, "optimizer.name=adam"])
    assert overridden["optimizer"]["learning_rate_multipliers"] == {"fc*": 10}
    # Never a constructor argument, for SGD's full table as for another class's.
    for table in (recipe, overridden):
        built = build_optimizer(table["optimizer"], table["schedule"], 10, True)
        assert "learning_rate_multipliers" not in json.dumps(built.get_config())
    # Without the key: SGD's table holds the default {}, another class's table not at all.
    assert DEFAULTS["optimizer"]["learning_rate_multipliers"] == {}
    lion = validate({**MINIMAL, "optimizer": {"name": "lion"}})["optimizer"]
    assert "learning_rate_multipliers" not in lion


def test_resume_compares_the_multipliers_as_one_table(tmp_path):
    from keras_dense.training.trainer import check_resume

    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "w.weights.h5").write_bytes(b"")
    (run_dir / "backup" / "state.json").write_text('{"epoch": 1, "weights": "w.weights.h5"}')
    # A run of an older version (no key) resumes: its table means the default, {}.
    old = validate(MINIMAL)
    del old["optimizer"]["learning_rate_multipliers"]
    (run_dir / "recipe.json").write_text(json.dumps(old))
    check_resume(str(run_dir), validate(MINIMAL))
    # A run with multipliers resumes with the same ones only.
    first = {"fc6.a/*": 10, "fc7/*": 10}  # a pattern may hold a dot
    written = validate({**MINIMAL, "optimizer": {"learning_rate_multipliers": first}})
    (run_dir / "recipe.json").write_text(json.dumps(written))
    check_resume(str(run_dir), written)
    changed = validate({**MINIMAL, "optimizer": {"learning_rate_multipliers": {"fc*": 10}}})
    with pytest.raises(RecipeError, match=rf"{KEY} \(\{{.*\}} -> \{{'fc\*': 10\}}\)") as err:
        check_resume(str(run_dir), changed)
    setting = str(err.value).split("--set ")[1].rsplit(")", 1)[0]
    assert parse_override(setting) == (["optimizer", "learning_rate_multipliers"], first)


# ----------------------------------------------------------------------------- training


def _tiny_recipe(root, multipliers: dict, epochs: int = 1) -> dict:
    return {
        "model": {
            "builder": "unet",
            "kwargs": {"padding": "same", "filters": 4, "depth": 2, "batch_norm": True},
        },
        "data": {
            "train": str(root / "train-*.tfrecord"),
            "validation": str(root / "val-*.tfrecord"),
            "crop_size": 32,
        },
        "training": {
            "batch_size": 4,
            "epochs": epochs,
            "steps_per_epoch": 2,
            "image_summaries": 0,
            "mixed_precision": True,
        },
        "optimizer": {
            "name": "adam",
            "learning_rate": 0.001,
            "gradient_accumulation_steps": 2,
            "learning_rate_multipliers": multipliers,
        },
        "schedule": {"name": "poly"},
    }


def test_a_run_with_multipliers_trains_records_them_and_resumes(
    shapes32, tmp_path, capsys, monkeypatch
):
    from keras_dense.training import learning_rate_multipliers

    resolved = []  # the variables the wrapper resolved while `fit` traced its train step
    path_of = learning_rate_multipliers._path_of
    monkeypatch.setattr(
        learning_rate_multipliers,
        "_path_of",
        lambda optimizer, variable: resolved.append(path_of(optimizer, variable)) or resolved[-1],
    )
    out = tmp_path / "run"
    multipliers = {"conv_u0d-score/*": 10, "conv_u0c-d*": 10}
    # Mixed precision (a LossScaleOptimizer), Adam, gradient accumulation, a poly schedule.
    summary = train(validate(_tiny_recipe(shapes32, multipliers)), str(out), verbose=0)
    assert summary["epochs"] == 1
    assert {"conv_u0d-score/kernel", "conv_d0a-b/kernel"} <= set(resolved)
    printed = capsys.readouterr().out
    assert "learning-rate multipliers: conv_u0d-score/* x10 (2 variables)" in printed
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["optimizer"]["learning_rate_multipliers"] == multipliers
    card = json.loads((out / "best.json").read_text())
    assert card["learning_rate_multipliers"] == {
        "conv_u0d-score/*": {"multiplier": 10.0, "variables": 2},
        "conv_u0c-d*": {"multiplier": 10.0, "variables": 4},  # conv + its batch norm
    }
    model = keras.saving.load_model(out / "best.keras", compile=False)
    assert model.get_layer("conv_u0d-score").kernel.shape[-1] == 4
    # Resuming with more epochs keeps the multipliers (the recipe is otherwise the same): the
    # resumed run's train step resolves the variables through the wrapper again.
    resolved.clear()
    summary = train(validate(_tiny_recipe(shapes32, multipliers, epochs=2)), str(out), verbose=0)
    assert summary["initial_epoch"] == 1 and summary["epochs"] == 2
    printed = capsys.readouterr().out
    assert "resuming" in printed
    assert "learning-rate multipliers: conv_u0d-score/* x10 (2 variables)" in printed
    assert {"conv_u0d-score/kernel", "conv_d0a-b/kernel"} <= set(resolved)


def test_a_run_whose_pattern_matches_nothing_stops_before_the_first_step(shapes32, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(RecipeError, match=rf"'{KEY}': the pattern 'fc8/\*' matches no"):
        train(validate(_tiny_recipe(shapes32, {"fc8/*": 10})), str(out), verbose=0)
    assert not (out / "metrics.csv").exists() and not (out / "best.keras").exists()
