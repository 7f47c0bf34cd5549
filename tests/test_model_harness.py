"""The model harness (tests/model_harness.py) on every public name of keras_dense.apps.

`CASES` has one entry per name of `keras_dense.apps.__all__` (`test_every_public_name_has_a_case`
fails for a new name without one): a tiny instance of each builder, model class and
builder-wrapper, built once per module. `Alias` entries name a model class whose instances
another case builds (`faster_rcnn` builds a `FasterRCNN`). Each case gets: the config round
trip, the safe-mode `.keras` reload in a fresh process (all cases in one process), its task's
output contract, the `mixed_bfloat16` build, export through its task (one case per task) and a
short `fit` with the task's `compile` that lowers the loss. The builders also get the shared
argument checks of `keras_dense.apps.builder` (num_classes, weights, input_shape).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from model_harness import (
    BuiltModels,
    ModelCase,
    build_mixed_bfloat16,
    check_config_round_trip,
    classification_contract,
    export_and_serve,
    fit_losses,
    instance_contract,
    predict_saved_models,
    proposal_detection_contract,
    roi_detection_contract,
    segmentation_contract,
)

from keras_dense import apps
from keras_dense.layers.roi_pooling import RoIPooling

BATCH, HEIGHT, WIDTH = 2, 32, 48
K = 3  # classes of every tiny model (object classes for the detectors)


@dataclasses.dataclass(frozen=True)
class Alias:
    """A model class whose instances the case `of` builds (checked by `isinstance`)."""

    of: str


# ------------------------------------------------------------------------------ inputs


def images(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(BATCH, height, width, 3)).astype(np.float32)


def label_map(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Class 0 on half of the image, 1 on a third, 2 on the rest: unbalanced classes."""
    cols = np.arange(width)[None, :] * 6 // width
    labels = np.where(cols < 3, 0, np.where(cols < 5, 1, 2)) + np.zeros((height, 1), int)
    return np.stack([labels, labels[::-1, ::-1]]).astype(np.int32)


def segmentation_batch(height: int = HEIGHT, width: int = WIDTH, out=None):
    """Images whose channel `c` is raised where the label is `c`: learnable per pixel."""
    labels = label_map(height, width)
    x = images(height, width) * 0.5 + 2.0 * np.eye(3, dtype=np.float32)[labels % 3]
    y = labels if out is None else label_map(*out)
    return x, y


def classification_batch():
    return images(), np.array([[1, 0, 1], [0, 1, 0]], np.float32)


BOXES = np.array([[[4, 6, 20, 30], [12, 20, 30, 46]], [[2, 2, 28, 22], [0, 0, 0, 0]]], np.float32)
LABELS = np.array([[1, 3], [2, 0]], np.int32)
NUM_BOXES = np.array([2, 1], np.int32)
ROIS = np.array([[[4, 6, 20, 30], [0, 0, 16, 16], [8, 8, 31, 47]]] * BATCH, np.float32)


def detection_batch(masks: bool = False) -> dict:
    """A detection_dataset-style batch: two images, up to two boxes, hand-made proposals."""
    x = images()
    for b in range(BATCH):
        for g in range(NUM_BOXES[b]):
            y0, x0, y1, x1 = BOXES[b, g].astype(int)
            x[b, y0:y1, x0:x1, LABELS[b, g] - 1] += 3.0
    batch = {
        "images": x,
        "image_shape": np.array([[HEIGHT, WIDTH]] * BATCH, np.int32),
        "scale": np.ones(BATCH, np.float32),
        "boxes": BOXES,
        "labels": LABELS,
        "num_boxes": NUM_BOXES,
        "difficult": np.zeros((BATCH, 2), bool),
        "proposals": np.concatenate([BOXES + 1.0, ROIS], axis=1),
        "num_proposals": np.array([5, 5], np.int32),
    }
    if masks:
        batch["instance_masks"] = np.zeros((BATCH, 2, HEIGHT, WIDTH), np.uint8)
        for b in range(BATCH):
            for g in range(NUM_BOXES[b]):
                y0, x0, y1, x1 = BOXES[b, g].astype(int)
                batch["instance_masks"][b, g, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = 1
    return batch


def roi_inputs():
    return [images(), ROIS]


def proposal_inputs():
    return [images(), np.array([[HEIGHT, WIDTH]] * BATCH, np.float32), np.ones(BATCH, np.float32)]


# ------------------------------------------------------------------------------ tiny models

# Every anchor (4 x 6 cells x 6 = 144) is a training proposal (no top-n cut, NMS at IoU 1
# suppresses nothing) and every proposal is a training RoI: the sampled set does not jump
# when the weights move, so a few steps' losses are comparable.
FASTER = dict(
    num_classes=K,
    backbone="compact",
    backbone_width=4,
    feature_stride=8,
    rpn_filters=8,
    fc_units=16,
    pool_size=2,
    dropout=0.0,
    anchor_scales=(16, 32),
    anchor_ratios=(0.5, 1, 2),
    train_pre_nms_top_n=200,
    train_post_nms_top_n=200,
    rpn_nms_iou=1.0,
    test_pre_nms_top_n=50,
    test_post_nms_top_n=8,
    min_size=1.0,
    rpn_batch_size_per_image=256,
    rois_per_image=256,
    fg_fraction=0.5,
)
MASK = dict(FASTER, mask_size=4, mask_filters=4, mask_convs=1, max_detections=4)


def tiny_fast_rcnn(fc: bool = False) -> apps.FastRCNN:
    """A FastRCNN on a user graph (the class's own contract): conv, RoI pooling, heads."""
    image = keras.Input((None, None, 3), name="images")
    rois = keras.Input((None, 4), name="rois")
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="conv")(image)
    x = RoIPooling(2, 0.25, name="roi_pool")([x, rois])
    x = keras.layers.Reshape((-1, 16), name="flatten")(x)
    if fc:
        x = keras.layers.Dense(8, activation="relu", name="fc")(x)
    cls = keras.layers.Dense(K + 1, name="cls_score")(x)
    bbox = keras.layers.Dense(4 * (K + 1), name="bbox_pred")(x)
    return apps.FastRCNN(inputs=[image, rois], outputs=[cls, bbox], rois_per_image=8)


def tiny_unet(**kwargs) -> keras.Model:
    return apps.unet(K, input_shape=(None, None, 3), padding="same", filters=2, depth=2, **kwargs)


def tiny_classifier() -> keras.Model:
    """A Flatten/Dense classifier of 8 x 8 images, the chain `convolutionalize` takes."""
    x = image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc1")(x)
    return keras.Model(image, keras.layers.Dense(K, name="fc2")(x), name="tiny_classifier")


def heatmap_contract(model, inputs, outputs, float_dtype="float32"):
    """The convolutionalized classifier: a (B, H/2 - 3, W/2 - 3, K) map of class scores."""
    out = np.asarray(keras.ops.convert_to_numpy(outputs))
    b, h, w = inputs.shape[:3]
    assert out.shape == (b, h // 2 - 3, w // 2 - 3, K), out.shape
    assert str(out.dtype) == float_dtype and np.all(np.isfinite(out.astype(np.float32)))


# What the cases of one task share.
SEGMENTATION = dict(
    task="segmentation",
    inputs=images,
    contract=segmentation_contract(K),
    batch=segmentation_batch,
)
ROI_DETECTION = dict(
    task="detection",
    inputs=roi_inputs,
    contract=roi_detection_contract(K),
    batch=detection_batch,
    mixed_dtype="bfloat16",
)


def segmentation_case(build, **kwargs) -> ModelCase:
    return ModelCase(build=build, **{**SEGMENTATION, **kwargs})


def roi_detection_case(build, **kwargs) -> ModelCase:
    return ModelCase(build=build, **{**ROI_DETECTION, **kwargs})


# The FCNs keep VGG16's 4096-wide fc6/fc7 (134 M parameters, a 537 MB .keras file): SGD, no
# Adam slots. FCN-16s and FCN-32s use a subset of FCN-8s's layers (the same classes, fewer
# skips): the fresh-process reload and the fit run on FCN-8s only, to keep CI time.
FCN_FIT = dict(optimizer="sgd", learning_rate=0.01, fit_steps=3)
FCN_SUBSET = dict(FCN_FIT, keras_file=False, fit=False)

CASES: dict[str, ModelCase | Alias] = {
    "fcn8s": segmentation_case(lambda: apps.fcn8s(K), **FCN_FIT),
    "fcn16s": segmentation_case(lambda: apps.fcn16s(K), **FCN_SUBSET),
    "fcn32s": segmentation_case(lambda: apps.fcn32s(K), **FCN_SUBSET),
    "deeplab": segmentation_case(lambda: apps.deeplab(K, backbone="mobilenetv2")),
    # DeepLab v1 / v2 on VGG16 with an 8-wide head (the trunk's 14.7 M parameters stay): v2
    # adds only summed branches of v1's layer kinds, so it skips the reload and the fit.
    "deeplab_v1": segmentation_case(lambda: apps.deeplab_v1(K, fc_filters=8), **FCN_FIT),
    "deeplab_v2": segmentation_case(
        lambda: apps.deeplab_v2(K, atrous_rates=(2, 4), fc_filters=8), **FCN_SUBSET
    ),
    "pspnet": segmentation_case(lambda: apps.pspnet(K, backbone="compact", output_stride=4)),
    "deconvnet": segmentation_case(
        lambda: apps.deconvnet(K, input_shape=(None, None, 3), fc_padding="same", fc_filters=8)
    ),
    "unet": segmentation_case(tiny_unet, export=True),
    "wsl_classifier": ModelCase(
        build=lambda: apps.wsl_classifier(K, backbone="compact", width=4, pooling="lse"),
        task="classification",
        inputs=images,
        contract=classification_contract(K),
        batch=classification_batch,
        export=True,
        mixed_dtype="bfloat16",
    ),
    "fast_rcnn": roi_detection_case(
        lambda: apps.fast_rcnn(K, pool_size=2, dropout=0.0, rois_per_image=8),
        learning_rate=1e-4,
    ),
    "rcnn": roi_detection_case(
        lambda: apps.rcnn(
            K,
            crop_size=32,
            context_padding=4,
            roi_chunk=None,
            fc_units=16,
            dropout=0.0,
            rois_per_image=8,
        )
    ),
    "FastRCNN": roi_detection_case(tiny_fast_rcnn, kind="class", export=True),
    "faster_rcnn": ModelCase(
        build=lambda: apps.faster_rcnn(**FASTER),
        task="detection",
        inputs=proposal_inputs,
        contract=proposal_detection_contract(K, FASTER["test_post_nms_top_n"]),
        batch=detection_batch,
        mixed_dtype="bfloat16",
        learning_rate=3e-3,
    ),
    "FasterRCNN": Alias("faster_rcnn"),
    "mask_rcnn": ModelCase(
        build=lambda: apps.mask_rcnn(**MASK),
        task="instance_segmentation",
        inputs=proposal_inputs,
        contract=instance_contract(K, MASK["test_post_nms_top_n"], 4, 4),
        batch=lambda: detection_batch(masks=True),
        export=True,
        mixed_dtype="bfloat16",
        learning_rate=3e-3,
    ),
    "MaskRCNN": Alias("mask_rcnn"),
    "with_crf": segmentation_case(
        lambda: apps.with_crf(tiny_unet(), num_iterations=2), kind="wrapper"
    ),
    "convolutionalize": ModelCase(
        build=lambda: apps.convolutionalize(tiny_classifier()),
        task="segmentation",
        inputs=lambda: images(16, 24),
        contract=heatmap_contract,
        batch=lambda: segmentation_batch(16, 24, out=(5, 9)),
        kind="wrapper",
    ),
    "compress_dense": roi_detection_case(
        lambda: apps.compress_dense(tiny_fast_rcnn(fc=True), {"fc": 2}), kind="wrapper"
    ),
}
MODEL_CASES = {name: case for name, case in CASES.items() if isinstance(case, ModelCase)}
BUILDERS = [name for name, case in MODEL_CASES.items() if case.kind == "builder"]


@pytest.fixture(scope="module")
def built():
    """`built(name)`: the case's model, built once per module, freed after its last check."""
    return BuiltModels(MODEL_CASES)


@pytest.fixture(scope="module")
def reloaded(built, tmp_path_factory):
    """Every case saved as .keras and reloaded in ONE fresh process: `{name: (want, got)}`."""
    folder = tmp_path_factory.mktemp("harness_keras")
    entries = {}
    for name, case in MODEL_CASES.items():
        if not case.keras_file:
            continue
        try:
            entries[name] = (built(name), case.inputs())
        except Exception:  # reported by the case's own test
            continue
    return predict_saved_models(entries, folder)


def test_every_public_name_has_a_case():
    missing = sorted(set(apps.__all__) - set(CASES))
    assert not missing, f"keras_dense.apps.__all__ names without a harness case: {missing}"
    assert not sorted(set(CASES) - set(apps.__all__)), "cases for names apps does not export"
    tasks = {case.task for case in MODEL_CASES.values() if case.export}
    assert tasks == {case.task for case in MODEL_CASES.values()}, "export: one case per task"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if isinstance(c, Alias)])
def test_model_classes_are_what_their_builders_build(name, built):
    model = built(CASES[name].of)
    assert type(model) is getattr(apps, name)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("num_classes", [True, 0, -1, 2.0, "3"])
def test_every_builder_checks_num_classes(name, num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        getattr(apps, name)(num_classes=num_classes)


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_checks_weights_and_input_shape(name, tmp_path):
    builder = getattr(apps, name)
    with pytest.raises(FileNotFoundError, match="weights"):
        builder(weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="input_shape"):
        builder(input_shape=(None, None))


@pytest.mark.parametrize("name", MODEL_CASES)
def test_config_round_trip(name, built):
    case = MODEL_CASES[name]
    check_config_round_trip(built(name), case.inputs(), case.atol)


@pytest.mark.parametrize("name", [n for n, c in MODEL_CASES.items() if c.keras_file])
def test_keras_file_loads_in_safe_mode_in_a_fresh_process(name, built, reloaded):
    want, got = reloaded[name]
    assert isinstance(got, dict), f"{name}: the fresh process failed:\n{got}"
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=MODEL_CASES[name].atol, err_msg=key)


@pytest.mark.parametrize("name", MODEL_CASES)
def test_output_contract(name, built):
    case = MODEL_CASES[name]
    model, inputs = built(name), case.inputs()
    case.contract(model, inputs, model(inputs, training=False))
    built.done(name, "contract")


@pytest.mark.parametrize("name", MODEL_CASES)
def test_mixed_bfloat16(name):
    case = MODEL_CASES[name]
    before = keras.config.dtype_policy().name
    keras.utils.set_random_seed(0)
    model = build_mixed_bfloat16(case)
    assert keras.config.dtype_policy().name == before
    inputs = case.inputs()
    case.contract(model, inputs, model(inputs, training=False), float_dtype=case.mixed_dtype)
    assert all(v.dtype == "float32" for v in model.weights if "float" in str(v.dtype))


@pytest.mark.parametrize("name", [n for n, c in MODEL_CASES.items() if c.export])
def test_export_through_the_task(name, built, tmp_path):
    served, want = export_and_serve(built(name), MODEL_CASES[name], str(tmp_path))
    assert want, f"serving_tensor serves none of the model's outputs: {sorted(served)}"
    for key, value in want.items():
        np.testing.assert_allclose(served[key], value, atol=1e-4, err_msg=key)
    built.done(name, "export")


# Last: fit changes the shared models' weights (and compiles them).
@pytest.mark.parametrize("name", [n for n, c in MODEL_CASES.items() if c.fit])
def test_fit_lowers_the_loss(name, built):
    losses = fit_losses(built(name), MODEL_CASES[name])
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    built.done(name, "fit")
