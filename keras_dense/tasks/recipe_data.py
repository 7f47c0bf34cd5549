"""What every task needs from a recipe's `[data]` table: shards, classes, steps, validation.

The task modules (`keras_dense.tasks.segmentation`, ...) build their pipelines with these,
from the typed recipe (`keras_dense.tasks.recipe_config.Recipe`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import tensorflow as tf

from keras_dense.data import BadInputError
from keras_dense.data.class_lists import agreed_manifest_classes
from keras_dense.data.tfrecord_files import count_records, resolve_files
from keras_dense.tasks.configs import DataConfig
from keras_dense.tasks.recipe_config import Recipe
from keras_dense.utils.errors import RecipeError


def normalization_mode(data: DataConfig) -> str | None:
    """The recipe's normalisation with "none" (TOML has no null) as None."""
    return data.normalization_mode


def data_classes(data: DataConfig | Mapping, task) -> list[str]:
    """The class names of a run, checked against every manifest of its shards.

    Every manifest of the training and validation shards is read; they must agree with each
    other (class list and ignore label) and with `data.classes` / `data.ignore_label` when
    the recipe gives them. The task maps each list to the names its models use
    (`Task.class_names`: detection drops a leading "background").

    Args:
        data: The recipe's `[data]` config (or its resolved table).
        task: The recipe's `keras_dense.tasks.Task`.

    Returns:
        The names.

    Raises:
        BadInputError: Manifests that disagree with each other (named).
        RecipeError: The recipe's classes or ignore label disagree with the manifests, or no
            names are given and no manifest has them.
    """
    if isinstance(data, Mapping):
        data = task.data_config(**{k: v for k, v in data.items() if k in _fields(task)})
    patterns = {"data.train": data.train, "data.validation": data.validation}
    found, ignore_label, manifests = agreed_manifest_classes(patterns, task.class_names)
    names = task.class_names(list(data.classes)) if data.classes else []
    if names and found is not None and names != found:
        raise RecipeError(
            f"recipe key 'data.classes' = {names} differs from the class list of the shards "
            f"{found} (manifests: {', '.join(sorted(manifests))}); labels would be read as the "
            "wrong classes: fix data.classes (or drop it to use the manifests'), or convert "
            "the data with these classes"
        )
    if ignore_label is not None and ignore_label != data.ignore_label:
        raise RecipeError(
            f"recipe key 'data.ignore_label' = {data.ignore_label} differs from the shards' "
            f"ignore_label {ignore_label} (manifests: {', '.join(sorted(manifests))})"
        )
    names = names or list(found or [])
    if not names:
        raise RecipeError(
            "recipe key 'data.classes': missing, and the training shards have no manifest "
            "with class names; list the classes in the recipe"
        )
    return names


def run_num_classes(recipe: Recipe, task) -> int:
    """The model's classes: `model.num_classes` as the trainer resolved it, else the data's.

    Never read from a model's outputs: the trainer passes the class count it built with.
    """
    return recipe.model.num_classes or len(data_classes(recipe.data, task))


def _fields(task) -> set[str]:
    return {f.name for f in dataclasses.fields(task.data_config)}


def check_batch_fits(pattern: str, batch_size: int, key: str = "data.train") -> int:
    """Refuses a batch larger than the data: it would give epochs of zero steps.

    Args:
        pattern: The training shards.
        batch_size: `training.batch_size` (per worker).
        key: The recipe key of the shards, for the message.

    Returns:
        The number of records.

    Raises:
        RecipeError: Fewer records than one batch.
    """
    records = count_records(pattern)
    if records < batch_size:
        raise RecipeError(
            f"recipe key 'training.batch_size' = {batch_size} is larger than the {records} "
            f"record(s) of {key}: an epoch would have no full batch; lower the batch size "
            f"(--set training.batch_size={max(records, 1)}) or add data"
        )
    return records


def worker_shards(pattern: str, key: str, num_workers: int, index: int) -> list[str] | str:
    """This worker's share of the shards: every `num_workers`-th file from `index` on.

    The pipelines pair each record with a random seed, which hides the files from
    tf.distribute's automatic sharding, so multi-worker runs split the files here (and turn
    automatic sharding off, see `no_auto_shard`).

    Args:
        pattern: Glob pattern of the shards.
        key: Recipe key of the pattern, for the error message.
        num_workers: Processes in the cluster.
        index: This process's index among them.

    Returns:
        `pattern` itself for a single worker, else the list of this worker's files.

    Raises:
        ValueError: Fewer shard files than workers.
    """
    if num_workers <= 1:
        return pattern
    files = resolve_files(pattern)
    if len(files) < num_workers:
        raise ValueError(
            f"recipe key {key!r}: {len(files)} shard file(s) for {num_workers} workers; convert "
            f"the data with --num-shards {num_workers} (or a multiple of it)"
        )
    return files[index::num_workers]


def no_auto_shard(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Turns tf.distribute's automatic sharding off (the files are already split)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def validation_dataset(make, recipe: Recipe, num_workers: int, worker_index: int):
    """The validation dataset of a recipe, shared by segmentation and detection.

    Args:
        make: `(file_patterns, batch_size) -> tf.data.Dataset` building the batches.
        recipe: The recipe.
        num_workers: Processes in the cluster; with several, validation runs a fixed number of
            steps on a repeated, not auto-sharded dataset (every worker runs the same steps).
        worker_index: This process's index in the cluster.

    Returns:
        `(validation, validation_steps)`: `(None, None)` without validation data;
        validation_steps None for one exact pass.
    """
    data, training = recipe.data, recipe.training
    if not data.validation:
        return None, None
    val_batch = training.validation_batch_size or training.batch_size
    validation = make(
        worker_shards(data.validation, "data.validation", num_workers, worker_index), val_batch
    )
    if num_workers == 1:
        # A known length spares Keras a first pass ending in a "ran out of data" warning.
        batches = math.ceil(count_records(data.validation) / val_batch)
        validation = validation.apply(tf.data.experimental.assert_cardinality(batches))
    validation_steps = training.validation_steps or None
    if num_workers > 1 and validation_steps is None:
        validation_steps = max(count_records(data.validation) // val_batch, 1)
    if validation_steps is not None:
        validation = validation.repeat()
    if num_workers > 1:
        validation = no_auto_shard(validation)
    return validation, validation_steps


def task_datasets(
    train: tf.data.Dataset,
    steps: int,
    make_validation,
    recipe: Recipe,
    num_workers: int,
    worker_index: int,
) -> tuple:
    """What `Task.datasets` returns, from the training batches and the validation maker.

    Args:
        train: The repeated training dataset of this worker (its share of the shards).
        steps: Training steps per epoch.
        make_validation: `(file_patterns, batch_size) -> tf.data.Dataset` building the
            validation batches (see `validation_dataset`).
        recipe: The recipe.
        num_workers: Processes in the cluster; with several, automatic sharding is turned off
            (the files are already split, `worker_shards`).
        worker_index: This process's index in the cluster.

    Returns:
        `(train, validation, steps_per_epoch, validation_steps)`.
    """
    validation, validation_steps = validation_dataset(
        make_validation, recipe, num_workers, worker_index
    )
    if num_workers > 1:
        train = no_auto_shard(train)
    return train, validation, steps, validation_steps


def total_steps(recipe: Recipe, steps_per_epoch: int) -> tuple[int, int]:
    """`(epochs, optimizer steps)`: `training.steps` (when > 0) sets the number of epochs."""
    training = recipe.training
    if training.steps:
        epochs = math.ceil(training.steps / steps_per_epoch)
        return epochs, training.steps
    return training.epochs, training.epochs * steps_per_epoch


def check_patterns(recipe: Recipe) -> None:
    """Fails early, naming the recipe key, when a data pattern matches no file."""
    for key in ("train", "validation"):
        pattern = getattr(recipe.data, key)
        if not pattern:
            continue
        try:
            resolve_files(pattern)
        except BadInputError as err:
            raise BadInputError(
                f"recipe key 'data.{key}' = {pattern!r}",
                "no TFRecord file matches; convert the data first (see the recipe's header "
                f"comment) or fix the pattern ({err.reason})",
            ) from None
