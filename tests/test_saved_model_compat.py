"""`.keras` files saved before issue 19's refactor still load, and compute the same outputs.

The package as it was at `OLD_COMMIT` (before the backbone registry, the typed configs and the
shared two-stage detector) is extracted with `git archive` into a temporary folder. One
process that imports that copy (PYTHONPATH, nothing of this checkout) builds a tiny instance of
every builder of the time, saves it as `.keras` and writes its outputs on fixed inputs. Each
file is then loaded by the current code (`safe_mode=True`) and must give those outputs.

Skipped when this is not a git checkout or the commit is not in its history (CI clones with
history).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile

import keras
import numpy as np
import pytest

import keras_dense  # noqa: F401  (registers every keras_dense object)

from helpers import REPO_ROOT, flat_outputs, run_python

# The last commit before the refactor: backbones/ has its contract, no builder uses it yet.
OLD_COMMIT = "6dee29d"

# name -> builder call, in the old package's API. Tiny sizes; weights=None throughout.
OLD_MODELS = {
    "deeplab_resnet50": "apps.deeplab(3, backbone='resnet50')",
    "deeplab_mobilenetv2": "apps.deeplab(3, backbone='mobilenetv2', decoder=False)",
    "deeplab_xception": "apps.deeplab(3, backbone='xception', output_stride=8)",
    "fcn8s": "apps.fcn8s(3)",
    "deconvnet": (
        "apps.deconvnet(3, input_shape=(None, None, 3), fc_padding='same', fc_filters=8)"
    ),
    "unet": "apps.unet(3, input_shape=(None, None, 3), padding='same', filters=2, depth=2)",
    "unet_crf": (
        "apps.unet(3, input_shape=(None, None, 3), padding='same', filters=2, depth=2, crf=True)"
    ),
    "wsl_vgg16": "apps.wsl_classifier(3, backbone='vgg16', output_stride=8)",
    "wsl_compact": "apps.wsl_classifier(3, backbone='compact', width=4, pooling='wildcat')",
    "fast_rcnn": "apps.fast_rcnn(3, pool_size=2, rois_per_image=8)",
    "rcnn": "apps.rcnn(3, crop_size=32, context_padding=4, roi_chunk=None, fc_units=16)",
    "faster_rcnn_compact": "apps.faster_rcnn(backbone='compact', backbone_width=4, **DETECTOR)",
    "faster_rcnn_vgg16": "apps.faster_rcnn(backbone='vgg16', **DETECTOR)",
    "mask_rcnn_compact": (
        "apps.mask_rcnn(backbone='compact', backbone_width=4, mask_size=4, mask_filters=4, "
        "mask_convs=1, max_detections=4, **DETECTOR)"
    ),
}
ROI_MODELS = ("fast_rcnn", "rcnn")
PROPOSAL_MODELS = ("faster_rcnn_compact", "faster_rcnn_vgg16", "mask_rcnn_compact")

# Run with the old package: builds, saves and predicts every model of OLD_MODELS.
_SAVE_OLD_MODELS = """
import pathlib, sys
sys.path = [p for p in sys.path if p not in ("", ".")]  # the old copy, not the checkout
import numpy as np, keras
import keras_dense
from keras_dense import apps

sys.path.insert(0, {tests!r})
from helpers import flat_outputs

folder = pathlib.Path({folder!r})
assert pathlib.Path(keras_dense.__file__).is_relative_to(folder), keras_dense.__file__
DETECTOR = dict(
    num_classes=3, fc_units=16, rpn_filters=8, pool_size=2, anchor_scales=(16, 32),
    test_pre_nms_top_n=50, test_post_nms_top_n=8, min_size=1.0,
)
rng = np.random.default_rng(0)
images = rng.normal(size=(2, 32, 48, 3)).astype(np.float32)
rois = np.array([[[4, 6, 20, 30], [0, 0, 16, 16], [8, 8, 31, 47]]] * 2, np.float32)
shape = np.array([[32, 48]] * 2, np.float32)
scale = np.ones(2, np.float32)
for index, (name, call) in enumerate({models!r}.items()):
    keras.utils.set_random_seed(index)
    model = eval(call)
    if name in {roi!r}:
        inputs = [images, rois]
    elif name in {proposal!r}:
        inputs = [images, shape, scale]
    else:
        inputs = [images]
    model.save(folder / f"{{name}}.keras")
    np.savez(folder / f"{{name}}.inputs.npz", *inputs)
    out = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    np.savez(folder / f"{{name}}.want.npz", **flat_outputs(out))
    print(name, type(model).__name__, flush=True)
"""


def _extract_old_package(folder) -> None:
    """`git archive OLD_COMMIT keras_dense` extracted into `folder`, or a skip."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip(f"{REPO_ROOT} is not a git checkout: cannot extract commit {OLD_COMMIT}")
    found = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout's history (a shallow clone?)")
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", OLD_COMMIT, "keras_dense"],
        capture_output=True,
        check=True,
    )
    # The "data" filter where tarfile has it (Python 3.9.17+); the archive is our own history.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, **safe)


@pytest.fixture(scope="module")
def old_files(tmp_path_factory):
    """The folder of the `.keras` files, inputs and outputs written by the old package."""
    folder = tmp_path_factory.mktemp("old_keras_dense")
    _extract_old_package(folder)
    script = _SAVE_OLD_MODELS.format(
        tests=str(REPO_ROOT / "tests"),
        folder=str(folder),
        models=OLD_MODELS,
        roi=ROI_MODELS,
        proposal=PROPOSAL_MODELS,
    )
    printed = run_python(script, timeout=600, pythonpath=folder)
    saved = dict(line.split() for line in printed.splitlines() if line.strip())
    assert sorted(saved) == sorted(OLD_MODELS), printed
    return folder


@pytest.mark.parametrize("name", OLD_MODELS)
def test_keras_file_saved_before_the_refactor_loads_with_the_same_outputs(name, old_files):
    model = keras.models.load_model(old_files / f"{name}.keras", safe_mode=True)
    with np.load(old_files / f"{name}.inputs.npz") as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    got = flat_outputs(model(arrays if len(arrays) > 1 else arrays[0], training=False))
    with np.load(old_files / f"{name}.want.npz") as data:
        want = {key: data[key] for key in data.files}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].shape == value.shape, (key, got[key].shape, value.shape)
        scale = max(1.0, float(np.max(np.abs(value)))) if value.size else 1.0
        np.testing.assert_allclose(got[key], value, atol=1e-4 * scale, err_msg=key)
