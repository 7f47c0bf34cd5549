"""The package's layering: no package imports a higher one, no task names compared outside
the task registry, and no public name of `keras_dense.apps` shadows a module.

The order below is the one the README's "Architecture" section describes; imports inside
functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_dense"

# Lowest first. A package may import its own modules and those of the packages before it.
LAYERS = (
    ("utils",),
    ("ops",),
    ("crf",),
    ("detection",),
    ("layers",),
    ("data",),
    ("tiling",),
    ("backbones",),
    ("apps", "losses", "metrics"),
    ("analysis",),
    ("signatures",),
    ("prediction", "localization"),
    ("evaluation",),
    ("tasks",),
    ("export",),
    ("serving", "training"),
    ("commands",),
    ("cli",),
    ("demo",),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
ROOT = len(LAYERS)  # `import keras_dense` (the package root) is above everything


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",) or parts == ("__main__",):
            continue
        yield parts[0], path


def _imported_packages(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "keras_dense":  # from keras_dense import data, ...
                names = [f"keras_dense.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "keras_dense":
                continue
            yield (parts[1] if len(parts) > 1 else None), node.lineno


def test_every_package_has_a_level():
    packages = {package.removesuffix(".py") for package, _ in _modules()}
    assert packages <= set(LEVEL), f"add {sorted(packages - set(LEVEL))} to LAYERS"


def test_no_package_imports_a_higher_one():
    upward = []
    for package, path in _modules():
        package = package.removesuffix(".py")
        for target, line in _imported_packages(path):
            level = ROOT if target is None else LEVEL.get(target, ROOT)
            if target != package and level >= LEVEL[package]:
                where = path.relative_to(PACKAGE.parent)
                upward.append(f"{where}:{line} -> {target or 'the package root'}")
    assert not upward, "imports of same-level or higher packages:\n" + "\n".join(upward)


TASK_COMPARISON = re.compile(
    r"""(task|\["task"\])\s*(==|!=|\bin\b)\s*\(?\s*["'](segmentation|detection|classification"""
    r"""|instance_segmentation)["']|["'](segmentation|detection)["']\s*(==|!=)\s*\w*task"""
)


def test_no_task_string_comparison_outside_the_registry():
    found = []
    for package, path in _modules():
        if package == "tasks":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if TASK_COMPARISON.search(line) or "len(model.inputs) == 2" in line:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not found, "task names compared outside keras_dense/tasks:\n" + "\n".join(found)


def test_the_detector_is_caught_by_the_task_comparison_pattern():
    assert TASK_COMPARISON.search('if card["task"] == "detection":')
    assert TASK_COMPARISON.search("if task == 'segmentation' and x:")
    assert not TASK_COMPARISON.search('task = get_task(card["task"])')


@pytest.mark.parametrize("level", range(len(LAYERS)))
def test_layer_names_exist(level):
    for name in LAYERS[level]:
        assert (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file(), name


def test_a_new_task_needs_only_its_module_and_registration(monkeypatch):
    """A task registered from outside the package is usable by recipes and the registry."""
    from keras_dense import tasks
    from keras_dense.tasks import task as task_module
    from keras_dense.training.recipe import validate

    class ToyTask(tasks.Task):
        name = "toy"
        builders = ("unet",)

    tasks.task_names()  # the package's own tasks registered first, into the real registry
    monkeypatch.setattr(task_module, "_REGISTRY", dict(task_module._REGISTRY))
    tasks.register_task(ToyTask())
    assert tasks.get_task("toy").builders == ("unet",)
    assert tasks.task_of_builder("fast_rcnn").name == "detection"
    recipe = validate({"task": "toy", "model": {"builder": "unet"}, "data": {"train": "x"}})
    assert recipe["task"] == "toy"
    with pytest.raises(ValueError, match="expected one of"):
        tasks.get_task("nope")


def test_a_new_builder_reaches_its_task_by_its_own_declaration(monkeypatch):
    """A builder declared with `apps.builder.makes` is a task's builder with no edit in tasks/."""
    from keras_dense import apps, tasks
    from keras_dense.apps.builder import makes

    @makes("segmentation")
    def toy_head(num_classes=2):
        return None

    monkeypatch.setattr(apps, "toy_head", toy_head, raising=False)
    monkeypatch.setattr(apps, "__all__", [*apps.__all__, "toy_head"])
    assert "toy_head" in tasks.get_task("segmentation").builders
    assert tasks.task_of_builder("toy_head").name == "segmentation"
    assert "toy_head" not in tasks.get_task("detection").builders
    # every builder function in apps.__all__ declares a registered task
    undeclared = [
        name
        for name in apps.__all__
        if name[0].islower()
        and getattr(getattr(apps, name), "task", None) is None
        and name not in ("compress_dense", "convolutionalize", "with_crf")
    ]
    assert not undeclared, f"builders without @makes(task): {undeclared}"
