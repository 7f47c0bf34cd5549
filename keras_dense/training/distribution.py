"""Choosing the tf.distribute strategy, and who writes the outputs of a multi-worker run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from keras_dense.layers.walk import iter_layers


@dataclass(frozen=True)
class WorkerInfo:
    """This process's place in the cluster.

    Attributes:
        task_type: "worker" or "chief" (None outside a cluster).
        task_id: Index within the task type.
        num_workers: Number of processes in the cluster (1 outside a cluster).
    """

    task_type: str | None
    task_id: int
    num_workers: int

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's outputs (the chief, else worker 0)."""
        if self.task_type is None or self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_id == 0 and not self._has_chief

    @property
    def _has_chief(self) -> bool:
        return bool(_tf_config().get("cluster", {}).get("chief"))


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG: invalid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG: expected a JSON object with 'cluster' and 'task'")
    return config


def worker_info() -> WorkerInfo:
    """Reads TF_CONFIG: the task of this process and the size of the cluster."""
    config = _tf_config()
    cluster = config.get("cluster", {})
    count = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    if count <= 1:
        return WorkerInfo(None, 0, 1)
    task = config.get("task", {})
    if task.get("type") not in ("chief", "worker"):
        raise ValueError(
            f"TF_CONFIG: task.type={task.get('type')!r}; expected 'chief' or 'worker' when "
            "the cluster names several workers"
        )
    return WorkerInfo(task["type"], int(task.get("index", 0)), count)


def _fresh_eager_context() -> None:
    """Lets the multi-worker strategy configure collective ops after imports ran TF ops.

    Collective ops can only be configured before TensorFlow's eager context is initialised,
    and importing a module that builds a constant initialises it. The context is reset when
    that happened (tensors made before keep working: they hold their own values).
    """
    from tensorflow.python.eager import context

    if context.context()._context_handle is not None:
        context._reset_context()


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` accepts the nested batches Keras passes.

    Two calls of Keras 3's TensorFlow trainer fail on the multi-worker strategy
    (keras-team/keras#20585):

    - `fit` peeks at the first distributed batch with `strategy.reduce("MEAN", (x, y))` on the
      whole structure, only to learn the shapes; a structure is answered here with this
      worker's local values, without any collective (the shapes are all Keras needs);
    - each step reduces its scalar logs with `axis=0`; scalars are reduced with `axis=None`.

    Everything else is the stock strategy.
    """

    def reduce(self, reduce_op, value, axis=None):
        if isinstance(value, (tuple, list, dict)):
            return tf.nest.map_structure(lambda v: self.experimental_local_results(v)[0], value)
        if axis is not None:
            local = self.experimental_local_results(value)
            if all(getattr(v, "shape", None) is not None and v.shape.rank == 0 for v in local):
                axis = None
        return super().reduce(reduce_op, value, axis)


def select_strategy() -> tf.distribute.Strategy:
    """The distribution strategy for this process.

    - `MultiWorkerMirroredStrategy` (`KerasMultiWorkerStrategy`) when TF_CONFIG names more
      than one worker (chief included);
    - `MirroredStrategy` when more than one GPU is visible;
    - the default (single-device) strategy otherwise.

    Create it first thing: the multi-worker strategy must exist before other TF operations.

    Returns:
        The strategy.
    """
    if worker_info().num_workers > 1:
        _fresh_eager_context()
        return KerasMultiWorkerStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every BatchNormalization layer use the global batch statistics (sync BN).

    With several replicas, Keras' BatchNormalization normalises each replica's share of the
    batch with that share's statistics and updates the moving averages per replica, so the
    replicas' moving statistics drift apart and the saved model keeps one replica's. Sync BN
    all-reduces the statistics: every replica normalises alike and the moving averages stay
    identical. Call it on models trained under a multi-replica strategy.

    Args:
        model: The model (layers are changed in place; the setting is saved with it and has
            no effect without a strategy).

    Returns:
        The number of layers changed.
    """

    changed = 0
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed
