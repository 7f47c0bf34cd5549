"""Training a recipe: strategy, model, data, optimizer, callbacks and the output folder.

The output folder of a run:

| path | what |
|---|---|
| `best.keras`, `best.json` | best model so far (validation mIoU, else loss) and its model card |
| `backup/` | weights + optimizer after the last finished epoch (`state.json`), for resuming |
| `logs/` | TensorBoard: `train/`, `validation/` scalars, `images/` input/truth/prediction |
| `recipe.json` | the resolved recipe (defaults and `--set` overrides applied) |
| `metrics.csv` | one row per epoch, written after the epoch's `backup/` state |

Running the same command again after a crash resumes after the last finished epoch (the one
`backup/state.json` names); `metrics.csv` is first made to hold exactly those epochs (see
`keras_dense.training.callbacks.reconcile_history`), and every change is printed. In a
multi-worker run the chief writes this folder; other workers write theirs to
`.worker-<type>-<index>/` inside it.

A recipe with `optimizer.learning_rate_multipliers` (see
`keras_dense.training.learning_rate_multipliers`) prints each pattern's multiplier and the
number of trainable variables it matched, and the model card holds them
(`"learning_rate_multipliers": {pattern: {"multiplier": m, "variables": n}}`).
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras
import numpy as np

from keras_dense.backbones.pretrained_weights import weights_record
from keras_dense.tasks import CompileResult, get_task
from keras_dense.tasks.recipe_config import Recipe, as_recipe, default_table
from keras_dense.tasks.recipe_data import check_patterns, data_classes, total_steps
from keras_dense.training import backup, callbacks
from keras_dense.training.batch_stage import install_batch_stage
from keras_dense.training.builders import build_model
from keras_dense.training.distribution import (
    select_strategy,
    synchronize_batch_norm,
    worker_info,
)
from keras_dense.training.fresh_layer_scaling import batch_inputs, scale_fresh_layers
from keras_dense.training.learning_rate_multipliers import (
    describe_multipliers,
    install_learning_rate_multipliers,
)
from keras_dense.training.optimizers import build_optimizer
from keras_dense.training.precise_batch_norm import PreciseBatchNorm
from keras_dense.training.recipe import UNTYPED_DEFAULTS, RecipeError
from keras_dense.utils.files import atomic_write_bytes
from keras_dense.utils.run_lock import run_lock
from keras_dense.utils.typed_tables import plain
from keras_dense.utils.version import __version__

BEST_MODEL = "best.keras"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
RESOLVED_RECIPE = "recipe.json"
METRICS_CSV = "metrics.csv"


# Tables compared (and set back) as one value: their keys are patterns, not key paths.
_WHOLE_TABLES = ("optimizer.learning_rate_multipliers",)


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" not in _WHOLE_TABLES:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Keys a resumed run may change: more epochs continue the same run.
RESUMABLE_CHANGES = ("training.epochs",)


def _at_default(flat: dict, defaults: dict, key: str) -> bool:
    return key not in flat or (key in defaults and flat[key] == defaults[key])


def check_resume(run_dir: str, recipe: Recipe | dict) -> None:
    """Refuses to resume a run folder whose saved recipe differs from this one.

    A key that only one of the two recipes has (one of another version) counts as unchanged
    when it is at that version's default: a key added later at this version's default, and
    a key of the untyped recipes (`UNTYPED_DEFAULTS`) at its old default, mean what the
    other recipe did.

    Args:
        run_dir: The run folder.
        recipe: This run's recipe (a resolved table is parsed).

    Raises:
        RecipeError: The folder holds a saved state of a run whose recipe differs (other
            than in `RESUMABLE_CHANGES`); the message lists the keys and the fixes.
    """
    path = os.path.join(run_dir, RESOLVED_RECIPE)
    if backup.read_state(os.path.join(run_dir, BACKUP_DIR)) is None or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            before = _flatten(json.load(f))
    except (OSError, json.JSONDecodeError) as err:
        raise RecipeError(f"{path}: unreadable saved recipe of the run to resume ({err})") from None
    config = as_recipe(recipe)
    after = _flatten(config.to_dict())
    defaults = _flatten(default_table(config.task))
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
        and k not in RESUMABLE_CHANGES
        and not (_at_default(before, UNTYPED_DEFAULTS, k) and _at_default(after, defaults, k))
    )
    if changed:
        details = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        sets = " ".join(f"--set {k}={_toml_value(before[k])}" for k in changed[:8] if k in before)
        raise RecipeError(
            f"{run_dir} holds a run whose recipe differs from this one in {details}{more}, so "
            "it cannot be resumed: train into another --output to start a new run"
            + (f", or set the keys back ({sets}) to resume it" if sets else "")
        )


def check_resumed_classes(run_dir: str, classes: list[str]) -> None:
    """Refuses to resume a run on shards whose class list is not the one it was trained on.

    The same recipe can point at shards that were converted again with other classes; the
    saved weights would then go on learning other labels under the old names.

    Args:
        run_dir: The run folder.
        classes: The class list of this run's shards (`data_classes`).

    Raises:
        RecipeError: The saved state (or, for states of older versions, the best model's card)
            names other classes.
    """
    state = backup.read_state(os.path.join(run_dir, BACKUP_DIR))
    if state is None:
        return
    saved, source = state.get("classes"), os.path.join(run_dir, BACKUP_DIR, backup.STATE_FILE)
    card_path = os.path.join(run_dir, os.path.splitext(BEST_MODEL)[0] + ".json")
    if saved is None and os.path.isfile(card_path):
        try:
            with open(card_path) as f:
                saved, source = json.load(f).get("classes"), card_path
        except (OSError, json.JSONDecodeError):
            saved = None
    if saved is not None and list(saved) != list(classes):
        raise RecipeError(
            f"{run_dir} holds a run trained on the classes {list(saved)} ({source}), but the "
            f"shards of data.train / data.validation now have {list(classes)}: resuming would "
            "train the saved weights on other labels; train into another --output to start a "
            "new run, or point the recipe back at the shards of this run"
        )


def _toml_value(value) -> str:
    if isinstance(value, dict):  # an inline table: {"fc8/*" = 10}
        items = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _write_resolved_recipe(path: str, recipe: dict) -> None:
    """Writes `recipe.json` (the recipe this run follows)."""
    atomic_write_bytes(path, (json.dumps(recipe, indent=2, sort_keys=True) + "\n").encode())


def _sample_batch(dataset, count: int, stage=None):
    batch = next(iter(dataset.take(1)))
    images, masks = batch if stage is None else stage(batch)
    return np.asarray(images)[:count], np.asarray(masks)[:count]


def _scale_fresh_layers(model, dataset, stage, loaded: list[str]) -> dict[str, float]:
    """`scale_fresh_layers` on the first training batch; prints what it scaled."""
    batch = next(iter(dataset.take(1)))
    if stage is not None:
        batch = stage(batch)
    factors = scale_fresh_layers(model, batch_inputs(model, batch), loaded)
    if factors:
        scaled = ", ".join(f"{name} x{factor:.3g}" for name, factor in factors.items())
        print(f"fresh layers on the pretrained trunk scaled to their inputs: {scaled}")
    return factors


def train(recipe: Recipe | dict, output: str, verbose: int | None = None) -> dict:
    """Trains a recipe (see `keras_dense.training.load_config`).

    Args:
        recipe: The parsed recipe, or its resolved table (`load_recipe`), parsed here.
        output: The run's output folder (see the module docstring); a folder holding a
            saved state resumes.
        verbose: Keras `fit` verbosity; default: a progress bar on a terminal, one line per
            epoch otherwise.

    Returns:
        A summary: `output`, `epochs`, `initial_epoch`, `monitor`, `best`, `history` (the
        last epoch's logs), `model` (path of the best model) and `seconds`.

    Raises:
        RecipeError: The recipe does not fit the data or the builder, or the output folder
            holds a run of another recipe.
        keras_dense.utils.run_lock.RunLockedError: Another training writes `output`.
        keras_dense.data.BadInputError: A data pattern matches nothing or a shard is damaged.
    """
    start = time.monotonic()
    recipe = as_recipe(recipe)
    strategy = select_strategy()  # first: the multi-worker strategy must precede other TF ops
    info = worker_info()
    run_dir = output
    if not info.is_chief:
        run_dir = os.path.join(output, f".worker-{info.task_type}-{info.task_id}")
    with run_lock(run_dir):
        return _train_locked(recipe, run_dir, strategy, info, verbose, start)


def _train_locked(recipe: Recipe, run_dir: str, strategy, info, verbose, start) -> dict:
    """`train` inside the run folder's lock."""
    check_resume(run_dir, recipe)
    task = get_task(recipe.task)
    data, training = recipe.data, recipe.training
    builder = recipe.model.builder
    if builder not in task.builders:
        raise RecipeError(
            f"recipe key 'model.builder' = {builder!r} does not fit task = {task.name!r} "
            f"(its builders: {list(task.builders)})"
        )
    task.check_recipe(recipe)
    check_patterns(recipe)
    keras.utils.set_random_seed(recipe.seed)
    classes = data_classes(data, task)
    check_resumed_classes(run_dir, classes)
    # The recipe as written goes to recipe.json; the tasks get it with the class count.
    run = recipe.with_num_classes(recipe.model.class_count(len(classes)))
    num_classes = run.model.num_classes

    previous_policy = keras.config.dtype_policy()
    if training.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with strategy.scope():
            model, kwargs = build_model(builder, run.model.kwargs, num_classes, data.channels)
            backbone_weights = weights_record(model)  # before finalize_model may rebuild it
            model = task.finalize_model(model, training.mixed_precision)
            if strategy.num_replicas_in_sync > 1:
                synchronize_batch_norm(model)
        train_ds, val_ds, steps, val_steps = task.datasets(
            run, model, info.num_workers, info.task_id
        )
        epochs, optimizer_steps = total_steps(run, steps)
        with strategy.scope():
            optimizer = build_optimizer(
                run.optimizer,
                run.to_dict()["schedule"],
                optimizer_steps,
                training.mixed_precision,
            )
            # Before the first step; a pattern that matches nothing is named here.
            multipliers = install_learning_rate_multipliers(
                optimizer, model, run.optimizer.get("learning_rate_multipliers") or {}
            )
            compiled = task.compile(model, run, optimizer, num_classes) or CompileResult()
            finished = backup.restore(model, os.path.join(run_dir, BACKUP_DIR))
            stage = task.train_batch_stage(run, model)
            if stage is not None:
                install_batch_stage(model, stage)
            scaled = None
            # A whole-model weights file fills the "fresh" layers too: nothing to scale.
            if (
                backbone_weights
                and training.scale_fresh_layers
                and not run.model.kwargs.get("weights")
            ):
                if not finished:
                    # Every worker scales on the same batch (the first of the unsharded
                    # data), so that all hold the same weights.
                    first = train_ds
                    if info.num_workers > 1:
                        first = task.datasets(run, model, 1, 0)[0]
                    scaled = _scale_fresh_layers(model, first, stage, backbone_weights["loaded"])
                else:  # resumed: the factors the run started with
                    state = backup.read_state(os.path.join(run_dir, BACKUP_DIR)) or {}
                    scaled = state.get("scaled")
            if scaled is not None:
                backbone_weights["scaled"] = scaled
    finally:
        keras.config.set_dtype_policy(previous_policy)

    _write_resolved_recipe(os.path.join(run_dir, RESOLVED_RECIPE), recipe.to_dict())
    monitor, mode = task.monitor(run, val_ds is not None)
    csv_path = os.path.join(run_dir, METRICS_CSV)
    state = backup.read_state(os.path.join(run_dir, BACKUP_DIR)) if finished else None
    history, notes = callbacks.reconcile_history(csv_path, finished, (state or {}).get("logs"))
    for note in (*compiled.notes, *notes):
        print(note)
    if multipliers:
        print(describe_multipliers(multipliers))
    card = {
        "task": task.name,
        "normalization": data.normalization_mode,
        "classes": classes,
        "ignore_label": data.ignore_label,
        "input_channels": data.channels,
        "background_outputs": task.background_outputs,
        "builder": builder,
        "builder_kwargs": plain(kwargs),
        "backbone_weights": backbone_weights,  # where the pretrained layers came from, or None
        # Each pattern's multiplier and how many variables it matched (when the recipe has any).
        **({"learning_rate_multipliers": multipliers} if multipliers else {}),
        "recipe": os.path.abspath(os.path.join(run_dir, RESOLVED_RECIPE)),
        "keras_dense_version": __version__,
        **task.card_fields(run),
        **compiled.card_fields,  # what compiling measured (e.g. class weights) replaces it
    }
    best_path = os.path.join(run_dir, BEST_MODEL)
    callback_list = [
        callbacks.RequireSteps(),  # first: an empty epoch must stop before anything is saved
        callbacks.BestCheckpoint(
            best_path, monitor, mode, callbacks.best_in_history(history, monitor, mode), card
        ),
        callbacks.ScalarSummaries(os.path.join(run_dir, LOG_DIR)),
    ]
    if task.image_summaries and training.image_summaries > 0:
        # A fixed sample: the first images of the first validation (else training) batch.
        images, masks = (
            _sample_batch(val_ds, training.image_summaries)
            if val_ds is not None
            else _sample_batch(train_ds, training.image_summaries, stage)
        )
        callback_list.append(
            callbacks.ImageSummaries(
                os.path.join(run_dir, LOG_DIR, "images"),
                images,
                masks,
                data.normalization_mode,
            )
        )
    # Last but one, so that a saved state implies every other output of its epoch was
    # written; then the CSV row, so that a row implies its epoch's state (which holds the
    # epoch's logs: a crash between the two loses nothing, see reconcile_history).
    if training.precise_bn_steps and val_ds is not None:
        # Runs in `on_test_begin`: validation and the best checkpoint see the new statistics.
        callback_list.append(PreciseBatchNorm(train_ds, training.precise_bn_steps, stage))
    callback_list.append(
        backup.EpochBackup(
            os.path.join(run_dir, BACKUP_DIR),
            run={"classes": classes, **({"scaled": scaled} if scaled is not None else {})},
        )
    )
    callback_list.append(callbacks.MetricsLog(csv_path))

    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    if finished >= epochs:
        print(f"{run_dir}: the run already finished its {epochs} epochs; nothing to do")
        logs = history[-1] if history else {}
    else:
        if finished:
            print(f"resuming {run_dir} after epoch {finished} of {epochs}")
        fit = model.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=finished,
            steps_per_epoch=steps,
            validation_data=val_ds,
            validation_steps=val_steps,
            callbacks=callback_list,
            shuffle=False,  # the input pipeline shuffles
            verbose=verbose,
        )
        logs = {k: float(v[-1]) for k, v in fit.history.items() if v}
    return {
        "output": run_dir,
        "epochs": epochs,
        "initial_epoch": finished,
        "monitor": monitor,
        "best": callback_list[1].best,
        "history": logs,
        "model": best_path,
        "seconds": time.monotonic() - start,
    }
