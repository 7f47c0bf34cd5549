"""Task capabilities and typed export options (issue 19): one refusal place, flags from the
declarations, InstanceSegmentationTask as a DetectionTask, and tasks without per-run state."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import pathlib
import types

import keras
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.tasks import get_task, task_names
from keras_dense.tasks.export_options import declared_fields

from export_test_utils import Reached, card_only, reached

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_dense"

# The task-specific options of each command and the tasks that take them, as the commands
# accepted them before the capabilities (the `command_options` of issue 18), plus the export
# options that became flags with the typed declarations (score_threshold, nms_iou,
# max_detections) and the options of every task (max_pixels, max_request_memory).
EVERY = {"segmentation", "detection", "classification", "instance_segmentation"}
DETECTORS = {"detection", "instance_segmentation"}
ACCEPTED = {
    ("evaluate", "--crf"): {"segmentation"},
    ("evaluate", "--tiled"): {"segmentation"},
    ("evaluate", "--tta"): {"segmentation", "classification"},
    ("evaluate", "--scales"): {"segmentation", "classification"},
    # Detection: the memory of one call over a batch of tiles, with --slice.
    ("evaluate", "--max-memory"): {"segmentation", "classification", "detection"},
    ("evaluate", "--use-07-metric"): DETECTORS,
    ("evaluate", "--pointing-tolerance"): {"classification"},
    ("predict", "--crf"): {"segmentation"},
    ("predict", "--tiled"): {"segmentation"},
    ("predict", "--tile-size"): {"segmentation"},
    ("predict", "--tta"): {"segmentation"},
    ("predict", "--scales"): {"segmentation"},
    ("predict", "--max-memory"): {"segmentation", "classification", "detection"},
    ("predict", "--score-threshold"): DETECTORS,
    ("export", "--batch-mode"): {"segmentation", "detection"},
    ("export", "--tta"): {"segmentation"},
    ("export", "--scales"): {"segmentation"},
    ("export", "--min-size"): DETECTORS,
    ("export", "--max-size"): DETECTORS,
    ("export", "--score-threshold"): DETECTORS,
    ("export", "--nms-iou"): DETECTORS,
    ("export", "--max-detections"): {"detection"},
    ("export", "--max-pixels"): EVERY,
    ("export", "--max-request-memory"): EVERY,
}
# A value other than the default for each option (switches have none).
VALUES = {
    "--tta": ["flip"],
    "--scales": ["0.5,1"],
    "--max-memory": ["1GiB"],
    "--pointing-tolerance": ["5"],
    "--tile-size": ["64"],
    "--score-threshold": ["0.25"],
    "--batch-mode": ["pad"],
    "--min-size": ["300"],
    "--max-size": ["2000"],
    "--nms-iou": ["0.5"],
    "--max-detections": ["10"],
    "--max-pixels": ["1000000"],
    "--max-request-memory": ["1GiB"],
}
PREDICT_VALUES = {"--tiled": ["always"]}


def _argv(command: str, flag: str, model: str, tmp_path) -> list[str]:
    extra = {
        "export": ["--output", str(tmp_path / "served" / "m")],
        "predict": ["--data", str(tmp_path / "x-*"), "--output", str(tmp_path / "p")],
        "evaluate": ["--data", str(tmp_path / "x-*")],
    }[command]
    values = (PREDICT_VALUES if command == "predict" else {}).get(flag, VALUES.get(flag, []))
    return [command, "--model", model, *extra, flag, *values]


@pytest.fixture
def stop_after_checks(monkeypatch):
    """Every command stops with `Reached` once its options are accepted."""
    from keras_dense.export import saved_model_export
    from keras_dense.tasks import model_loading

    monkeypatch.setattr(saved_model_export, "export_saved_model", reached)
    monkeypatch.setattr(model_loading, "load_model_with_card", reached)


def test_the_table_covers_every_declared_export_option():
    """A new export option declaration needs a row here (and gets a flag)."""
    declared = set()
    for name in task_names():
        declared |= set(declared_fields(get_task(name).export_options))
    flags = {f"--{n.replace('_', '-')}" for n in declared - {"tta"}} | {"--tta", "--scales"}
    assert flags == {flag for command, flag in ACCEPTED if command == "export"}


@pytest.mark.parametrize("command, flag", sorted(ACCEPTED))
def test_each_option_is_refused_once_in_one_place_for_the_tasks_without_it(
    command, flag, tmp_path, capsys, stop_after_checks, monkeypatch
):
    from keras_dense.tasks import capabilities

    calls = []
    original = capabilities.unsupported_error

    def counted(*args, **kwargs):
        error = original(*args, **kwargs)
        if error is not None:
            calls.append(str(error))
        return error

    monkeypatch.setattr(capabilities, "unsupported_error", counted)
    accepted = ACCEPTED[command, flag]
    for task in sorted(EVERY):
        argv = _argv(command, flag, card_only(tmp_path, task), tmp_path)
        if flag == "--max-memory" and task == "detection":
            argv += ["--slice", "64"]  # a detector's budget is for batches of tiles
        calls.clear()
        if task in accepted:
            with pytest.raises(Reached):
                code = cli.main(argv)
                pytest.fail(f"{task}: exit {code}: {capsys.readouterr().err}")
            assert not calls
            continue
        code = cli.main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (task, err)
        assert len(calls) == 1 and lines[0] == f"keras-dense {command}: error: {calls[0]}"
        # The message names the option, the task and exactly the tasks that accept it.
        head = f"{flag} does not apply to {task} models: "
        assert lines[0].startswith(f"keras-dense {command}: error: {head}"), lines[0]
        named = lines[0].split(" is supported by ")[1].split(" only")[0]
        assert set(named.replace(" models", "").split(" and ")) == accepted, lines[0]


@pytest.mark.parametrize(
    "command, task",
    [("tune-crf", t) for t in sorted(EVERY - {"segmentation"})]
    + [(c, t) for c in ("pseudo-label", "tune-threshold") for t in sorted(EVERY)],
)
def test_commands_of_one_capability_refuse_the_other_tasks(
    command, task, tmp_path, capsys, monkeypatch
):
    from keras_dense.tasks import model_loading

    model = card_only(tmp_path, task)
    card = json.loads((tmp_path / f"{task}.json").read_text())
    stub = types.SimpleNamespace(outputs=[np.zeros((1, 2))])  # the card is checked first
    monkeypatch.setattr(model_loading, "load_model_with_card", lambda *a, **k: (stub, card))
    monkeypatch.setattr("keras_dense.utils.card_fields.check_card_fields", reached)
    argv = [command, "--model", model, "--data", str(tmp_path / "x-*")]
    if command == "pseudo-label":
        argv += ["--output", str(tmp_path / "out" / "p")]
    supported = "segmentation" if command == "tune-crf" else "classification"
    if task == supported:
        with pytest.raises(Reached):
            cli.main(argv)
        return
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{command} does not apply to {task} models" in err
    assert f"is supported by {supported} models only" in err and len(err.splitlines()) == 1


def test_no_task_module_refuses_options_itself():
    """The 13 copies of "--tta/--crf apply to segmentation models only" are gone."""
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        text = path.read_text()
        for phrase in ("models only", "apply to segmentation models", "applies to segm"):
            assert phrase not in text or path.name == "capabilities.py", (path.name, phrase)


def test_export_flags_come_from_the_declarations(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in task_names():
        for field_name, field in declared_fields(get_task(name).export_options).items():
            help_text = " ".join(field.metadata["help"].split())
            assert help_text in text, (name, field_name)
            flag = "--tta" if field_name == "tta" else "--" + field_name.replace("_", "-")
            assert flag in text


def test_export_flag_values_are_checked_by_their_declaration(tmp_path, capsys):
    model = card_only(tmp_path, "detection")
    for flag, value in (("--nms-iou", "1.5"), ("--max-detections", "0"), ("--min-size", "0")):
        code = cli.main(["export", "--model", model, "--output", str(tmp_path / "m"), flag, value])
        err = capsys.readouterr().err
        assert code == 2 and f"{flag} {value}" in err and "expected" in err, err


def test_export_options_objects_check_their_values():
    detection = get_task("detection").export_options
    with pytest.raises(ValueError, match="score_threshold=2"):
        detection(score_threshold=2)
    with pytest.raises(ValueError, match="batch_mode='sideways'"):
        detection(batch_mode="sideways")
    with pytest.raises(TypeError):
        get_task("classification").export_options(min_size=300)  # not a classifier option
    assert detection(min_size=300).sizes({"max_size": 900}) == (300, 900)
    with pytest.raises(ValueError, match="--max-size 200 is below --min-size 300"):
        detection(min_size=300, max_size=200).sizes({})


def test_export_saved_model_keywords_map_onto_the_options_in_one_place():
    from keras_dense.export.saved_model_export import task_export_options
    from keras_dense.utils.tta import TestTimeAugmentation

    segmentation, instance = get_task("segmentation"), get_task("instance_segmentation")
    options = task_export_options(segmentation, None, {"batch_mode": "pad", "max_size": None})
    assert options == segmentation.export_options(batch_mode="pad")
    with pytest.raises(ValueError, match="batch_mode does not apply to instance_segmentation"):
        task_export_options(instance, None, {"batch_mode": "pad"})
    with pytest.raises(ValueError, match="is supported by detection models only"):
        task_export_options(instance, None, {"max_detections": 5})
    with pytest.raises(ValueError, match="expected the segmentation task's"):
        task_export_options(segmentation, instance.export_options(), {})
    flip = TestTimeAugmentation(True)
    assert task_export_options(segmentation, None, {"tta": flip}).tta == flip


def test_instance_segmentation_is_a_detection_task_overriding_only_what_differs():
    from keras_dense.tasks.detection import DetectionTask
    from keras_dense.tasks.instance_segmentation import InstanceSegmentationTask

    assert issubclass(InstanceSegmentationTask, DetectionTask)
    overridden = {
        name
        for name, value in vars(InstanceSegmentationTask).items()
        if inspect.isfunction(value) and not name.startswith("__")
    }
    # What differs: its outputs, evaluation and signatures (and, while a recipe's data
    # table is not typed per task, reading records with instance masks).
    differs = {"evaluate", "report_lines", "predict_image", "export_signatures", "verify_export"}
    allowed = differs | {"export_unsupported", "datasets", "check_recipe", "evaluation_files"}
    assert differs <= overridden <= allowed, overridden
    instance, detection = get_task("instance_segmentation"), get_task("detection")
    assert instance.class_names(["background", "a"]) == detection.class_names(["background", "a"])
    # All but batches of tiles under --max-memory (sliced masks run one tile per call).
    assert instance.capabilities == dataclasses.replace(detection.capabilities, tile_batches=False)
    assert instance.background_outputs == detection.background_outputs == 1


def test_task_modules_keep_no_instance_state():
    """A registered task is a singleton: no method assigns to `self.X`."""
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    is_self = (
                        isinstance(target, ast.Attribute)
                        and getattr(target.value, "id", None) == "self"
                    )
                    assert not is_self, f"{path.name}:{node.lineno} sets self.{target.attr}"


def _recipe(root, class_weights):
    from keras_dense.training.recipe import validate

    return validate(
        {
            "model": {"builder": "unet", "kwargs": {"padding": "same", "filters": 4, "depth": 2}},
            "data": {"train": str(root / "train-*.tfrecord"), "crop_size": 32},
            "training": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 1},
            "optimizer": {"name": "adamw", "learning_rate": 0.01},
            "loss": {"name": "ce+lovasz", "class_weights": class_weights},
        }
    )


def test_two_compiles_on_the_singleton_do_not_leak(shapes32):
    """Median-frequency weights of one run never reach the card of the next."""
    from keras_dense.apps import unet
    from keras_dense.losses import median_frequency_weights

    task = get_task("segmentation")
    before = dict(vars(task))
    first, second = _recipe(shapes32, "median_frequency"), _recipe(shapes32, [1.0, 2.0, 3.0, 4.0])
    model = unet(num_classes=4, input_shape=(32, 32, 3), filters=4, depth=2)
    result = task.compile(model, first, keras.optimizers.SGD(), 4)
    want, absent = median_frequency_weights(str(shapes32 / "train-*.tfrecord"), 4, 255)
    np.testing.assert_allclose(result.card_fields["loss"]["class_weights"], want)
    assert result.card_fields["loss"]["class_weights_rule"] == "median_frequency"
    assert result.card_fields["loss"]["classes_absent"] == absent
    assert result.notes and "median-frequency class weights" in result.notes[0]
    other = unet(num_classes=4, input_shape=(32, 32, 3), filters=4, depth=2)
    again = task.compile(other, second, keras.optimizers.SGD(), 4)
    assert again.card_fields == {} and again.notes == ()
    assert task.card_fields(second)["loss"]["class_weights"] == [1.0, 2.0, 3.0, 4.0]
    # The first recipe's card without its compile: the rule, not the other run's weights.
    assert task.card_fields(first)["loss"]["class_weights"] == "median_frequency"
    assert dict(vars(task)) == before == {}
    assert dataclasses.is_dataclass(result)
