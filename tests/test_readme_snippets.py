"""The README's Python snippets run as written, and every `keras_dense.X` it names is reachable
after a bare `import keras_dense`.

Each ```python block runs in a fresh namespace holding what the blocks before it imported
(a reader runs them in order), plus stand-ins for the names the README leaves to the reader
(`images`, `big_image`, ...), in a temporary folder whose `tfrecords/*` paths hold tiny shapes
shards. `RUNS` says, for each block (keyed by its first line), how: a few replacements of
text that would need the network, real data or minutes of training, each with its reason
(calls too slow to run go through `signature_only`, which checks their arguments); a block
that cannot run at all is skipped with its reason. A new block without an entry fails
`test_every_block_is_listed`, and a replacement whose text left the README fails its block.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
import textwrap

import pytest

from helpers import run_python

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@dataclasses.dataclass(frozen=True)
class Run:
    """How one README block runs.

    Attributes:
        setup: Code defining the names the block uses without defining them.
        replace: `(README text, replacement, reason)` triples.
        skip: Why the block cannot run here (None: it runs).
    """

    setup: str = ""
    replace: tuple[tuple[str, str, str], ...] = ()
    skip: str | None = None


IMAGES = "images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)\n"
NO_FIT = "training a full-size detector takes minutes on a CPU (tests/test_*rcnn.py train some)"


def signature_only(function):
    """A stand-in for `function` that checks a call's arguments against its signature and
    runs nothing (for calls too slow to run here). A README `...` argument stands for the
    reader's arguments: the others are then checked as a partial call."""
    signature = inspect.signature(function)

    def check(*args, **kwargs):
        if args and args[0] is Ellipsis:
            signature.bind_partial(**kwargs)  # TypeError if a keyword does not fit
        else:
            signature.bind(*args, **kwargs)

    return check


RUNS = {
    "import keras_dense": Run(),
    "model = keras_dense.apps.fcn8s(num_classes=21)                  # FCN-32s/16s/8s": Run(
        setup="big_image = np.random.default_rng(0).normal(size=(80, 100, 1)).astype(np.float32)",
        replace=(
            (
                "input_shape=(572, 572, 1)",
                "input_shape=(284, 284, 1)",
                "one 572 x 572 tile takes about 10 s on a CPU; 284 is the same U-Net's input for "
                "100 x 100 outputs",
            ),
        ),
    ),
    "detector = keras_dense.apps.fast_rcnn(num_classes=3)            # VGG16 + exact RoI "
    "pooling": Run(
        setup=IMAGES + "proposals = np.array([[[4, 4, 40, 60], [10, 8, 60, 50]]], np.float32)",
        replace=(
            (
                "keras_dense.apps.compress_dense(",
                "signature_only(keras_dense.apps.compress_dense)(",
                "the SVDs of fc6 (25088 x 4096) and fc7 take a minute on a CPU "
                "(tests/test_fast_rcnn.py compresses a small head)",
            ),
            (
                "detector.fit(detection_dataset(...))",
                "signature_only(detector.fit)(signature_only(detection_dataset)(...))",
                NO_FIT,
            ),
        ),
    ),
    "baseline = keras_dense.apps.rcnn(num_classes=3, crop_size=224, context_padding=16)": Run(),
    "from keras_dense.detection import generate_anchors, rpn_loss, rpn_targets": Run(
        setup=textwrap.dedent(
            """
            from keras_dense.data import detection_dataset
            batch = next(iter(detection_dataset(
                "tfrecords/bccd/all-*.tfrecord", batch_size=1, min_size=64, max_size=64)))
            h, w = (int(v) // 16 for v in batch["images"].shape[1:3])
            features = np.zeros((1, h, w, 512), np.float32)
            """
        )
    ),
    'detector = keras_dense.apps.faster_rcnn(num_classes=3, backbone="vgg16")  # or '
    '"resnet50"': Run(
        setup=IMAGES,
        replace=(("detector.fit(detection_dataset(..., max_proposals=0))", "pass", NO_FIT),),
    ),
    'model = keras_dense.apps.mask_rcnn(num_classes=3, backbone="resnet50")   # or "vgg16"': Run(
        setup=IMAGES
        + textwrap.dedent(
            """
            h, w = 64, 64
            image_shape, scale = np.array([[h, w]], np.float32), np.ones(1, np.float32)
            mask = np.zeros((1, h, w), np.uint8)
            mask[0, 10:30, 12:40] = 1
            truths = [{"boxes": np.array([[10, 12, 30, 40]], np.float32),
                       "labels": np.array([1]), "masks": mask}]
            detections = [{"boxes": np.array([[11, 12, 30, 41]], np.float32),
                           "scores": np.array([0.9], np.float32), "labels": np.array([1]),
                           "masks": mask}]
            """
        ),
        replace=(
            (
                "model.fit(detection_dataset(..., instance_masks=True))",
                "signature_only(model.fit)(signature_only(detection_dataset)(..., "
                "instance_masks=True))",
                NO_FIT,
            ),
        ),
    ),
    "import keras": Run(
        # ResNet50 with its classifier takes 224 x 224 images.
        setup=IMAGES.replace("64, 64", "224, 224")
        + "masks = np.zeros((1, 224, 224), np.uint8)\nmasks[0, 20:90, 40:120] = 3",
        replace=(
            (
                "keras.applications.ResNet50()",
                "keras.applications.ResNet50(weights=None)",
                "the ImageNet weights come from the network, which tests never use",
            ),
        ),
    ),
    "from keras_dense.serving import Client": Run(
        skip="needs a TF Serving server at localhost (tests/test_client.py runs Client.predict "
        "against a fake one on free ports)"
    ),
}


def python_blocks() -> list[tuple[int, str]]:
    """`(line number, code)` of every ```python block of the README, in order."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if current is None and line.strip() == "```python":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _first_line(code: str) -> str:
    return code.splitlines()[0].rstrip()


def _imports(code: str) -> str:
    """The import statements of a block (one line each in the README)."""
    lines = [line for line in code.splitlines() if re.match(r"(import|from) \S", line)]
    return "\n".join(lines) + "\n"


def test_every_block_is_listed():
    firsts = [_first_line(code) for _, code in python_blocks()]
    assert firsts, "no ```python block found in the README"
    missing = [line for line in firsts if line not in RUNS]
    assert not missing, f"README blocks without an entry in RUNS (say how they run): {missing}"
    stale = [key for key in RUNS if key not in firsts]
    assert not stale, f"RUNS entries whose block left the README: {stale}"


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """A folder whose `tfrecords/{shapes,voc,bccd,pennfudan}` hold the README's shard names."""
    from keras_dense.data import convert_shapes

    root = tmp_path_factory.mktemp("readme")
    for name, prefix in (("shapes", "train"), ("voc", "train"), ("bccd", "all")):
        convert_shapes(str(root / "tfrecords" / name / prefix), 2, size=64, progress=False)
    convert_shapes(str(root / "tfrecords" / "pennfudan" / "all"), 2, size=64, progress=False)
    return root


@pytest.mark.parametrize("key", list(RUNS))
def test_readme_block_runs(key, data_folder, monkeypatch):
    blocks = python_blocks()
    index = next((i for i, (_, code) in enumerate(blocks) if _first_line(code) == key), None)
    if index is None:
        pytest.fail(f"no README block starts with {key!r} any more")
    line, code = blocks[index]
    run = RUNS[key]
    for old, new, reason in run.replace:
        assert old in code, f"README line {line}: {old!r} ({reason}) is no longer in the block"
        code = code.replace(old, new)
    if run.skip:
        pytest.skip(run.skip)
    monkeypatch.chdir(data_folder)
    namespace: dict = {"signature_only": signature_only}
    exec("import numpy as np\n", namespace)
    exec("".join(_imports(code) for _, code in blocks[:index]), namespace)
    exec(run.setup, namespace)
    try:
        exec(compile(code, f"README.md block at line {line}", "exec"), namespace)
    except Exception as err:
        raise AssertionError(f"README block at line {line} failed: {err!r}") from err


def test_every_module_the_readme_names_is_an_attribute_after_import():
    """`keras_dense.X` works after `import keras_dense`, in a fresh process (pytest's own has
    imported every module already), for every X the README names."""
    names = sorted(set(re.findall(r"\bkeras_dense\.([a-z_]+)", README.read_text())))
    assert {"analysis", "localization"} <= set(names)
    run_python(
        f"""
        import keras_dense
        missing = [n for n in {names!r} if not hasattr(keras_dense, n)]
        assert not missing, f"not reachable after import keras_dense: {{missing}}"
        keras_dense.analysis.receptive_field
        """
    )
