"""What a task's models support beyond what every task does, and the one refusal message.

Each `Task` declares a `TaskCapabilities`; the commands map their options onto capabilities
(`keras_dense.commands.applicable_options.OptionScope.needs`) and refuse, in one place, an option
that the model's task does not support (`unsupported_error`), naming the option, the task and
the tasks that support it. The task hooks themselves do not check their options again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def _capability(description: str) -> dataclasses.Field:
    return dataclasses.field(default=False, metadata={"description": description})


@dataclasses.dataclass(frozen=True)
class TaskCapabilities:
    """What a task's models support (all False by default).

    Attributes:
        score_tta: Test-time augmentation of the scores (flips and scales, softmax averaged)
            in evaluate, predict and the exported signatures (`--tta`, `--scales`).
        map_tta: Test-time augmentation of the class maps in evaluate (pointing game and
            CorLoc; `--tta`, `--scales`).
        crf: Dense-CRF refinement (`--crf`, `keras-dense tune-crf`).
        tiled_inference: Overlap-tile inference (`--tiled`, `--tile-size`).
        memory_planning: Per-image memory budget, planned before decoding (`--max-memory`).
        voc_ap: PASCAL VOC average precision (`--use-07-metric`).
        pointing_game: The pointing game (`--pointing-tolerance`).
        scored_detections: Detections with a score, cut at a threshold (`--score-threshold`).
        class_maps: Class maps that localise image labels (`keras-dense pseudo-label`,
            `keras-dense tune-threshold`).
        tflite: TFLite export (`keras-dense export --format tflite`).
        runtime_export: ONNX and OpenVINO exports (`keras-dense export --format onnx|openvino`).
        beam_evaluation: Evaluation on an Apache Beam pipeline (`evaluate --runner beam`).
        tile_batches: Sliced detection in batches of tiles under a memory budget
            (`--max-memory` with `--slice`).
    """

    score_tta: bool = _capability("test-time augmentation of the scores")
    map_tta: bool = _capability("test-time augmentation of the class maps")
    crf: bool = _capability("dense-CRF refinement")
    tiled_inference: bool = _capability("overlap-tile inference")
    memory_planning: bool = _capability("a per-image memory budget")
    voc_ap: bool = _capability("VOC average precision")
    pointing_game: bool = _capability("the pointing game")
    scored_detections: bool = _capability("scored detections")
    class_maps: bool = _capability("class maps from image labels")
    tflite: bool = _capability("TFLite export")
    runtime_export: bool = _capability("ONNX and OpenVINO export")
    beam_evaluation: bool = _capability("evaluation on Apache Beam")
    tile_batches: bool = _capability("batches of detection tiles under a memory budget")

    def has_any(self, names: tuple[str, ...]) -> bool:
        """Whether one of the capabilities `names` is True.

        Raises:
            ValueError: A name that is not a capability.
        """
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"capabilities {unknown}: expected names among {sorted(known)}")
        return any(getattr(self, name) for name in names)


def describe(names: tuple[str, ...]) -> str:
    """The capabilities `names` in words, e.g. "dense-CRF refinement"."""
    texts = {f.name: f.metadata["description"] for f in dataclasses.fields(TaskCapabilities)}
    return " or ".join(texts[name] for name in names)


def unsupported_error(
    what: str, task: str, supports: Callable[[object], bool], feature: str, hint: str = ""
) -> ValueError | None:
    """The one refusal of an option or command that the model's task does not support.

    Args:
        what: The option or command as typed, e.g. `--crf` or `tune-crf`.
        task: The model's task name.
        supports: Whether a task (a `keras_dense.tasks.Task`) supports it.
        feature: What it is, in words (e.g. `describe(("crf",))`).
        hint: Appended to the message (e.g. "; leave it out").

    Returns:
        None when `task` supports it; else the ValueError to raise, e.g. "--crf does not apply
        to detection models: dense-CRF refinement is supported by segmentation models only;
        leave it out".
    """
    from keras_dense.tasks.task import get_task, task_names

    if supports(get_task(task)):
        return None
    others = [name for name in task_names() if supports(get_task(name))]
    which = " and ".join(f"{name} models" for name in others) or "no models"
    return ValueError(
        f"{what} does not apply to {task} models: {feature} is supported by {which} only{hint}"
    )
