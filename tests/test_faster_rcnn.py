"""Faster R-CNN: graph wiring against brute-force proposals, fit lowers each of the four
losses, detect without proposals, .keras round trip in a fresh process, export + op audit."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.apps import FasterRCNN, fast_rcnn, faster_rcnn
from keras_dense.detection import detect, generate_anchors
from keras_dense.export import audit_saved_model, export_saved_model
from keras_dense.layers import ProposalLayer, RoIPooling

from detection_reference import inclusive_iou, reference_proposals
from export_test_utils import decode_rgb, encode, make_image, normalize_np
from helpers import run_python, tiny_faster_rcnn_recipe

HEIGHT, WIDTH = 96, 128
NUM_CLASSES = 2
# Small heads and proposal counts for speed; the VGG16 trunk is the paper's.
SMALL = dict(
    fc_units=32,
    rpn_filters=32,
    anchor_scales=(32, 64),
    rois_per_image=32,
    train_pre_nms_top_n=400,
    train_post_nms_top_n=100,
    test_pre_nms_top_n=200,
    test_post_nms_top_n=40,
    min_size=8,
)


def small_model(**kwargs) -> FasterRCNN:
    keras.utils.set_random_seed(kwargs.pop("seed", 0))
    return faster_rcnn(num_classes=NUM_CLASSES, **{**SMALL, **kwargs})


def synthetic_batch(rng) -> dict:
    """A 2-image detection_dataset-style batch: bright boxes on noise, no proposals."""
    images = rng.normal(0, 20, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    boxes = np.zeros((2, 4, 4), np.float32)
    labels = np.zeros((2, 4), np.int32)
    num_boxes = np.array([2, 1], np.int32)
    for b in range(2):
        for g in range(num_boxes[b]):
            y0, x0 = rng.uniform(0, 40), rng.uniform(0, 60)
            box = [y0, x0, min(y0 + rng.uniform(36, 52), HEIGHT - 1), min(x0 + 56, WIDTH - 1)]
            boxes[b, g], labels[b, g] = box, g + 1
            images[b, int(box[0]) : int(box[2]), int(box[1]) : int(box[3]), g] += 120.0
    return {
        "images": images,
        "image_shape": np.array([[HEIGHT, WIDTH]] * 2, np.int32),
        "scale": np.ones(2, np.float32),
        "boxes": boxes,
        "labels": labels,
        "difficult": np.zeros((2, 4), bool),
        "num_boxes": num_boxes,
        "proposals": np.zeros((2, 0, 4), np.float32),
        "num_proposals": np.zeros(2, np.int32),
    }


def tiny_backbone() -> keras.Model:
    """Two strided convolutions: stride 16, 32 channels."""
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 5, strides=4, padding="same", activation="relu")(images)
    x = keras.layers.Conv2D(32, 3, strides=4, padding="same", activation="relu")(x)
    return keras.Model(images, x, name="tiny_backbone")


@pytest.fixture(scope="module")
def model():
    return small_model()


def sort_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(np.round(boxes, 2).T[::-1])]


def test_outputs_parts_and_proposals_against_brute_force(model):
    rng = np.random.default_rng(0)
    images = rng.normal(0, 30, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    # The second image is padded: valid size 80 x 100, resized by 1.5 (min_size 12 px).
    shape = np.array([[HEIGHT, WIDTH], [80, 100]], np.float32)
    scale = np.array([1.0, 1.5], np.float32)
    out = model([images, shape, scale], training=False)
    n = SMALL["test_post_nms_top_n"]
    assert out["cls_score"].shape == (2, n, NUM_CLASSES + 1)
    assert out["bbox_pred"].shape == (2, n, 4 * (NUM_CLASSES + 1))
    assert out["proposals"].shape == (2, n, 4) and out["num_proposals"].shape == (2,)
    assert model.num_classes == NUM_CLASSES
    # From scratch nothing is frozen (the paper freezes pretrained conv1 / conv2 only).
    assert [layer.name for layer in model.layers if layer.weights and not layer.trainable] == []
    assert all(layer.trainable for layer in model.get_layer("backbone").layers)
    roi = model.get_layer("roi_head").get_layer("roi_pool5")
    assert isinstance(roi, RoIPooling) and roi.spatial_scale == 1 / 16
    assert isinstance(model.get_layer("proposal_layer"), ProposalLayer)

    # The model's proposals are the brute-force proposals of its own RPN outputs.
    features = model.get_layer("backbone")(images)
    objectness, deltas = model.get_layer("rpn")(features)
    fh, fw = features.shape[1:3]
    anchors = generate_anchors(fh, fw, 16, (32, 64)).numpy()
    for b in range(2):
        want, want_scores = reference_proposals(
            objectness[b].numpy().reshape(-1),
            deltas[b].numpy().reshape(-1, 4),
            anchors,
            shape[b].astype(int),
            scale[b],
            pre=SMALL["test_pre_nms_top_n"],
            post=n,
            nms=0.7,
            min_size=SMALL["min_size"],
        )
        count = int(out["num_proposals"][b])
        assert count == len(want) > 0
        # Near-tied scores (float32 here, float64 there) may swap neighbours: compare sets.
        got = out["proposals"][b, :count].numpy()
        np.testing.assert_allclose(sort_rows(got), sort_rows(want), atol=1e-3)
        np.testing.assert_allclose(out["proposal_scores"][b, :count], want_scores, atol=1e-5)
        assert not np.any(out["proposals"][b, count:])
    # The head scores exactly those proposals.
    cls_score, bbox_pred = model.get_layer("roi_head")([features, out["proposals"]])
    np.testing.assert_allclose(cls_score, out["cls_score"], atol=1e-5)
    np.testing.assert_allclose(bbox_pred, out["bbox_pred"], atol=1e-5)


def fixed_losses(model, batch) -> dict:
    """The four terms with fixed anchor / RoI sampling and no dropout."""
    terms = model.compute_losses(batch, training=False, seed=(5, 6))
    return {name: float(terms[name]) for name in model.loss_names}


def test_fit_lowers_each_of_the_four_losses():
    # A two-conv backbone (the builder takes any stride-16 model) keeps 100 steps cheap.
    keras.utils.set_random_seed(3)
    model = faster_rcnn(num_classes=NUM_CLASSES, backbone=tiny_backbone(), dropout=0.0, **SMALL)
    batch = synthetic_batch(np.random.default_rng(3))
    batch["images"] /= 50.0
    before = fixed_losses(model, batch)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    history = model.fit(dataset, steps_per_epoch=10, epochs=10, verbose=0).history
    after = fixed_losses(model, batch)
    assert set(history) == {"loss", *model.loss_names}
    # Mean of each term over the first 10 steps vs the last 10 (the same batch, repeated).
    for name in ("loss", *model.loss_names):
        assert history[name][-1] < 0.6 * history[name][0], (name, history[name])
    # With the sampling seed fixed and no dropout. The head's box loss is left out: its
    # foreground RoIs change with the proposals (few at first, many once the RPN learns).
    for name in ("rpn_cls_loss", "rpn_box_loss", "cls_loss"):
        assert after[name] < 0.5 * before[name], (name, before, after)


def test_fit_on_the_pretrained_vgg16_builder_trains_the_unfrozen_layers_only():
    # A pretrained trunk (an in-memory VGG16 with random weights): conv1 / conv2 are frozen.
    vgg16 = keras.applications.VGG16(weights=None, include_top=False)
    model = small_model(backbone_weights=vgg16)
    backbone = model.get_layer("backbone")
    frozen_names = {layer.name for layer in backbone.layers if not layer.trainable}
    assert frozen_names == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
    np.testing.assert_array_equal(
        backbone.get_layer("conv3_1").get_weights()[0],
        vgg16.get_layer("block3_conv1").get_weights()[0],
    )
    batch = synthetic_batch(np.random.default_rng(1))
    frozen = backbone.get_layer("conv1_1").get_weights()[0].copy()
    trained = backbone.get_layer("conv3_1").get_weights()[0].copy()
    rpn = model.get_layer("rpn").get_weights()[0].copy()
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=2, verbose=0)
    assert all(np.isfinite(v[0]) for v in history.history.values())
    np.testing.assert_array_equal(backbone.get_layer("conv1_1").get_weights()[0], frozen)
    assert not np.array_equal(backbone.get_layer("conv3_1").get_weights()[0], trained)
    assert not np.array_equal(model.get_layer("rpn").get_weights()[0], rpn)


def test_detect_without_proposals_gives_valid_padded_detections(model):
    rng = np.random.default_rng(2)
    batch = synthetic_batch(rng)
    shape = np.array([[HEIGHT, WIDTH], [70, 90]], np.int32)
    out = detect(model, batch["images"], score_threshold=0.0, max_detections=15, image_shape=shape)
    assert out["boxes"].shape == (2, 15, 4) and out["classes"].shape == (2, 15)
    boxes, classes = out["boxes"].numpy(), out["classes"].numpy()
    scores = out["scores"].numpy()
    for b in range(2):
        n = int(out["num_detections"][b])
        assert 0 < n <= 15
        assert set(classes[b, :n]) <= {1, 2} and not classes[b, n:].any()
        assert not boxes[b, n:].any() and not scores[b, n:].any()
        assert (boxes[b, :n, 2] <= shape[b, 0] - 1).all()
        assert (boxes[b, :n, 3] <= shape[b, 1] - 1).all()
        assert (np.diff(scores[b, :n]) <= 1e-6).all()
    with pytest.raises(ValueError, match="proposes its own regions"):
        detect(model, batch["images"], np.zeros((2, 3, 4), np.float32))
    fast = fast_rcnn(num_classes=1)
    with pytest.raises(ValueError, match="proposals: model 'fast_rcnn'"):
        detect(fast, batch["images"])


def test_keras_round_trip_in_a_fresh_process(model, tmp_path):
    rng = np.random.default_rng(3)
    images = rng.normal(0, 30, (1, HEIGHT, WIDTH, 3)).astype(np.float32)
    shape, scale = np.array([[HEIGHT, WIDTH]], np.float32), np.ones(1, np.float32)
    expected = model([images, shape, scale], training=False)
    path = tmp_path / "faster_rcnn.keras"
    model.save(path)
    np.savez(tmp_path / "inputs.npz", images=images, shape=shape, scale=scale)
    out = run_python(
        f"""
        import numpy as np, keras, keras_dense
        model = keras.models.load_model({str(path)!r}, safe_mode=True)
        data = np.load({str(tmp_path / "inputs.npz")!r})
        out = model([data["images"], data["shape"], data["scale"]], training=False)
        np.savez({str(tmp_path / "out.npz")!r}, **{{k: np.asarray(v) for k, v in out.items()}})
        backbone = model.get_layer("backbone")
        frozen = sorted(l.name for l in backbone.layers if l.weights and not l.trainable)
        print(type(model).__name__, model.rois_per_image, model.proposes_regions, frozen)
        """
    )
    assert out.split() == ["FasterRCNN", "32", "True", "[]"]  # from scratch: nothing frozen
    got = np.load(tmp_path / "out.npz")
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], np.asarray(value), atol=1e-5, err_msg=key)


def test_export_takes_image_bytes_only_and_passes_the_op_audit(model, tmp_path):
    # Images whose shorter side is min_size: the signature's resize is the identity.
    options = dict(min_size=80, max_size=120, score_threshold=0.0, nms_iou=0.5, max_detections=10)
    card = {"task": "detection"}
    result = export_saved_model(model, tmp_path, name="frcnn", card=card, **options)
    audit_saved_model(result.path)  # also done by the export; stock ops only
    loaded = tf.saved_model.load(result.path)
    serve = loaded.signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"image_bytes"}
    datas = [encode(make_image(80, 100, 21), "png"), encode(make_image(110, 80, 22), "png")]
    got = serve(image_bytes=tf.constant(datas))
    for i, data in enumerate(datas):
        x = normalize_np(decode_rgb(data).astype(np.float32), "caffe")[None]
        ref = detect(model, x, **{k: v for k, v in options.items() if "size" not in k})
        count = int(ref["num_detections"][0])
        assert count > 0 and int(got["num_detections"][i]) == count
        np.testing.assert_allclose(
            got["detection_scores"][i, :count], ref["scores"][0, :count], atol=1e-3
        )
        np.testing.assert_array_equal(
            got["detection_classes"][i, :count], ref["classes"][0, :count]
        )
        np.testing.assert_allclose(
            got["detection_boxes"][i, :count], ref["boxes"][0, :count], atol=0.05
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone"):
        faster_rcnn(backbone="vgg19")
    with pytest.raises(ValueError, match="roi_mode"):
        faster_rcnn(roi_mode="mean")
    with pytest.raises(ValueError, match="num_classes"):
        faster_rcnn(num_classes=0)
    with pytest.raises(ValueError, match="batch: missing keys"):
        FasterRCNN.check_batch({"images": np.zeros((1, 8, 8, 3))})


def test_resnet50_backbone_is_conv4_at_stride_16():
    keras.utils.set_random_seed(4)
    model = faster_rcnn(num_classes=1, backbone="resnet50", **SMALL)
    backbone = model.get_layer("backbone")
    assert backbone.output.shape[-1] == 1024
    assert backbone.layers[-1].name == "conv4_block6_out"
    features = backbone(np.zeros((1, 64, 96, 3), np.float32))
    assert features.shape[1:3] == (4, 6)


@pytest.mark.parametrize("stride", [8, 16])
def test_compact_backbone_sets_the_stride_of_features_anchors_and_roi_pooling(stride):
    keras.utils.set_random_seed(5)
    model = faster_rcnn(
        num_classes=1, backbone="compact", backbone_width=8, feature_stride=stride, **SMALL
    )
    backbone = model.get_layer("backbone")
    features = backbone(np.zeros((1, 64, 96, 3), np.float32))
    assert features.shape[1:] == (64 // stride, 96 // stride, 8 * 4)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone.layers)
    assert model.get_layer("proposal_layer").stride == stride
    pool = model.get_layer("roi_head").get_layer("roi_pool5")
    assert pool.spatial_scale == 1.0 / stride
    # The RPN's anchor grid covers the image at that stride: one cell per `stride` pixels.
    out = model.compute_output_spec(
        [keras.KerasTensor((1, 64, 96, 3)), keras.KerasTensor((1, 2)), keras.KerasTensor((1,))]
    )
    assert out["cls_score"].shape == (1, SMALL["test_post_nms_top_n"], 2)


def test_compact_backbone_bad_arguments():
    with pytest.raises(ValueError, match="feature_stride"):
        faster_rcnn(backbone="compact", feature_stride=4)
    with pytest.raises(ValueError, match="feature_stride"):
        faster_rcnn(backbone="vgg16", feature_stride=32)
    with pytest.raises(ValueError, match="backbone_width"):
        faster_rcnn(backbone="compact", backbone_width=0)
    with pytest.raises(ValueError, match="never pretrained"):
        faster_rcnn(backbone="compact", backbone_weights="imagenet")


def test_detection_task_trains_evaluates_predicts_and_exports_without_proposals(tmp_path):
    from keras_dense import cli
    from keras_dense.data import convert_shapes, detection_dataset, read_examples

    convert_shapes(str(tmp_path / "data" / "train"), 8, size=64, seed=0, progress=False)
    convert_shapes(str(tmp_path / "data" / "val"), 2, size=64, seed=1, progress=False)
    first = next(iter(read_examples(str(tmp_path / "data" / "train-*.tfrecord"))))
    assert len(first.get("proposals", ())) == 0  # the shapes records hold no proposals
    # Records without proposals: max_proposals 0 gives (B, 0, 4) and zero counts.
    batch = next(
        iter(
            detection_dataset(
                str(tmp_path / "data" / "val-*.tfrecord"),
                2,
                min_size=64,
                max_size=64,
                max_proposals=0,
            )
        )
    )
    assert batch["proposals"].shape == (2, 0, 4) and not batch["num_proposals"].numpy().any()
    recipe = tiny_faster_rcnn_recipe(
        tmp_path / "faster.toml",
        tmp_path / "data",
        """
fc_units = 16
rpn_filters = 16
anchor_scales = [16, 32, 64]
rois_per_image = 16
train_pre_nms_top_n = 200
train_post_nms_top_n = 50
test_pre_nms_top_n = 100
test_post_nms_top_n = 20
""",
    )
    run = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--output", str(run)]) == 0
    model_path = str(run / "best.keras")
    report = tmp_path / "eval"
    data = str(tmp_path / "data" / "val-*.tfrecord")
    assert (
        cli.main(["evaluate", "--model", model_path, "--data", data, "--output", str(report)]) == 0
    )
    image = tmp_path / "scene.png"
    image.write_bytes(encode(make_image(64, 80, 5), "png"))
    out = tmp_path / "pred"
    args = ["predict", "--model", model_path, str(image), "--output", str(out)]
    assert cli.main([*args, "--score-threshold", "0.0"]) == 0
    assert (out / "scene_boxes.png").is_file()
    assert isinstance(json.loads((out / "scene_detections.json").read_text()), list)
    saved = tmp_path / "saved_models"
    assert cli.main(["export", "--model", model_path, "--output", str(saved / "frcnn")]) == 0
    serve = tf.saved_model.load(str(saved / "frcnn" / "1")).signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"image_bytes"}
    got = serve(image_bytes=tf.constant([image.read_bytes()]))
    assert got["detection_boxes"].shape[0] == 1


def test_sampled_targets_name_the_matched_ground_truth(model):
    batch = synthetic_batch(np.random.default_rng(6))
    rng = np.random.default_rng(7)
    near = np.repeat(batch["boxes"][:, :2], 10, axis=1) + rng.normal(0, 4, (2, 20, 4))
    targets = model.sample_targets(batch, near.astype(np.float32), np.array([20, 10]), seed=(1, 2))
    labels, matched = targets["labels"].numpy(), targets["matched_gt"].numpy()
    rois = targets["rois"].numpy()
    assert (labels > 0).any() and ((matched >= 0) == (labels > 0)).all()
    for b, r in zip(*np.nonzero(labels > 0)):
        g = matched[b, r]
        assert g < batch["num_boxes"][b] and batch["labels"][b, g] == labels[b, r]
        truth = batch["boxes"][b, : batch["num_boxes"][b]]
        ious = [inclusive_iou(rois[b, r], box) for box in truth]
        assert ious[g] >= 0.5 and ious[g] == max(ious)


def test_detect_runs_the_model_as_a_graph_with_the_eager_results(model, monkeypatch):
    import importlib

    from keras_dense.utils.graph_inference import inference_graph

    detect_module = importlib.import_module("keras_dense.detection.detect")

    rng = np.random.default_rng(4)
    images = synthetic_batch(rng)["images"]
    shape = np.array([[HEIGHT, WIDTH], [70, 90]], np.int32)
    graph = detect(model, images, score_threshold=0.0, max_detections=15, image_shape=shape)
    assert inference_graph(model).experimental_get_tracing_count() >= 1
    # The same call with the model run op by op from Python.
    monkeypatch.setattr(detect_module, "run_inference", lambda m, inputs: m(inputs, training=False))
    eager = detect(model, images, score_threshold=0.0, max_detections=15, image_shape=shape)
    np.testing.assert_array_equal(graph["num_detections"], eager["num_detections"])
    np.testing.assert_array_equal(graph["classes"], eager["classes"])
    np.testing.assert_allclose(graph["boxes"], eager["boxes"], atol=1e-3)
    np.testing.assert_allclose(graph["scores"], eager["scores"], atol=1e-5)
