"""Mask R-CNN: the in-graph detections and masks against their parts, the mask loss's wiring
against NumPy targets, fit lowering each of the five losses, .keras in a fresh process, export
with the op audit, and COCO / VOC evaluation of an oracle."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.apps import MaskRCNN, mask_rcnn
from keras_dense.data import convert_shapes, read_examples
from keras_dense.detection import mask_targets, paste_masks, postprocess_detections
from keras_dense.evaluation.instance_evaluation import evaluate_instances
from keras_dense.export import audit_saved_model, export_saved_model
from keras_dense.prediction.inference import fast_rcnn_resize
from keras_dense.prediction.instances import segment_instances
from keras_dense.utils.normalization import normalize

from export_test_utils import decode_rgb, encode, make_image
from helpers import run_python
from mask_reference import crop_mask
from mask_reference import mask_loss as reference_mask_loss

HEIGHT, WIDTH = 64, 96
NUM_CLASSES = 2
SMALL = dict(
    fc_units=32,
    rpn_filters=32,
    anchor_scales=(24, 48),
    rois_per_image=32,
    train_pre_nms_top_n=300,
    train_post_nms_top_n=64,
    test_pre_nms_top_n=150,
    test_post_nms_top_n=32,
    min_size=4,
    mask_filters=16,
    max_detections=8,
    score_threshold=0.0,
)


def tiny_backbone() -> keras.Model:
    """Two strided convolutions: stride 16, 32 channels."""
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 5, strides=4, padding="same", activation="relu")(images)
    x = keras.layers.Conv2D(32, 3, strides=4, padding="same", activation="relu")(x)
    return keras.Model(images, x, name="tiny_backbone")


def small_model(**kwargs) -> MaskRCNN:
    keras.utils.set_random_seed(kwargs.pop("seed", 0))
    options = {**SMALL, "backbone": tiny_backbone(), **kwargs}
    return mask_rcnn(num_classes=NUM_CLASSES, **options)


def ellipse(cy, cx, ry, rx) -> np.ndarray:
    rows, cols = np.mgrid[:HEIGHT, :WIDTH] + 0.5
    return (((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def synthetic_batch() -> dict:
    """2 images: bright ellipses (class 1) and rectangles (class 2) with their masks."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 10, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    masks = np.zeros((2, 3, HEIGHT, WIDTH), np.uint8)
    masks[0, 0] = ellipse(20, 24, 14, 18)
    masks[0, 1, 34:60, 50:90] = 1
    masks[1, 0] = ellipse(36, 60, 20, 26)
    labels = np.array([[1, 2, 0], [1, 0, 0]], np.int32)
    boxes = np.zeros((2, 3, 4), np.float32)
    for b, g in ((0, 0), (0, 1), (1, 0)):
        ys, xs = np.nonzero(masks[b, g])
        boxes[b, g] = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        images[b][masks[b, g] > 0, labels[b, g] - 1] += 100.0
    return {
        "images": images,
        "image_shape": np.array([[HEIGHT, WIDTH]] * 2, np.int32),
        "scale": np.ones(2, np.float32),
        "boxes": boxes,
        "labels": labels,
        "num_boxes": np.array([2, 1], np.int32),
        "difficult": np.zeros((2, 3), bool),
        "instance_masks": masks,
    }


@pytest.fixture(scope="module")
def model():
    return small_model()


def model_inputs(batch):
    return [
        batch["images"],
        batch["image_shape"].astype(np.float32),
        batch["scale"],
    ]


def test_in_graph_detections_and_masks_match_their_parts(model):
    batch = synthetic_batch()
    out = model(model_inputs(batch), training=False)
    assert out["detection_masks"].shape == (2, 8, 28, 28)
    want = postprocess_detections(
        out["cls_score"],
        out["bbox_pred"],
        out["proposals"],
        batch["image_shape"],
        num_proposals=out["num_proposals"],
        score_threshold=0.0,
        nms_iou=0.5,
        max_detections=8,
    )
    np.testing.assert_allclose(out["detection_boxes"], want["boxes"], atol=1e-4)
    np.testing.assert_array_equal(out["detection_classes"], want["classes"])
    np.testing.assert_array_equal(out["num_detections"], want["num_detections"])
    # The masks: the mask head on the detected boxes, the sigmoid of each class's channel.
    features = model.get_layer("backbone")(batch["images"])
    logits = np.asarray(model.get_layer("mask_head")([features, out["detection_boxes"]]))
    masks = np.asarray(out["detection_masks"])
    classes = np.asarray(out["detection_classes"])
    assert int(np.min(out["num_detections"])) > 0
    for b in range(2):
        for d in range(8):
            k = classes[b, d]
            expected = 0.0 if k == 0 else 1 / (1 + np.exp(-logits[b, d, ..., k - 1]))
            np.testing.assert_allclose(masks[b, d], expected, atol=1e-5)


def test_mask_loss_crops_the_matched_instance_into_each_foreground_roi(model):
    batch = synthetic_batch()
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    rpn = model.run_rpn(tensors, training=False)
    proposals, _, count = model.train_proposals(tensors, rpn)
    targets = model.sample_targets(tensors, proposals, count, seed=(1, 2))
    terms = model.head_losses(tensors, rpn, targets, training=False)
    slots = model.foreground_slots()
    labels = targets["labels"].numpy()[:, :slots]
    rois = targets["rois"].numpy()[:, :slots]
    index = targets["matched_gt"].numpy()[:, :slots]
    assert (labels > 0).sum() >= 3 and (targets["labels"].numpy()[:, slots:] <= 0).all()
    wanted = np.zeros((*labels.shape, 28, 28))
    for b in range(2):
        for r in range(slots):
            if labels[b, r] > 0:
                assert labels[b, r] == batch["labels"][b, index[b, r]]
                wanted[b, r] = crop_mask(batch["instance_masks"][b, index[b, r]], rois[b, r], 28)
    logits = np.asarray(model.get_layer("mask_head")([rpn["features"], tf.constant(rois)]))
    expected = reference_mask_loss(labels, wanted, logits)
    np.testing.assert_allclose(float(terms["mask_loss"]), expected, rtol=1e-3)


def test_fit_lowers_each_of_the_five_losses():
    # A two-conv backbone (the builder takes any stride-16 model) keeps 60 steps cheap.
    model = small_model(seed=3, dropout=0.0)
    batch = synthetic_batch()
    batch["images"] /= 50.0
    tensors = {k: tf.constant(v) for k, v in batch.items()}

    rpn = model.run_rpn(tensors, training=False)
    proposals, _, count = model.train_proposals(tensors, rpn)
    rois = model.sample_targets(tensors, proposals, count, seed=(3, 4))  # fixed from now on

    def fixed_losses():
        """The five terms with fixed anchor sampling, fixed RoIs and no dropout."""
        rpn = model.run_rpn(tensors, training=False)
        terms = model.rpn_losses(tensors, rpn, seed=(3, 4))
        terms.update(model.head_losses(tensors, rpn, rois, training=False))
        return {name: float(terms[name]) for name in model.loss_names}

    before = fixed_losses()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    history = model.fit(data, steps_per_epoch=10, epochs=5, verbose=0).history
    after = fixed_losses()
    assert set(history) == {"loss", *model.loss_names}
    for name in model.loss_names:  # box regression learns slowest (about -15 % here)
        factor = 0.95 if name == "box_loss" else 0.7
        assert after[name] < factor * before[name], (name, before, after)
    # Mean of each term over the first 10 steps vs the last 10 (the same batch, repeated);
    # the box term is left out: its foreground RoIs change with the proposals (few at first,
    # many once the RPN learns), which raises its mean before it falls.
    for name in ("loss", "rpn_cls_loss", "rpn_box_loss", "cls_loss", "mask_loss"):
        assert history[name][-1] < history[name][0], (name, history[name])


def test_export_serves_pasted_masks_and_passes_the_op_audit(model, tmp_path):
    card = {"task": "instance_segmentation", "min_size": 64, "max_size": 96}
    # The export's default max_detections (100) differs from the graph's 8: the graph's holds.
    options = dict(score_threshold=0.0, nms_iou=0.5)
    result = export_saved_model(model, tmp_path, name="mrcnn", card=card, **options)
    audit_saved_model(result.path)  # also done by the export; stock ops only
    loaded = tf.saved_model.load(str(result.path))
    serve = loaded.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"image_bytes"}
    images = [make_image(64, 80, 21), make_image(96, 64, 22)]  # resized by 1 and by 2/3
    got = serve(image_bytes=tf.constant([encode(im, "png") for im in images]))
    assert got["detection_masks"].shape == (2, 8, 96, 80)
    np.testing.assert_array_equal(got["image_sizes"], [[64, 80], [96, 64]])
    full_card = {"min_size": 64, "max_size": 96, "normalization": "caffe"}
    for i, image in enumerate(images):
        ref = segment_instances(model, decode_rgb(encode(image, "png")), full_card, 0.0)
        count = len(ref["scores"])
        assert count > 0 and int(got["num_detections"][i]) == count
        np.testing.assert_allclose(got["detection_scores"][i, :count], ref["scores"], atol=1e-3)
        np.testing.assert_allclose(got["detection_boxes"][i, :count], ref["boxes"], atol=0.05)
        h, w = image.shape[:2]
        masks = got["detection_masks"].numpy()[i, :count]
        agree = np.mean(masks[:, :h, :w].astype(bool) == ref["masks"])
        assert agree > 0.999 and not masks[:, h:, :].any() and not masks[:, :, w:].any()


class OracleModel:
    """Answers with the ground truth of the records it is shown (in the model's pixels)."""

    def __init__(self, examples: dict):
        self.examples = examples  # image bytes -> (boxes in pixels, labels, masks)

    def __call__(self, inputs, training=False):
        images, shape, scale = inputs
        key = int(np.round(np.asarray(images).sum()))
        boxes, labels, masks = self.examples[key]
        factor = float(shape[0][0]) / masks.shape[1]
        count = len(labels)
        grids = mask_targets(masks[None], np.arange(count)[None], boxes[None], 28, None)
        return {
            "detection_boxes": tf.constant(boxes[None] * factor),
            "detection_scores": tf.ones((1, count)),
            "detection_classes": tf.constant(labels[None]),
            "num_detections": tf.constant([count]),
            "detection_masks": grids,
        }


def test_evaluation_of_an_oracle_gives_full_box_ap_and_high_mask_ap(tmp_path):
    convert_shapes(str(tmp_path / "val"), 6, size=48, seed=2, progress=False)
    manifest = json.loads((tmp_path / "val.json").read_text())
    card = {"classes": manifest["classes"][1:], "min_size": 96, "max_size": 96}
    card["ignore_label"] = manifest["ignore_label"]
    card["normalization"] = "caffe"
    examples = {}
    pattern = str(tmp_path / "val-*.tfrecord")
    for example in read_examples(pattern):
        resized, _ = fast_rcnn_resize(example["image"], 96, 96)
        key = int(np.round(np.asarray(normalize(resized, "caffe"), np.float32).sum()))
        boxes = (example["boxes"] * 48).astype(np.float32)
        examples[key] = (boxes, example["labels"].astype(np.int32), example["instance_masks"])
    report = evaluate_instances(OracleModel(examples), card, pattern)
    assert report["images"] == 6
    assert report["box_ap"] == pytest.approx(1.0) and report["voc_map"] == pytest.approx(1.0)
    assert report["mask_ap50"] == pytest.approx(1.0)
    assert 0.95 < report["mask_ap"] <= 1.0  # the crop / paste round trip loses little


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_paper_backbones_build_with_the_papers_mask_branch(backbone):
    model = mask_rcnn(3, backbone=backbone, fc_units=16, test_post_nms_top_n=16, max_detections=4)
    out = model.compute_output_spec(
        [keras.KerasTensor((1, 64, 64, 3)), keras.KerasTensor((1, 2)), keras.KerasTensor((1,))]
    )
    assert out["detection_masks"].shape == (1, 4, 28, 28)
    head = model.get_layer("mask_head")
    align = head.get_layer("mask_roi_align")
    assert align.mode == "align" and align.pool_size == (14, 14)
    branch = head.get_layer("mask_branch")
    assert (branch.filters, branch.num_convs, branch.num_classes) == (256, 4, 3)


def test_compact_stride_8_model_aligns_masks_at_its_stride_and_reloads_safely(tmp_path):
    model = small_model(backbone="compact", backbone_width=8, feature_stride=8)
    align = model.get_layer("mask_head").get_layer("mask_roi_align")
    assert align.spatial_scale == 1.0 / 8
    assert model.get_layer("roi_head").get_layer("roi_pool5").spatial_scale == 1.0 / 8
    batch = synthetic_batch()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    bn = model.get_layer("backbone").get_layer("compact1_down_bn")
    assert not np.any(np.asarray(bn.moving_mean))
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0)
    # The training step runs the trunk's batch norm in training mode: its statistics move.
    assert np.all(np.asarray(bn.moving_mean) != 0)
    path = tmp_path / "compact.keras"
    model.save(path)
    np.savez(tmp_path / "inputs.npz", *model_inputs(batch))
    expected = model(model_inputs(batch), training=False)
    run_python(
        f"""
        import numpy as np, keras, keras_dense
        model = keras.models.load_model({str(path)!r}, safe_mode=True)
        assert model.get_layer("proposal_layer").stride == 8
        data = np.load({str(tmp_path / "inputs.npz")!r})
        out = model([data[f"arr_{{i}}"] for i in range(3)], training=False)
        np.savez({str(tmp_path / "out.npz")!r}, **{{k: np.asarray(v) for k, v in out.items()}})
        """
    )
    got = np.load(tmp_path / "out.npz")
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        np.testing.assert_allclose(got[key], np.asarray(expected[key]), atol=1e-5, err_msg=key)


def test_bad_arguments_and_batches(model):
    with pytest.raises(ValueError, match="mask_size"):
        mask_rcnn(mask_size=27)
    with pytest.raises(ValueError, match="num_classes"):
        mask_rcnn(num_classes=0)
    batch = synthetic_batch()
    del batch["instance_masks"]
    with pytest.raises(ValueError, match="instance_masks"):
        model.check_batch(batch)
    pasted = paste_masks(np.ones((1, 1, 28, 28), np.float32), [[[0, 0, 10, 10]]], (12, 12))
    assert np.asarray(pasted).shape == (1, 1, 12, 12)


def test_task_predict_draws_each_instance_and_writes_ids_and_json(model):
    from keras_dense.tasks import PredictOptions, get_task

    task = get_task("instance_segmentation")
    assert "mask_rcnn" in task.builders
    card = {"classes": ["a", "b"], "min_size": 64, "max_size": 96, "normalization": "caffe"}
    rgb = make_image(64, 80, 5)
    files = task.predict_image(model, card, rgb, PredictOptions(score_threshold=0.0), "whole")
    assert set(files) == {"_instances.png", "_instance_ids.png", "_instances.json"}
    found = segment_instances(model, rgb, card, 0.0)
    listed = json.loads(files["_instances.json"])
    assert len(listed) == len(found["scores"]) > 0
    assert [d["mask_pixels"] for d in listed] == [int(m.sum()) for m in found["masks"]]
    ids = cv2.imdecode(np.frombuffer(files["_instance_ids.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    want = np.zeros(rgb.shape[:2], np.uint16)
    for index, mask in enumerate(found["masks"]):
        want[mask] = index + 1
    np.testing.assert_array_equal(ids, want)
    drawn = decode_rgb(files["_instances.png"])
    assert drawn.shape == rgb.shape and not np.array_equal(drawn, rgb)
