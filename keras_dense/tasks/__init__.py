"""The task registry: one module per task (see `keras_dense.tasks.task`).

Add a task by writing its module (a `Task` subclass plus `register_task(...)`) and listing the
module here.
"""

from keras_dense.tasks.capabilities import TaskCapabilities
from keras_dense.tasks.export_options import ExportOptions
from keras_dense.tasks.task import (
    CompileResult,
    EvaluateOptions,
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
    "CompileResult",
    "EvaluateOptions",
    "ExportOptions",
    "PredictOptions",
    "Task",
    "TaskCapabilities",
    "get_task",
    "register_task",
    "task_names",
    "task_of_builder",
]
