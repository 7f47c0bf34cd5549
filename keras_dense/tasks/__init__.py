"""The task registry: one module per task (see `keras_dense.tasks.task`).

Add a task by writing its module (a `Task` subclass plus `register_task(...)`) and listing the
module here.
"""

from keras_dense.tasks.task import (
    EvaluateOptions,
    ExportOptions,
    PredictOptions,
    Task,
    get_task,
    register_task,
    task_names,
    task_of_builder,
)

TASK_MODULES = (
    "keras_dense.tasks.segmentation",
    "keras_dense.tasks.detection",
    "keras_dense.tasks.classification",
    "keras_dense.tasks.instance_segmentation",
)

__all__ = [
    "TASK_MODULES",
    "EvaluateOptions",
    "ExportOptions",
    "PredictOptions",
    "Task",
    "get_task",
    "register_task",
    "task_names",
    "task_of_builder",
]
