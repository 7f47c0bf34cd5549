"""R-CNN baseline: the context warp against a NumPy reference, shapes, training, saving, detect."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_fast_rcnn import HEIGHT, WIDTH, expected_parameters, fixed_loss, synthetic_batch

from keras_dense.apps import FastRCNN, rcnn
from keras_dense.detection import detect
from keras_dense.layers import ChunkedTimeDistributed, ContextWarp
from keras_dense.tasks import task_of_builder
from keras_dense.training import load_recipe
from keras_dense.training.builders import build_model

from helpers import REPO_ROOT

CROP, PAD = 32, 4


def reference_warp(image: np.ndarray, box, crop: int, pad: int) -> np.ndarray:
    """R-CNN's warp written from its definition, in NumPy (float64).

    The box `[ymin, xmin, ymax, xmax]` covers pixels ymin..ymax (pixel i spans [i - .5,
    i + .5]); it is enlarged about its centre so that its original extent takes the inner
    `crop - 2 pad` of `crop` output pixels; each output pixel is the bilinear sample of the
    image at the centre of its cell; samples outside [0, H - 1] x [0, W - 1] are 0.
    """
    height, width, channels = image.shape
    ymin, xmin, ymax, xmax = [float(v) for v in box]
    factor = crop / (crop - 2 * pad)
    out = np.zeros((crop, crop, channels))
    top = (ymin - 0.5 + ymax + 0.5) / 2 - factor * max(ymax - ymin + 1, 1) / 2
    left = (xmin - 0.5 + xmax + 0.5) / 2 - factor * max(xmax - xmin + 1, 1) / 2
    cell_h = factor * max(ymax - ymin + 1, 1) / crop
    cell_w = factor * max(xmax - xmin + 1, 1) / crop
    for i in range(crop):
        y = top + (i + 0.5) * cell_h
        for j in range(crop):
            x = left + (j + 0.5) * cell_w
            if not (0 <= y <= height - 1 and 0 <= x <= width - 1):
                continue
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = (
                image[y0, x0] * (1 - fy) * (1 - fx)
                + image[y0, x1] * (1 - fy) * fx
                + image[y1, x0] * fy * (1 - fx)
                + image[y1, x1] * fy * fx
            )
    return out


def test_context_warp_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (2, 20, 24, 3)).astype(np.float32)
    rois = np.array(
        [
            [[2, 3, 11, 9], [0, 0, 19, 23], [-4, 15, 6, 30], [5, 5, 5, 5]],
            [[7.3, 1.6, 18.2, 20.9], [10, 2, 12, 21], [0, 0, 0, 0], [3, 8, 1, 6]],
        ],
        np.float32,
    )
    got = ContextWarp(8, 2)([images, rois]).numpy()
    assert got.shape == (2, 4, 8, 8, 3) and got.dtype == np.float32
    for b in range(2):
        for r in range(4):
            want = reference_warp(images[b], rois[b, r], 8, 2)
            np.testing.assert_allclose(got[b, r], want, atol=1e-4, err_msg=f"image {b}, roi {r}")
    # Boxes with sample points past the image read 0 there (the mean pixel after "caffe").
    assert np.all(got[0, 2, :, -1] == 0) and np.any(got[0, 2] != 0)


@pytest.mark.parametrize("pad", [0, 3, 16])
def test_context_padding_puts_the_box_edges_at_pad_pixels(pad):
    """On a linear ramp the warp returns its sample positions: the box edges fall p pixels in."""
    crop = 40 if pad < 16 else 224
    ys, xs = np.meshgrid(np.arange(300.0), np.arange(400.0), indexing="ij")
    image = np.stack([ys, xs, ys + xs], -1)[None].astype(np.float32)
    box = np.array([[[100.0, 150.0, 159.0, 269.0]]], np.float32)  # 60 x 120 pixels
    warped = ContextWarp(crop, pad)([image, box]).numpy()[0, 0]
    rows, cols = warped[:, 0, 0], warped[0, :, 1]
    # The edge between output pixels pad - 1 and pad is the box's top edge (ymin - 0.5) ...
    before_top = rows[pad - 1] if pad else 2 * rows[0] - rows[1]
    np.testing.assert_allclose((before_top + rows[pad]) / 2, 99.5, atol=1e-3)
    after_bottom = rows[crop - pad] if pad else 2 * rows[-1] - rows[-2]
    np.testing.assert_allclose((rows[crop - pad - 1] + after_bottom) / 2, 159.5, atol=1e-3)
    after_right = cols[crop - pad] if pad else 2 * cols[-1] - cols[-2]
    before_left = cols[pad - 1] if pad else 2 * cols[0] - cols[1]
    np.testing.assert_allclose((before_left + cols[pad]) / 2, 149.5, atol=1e-3)
    np.testing.assert_allclose((cols[crop - pad - 1] + after_right) / 2, 269.5, atol=1e-3)
    # Anisotropic: the 60-pixel height and the 120-pixel width both fill crop - 2 pad pixels.
    np.testing.assert_allclose(np.diff(rows), 60 / (crop - 2 * pad), rtol=1e-4)
    np.testing.assert_allclose(np.diff(cols), 120 / (crop - 2 * pad), rtol=1e-4)


def test_context_warp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="context_padding"):
        ContextWarp(32, 16)
    with pytest.raises(ValueError, match="crop_size"):
        ContextWarp(0, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkedTimeDistributed(keras.layers.Dense(2), chunk_size=0)
    with pytest.raises(ValueError, match="roi_chunk"):
        rcnn(num_classes=2, crop_size=CROP, context_padding=PAD, roi_chunk=0)
    with pytest.raises(ValueError, match="backbone_weights needs"):
        rcnn(num_classes=2, crop_size=CROP, backbone_weights="imagenet")


def test_the_recipe_builds_through_the_detection_task():
    recipe = load_recipe(
        str(REPO_ROOT / "apps" / "rcnn_bccd.toml"),
        ['model.kwargs.backbone_weights="none"', "model.kwargs.crop_size=64"],
    )
    assert task_of_builder(recipe["model"]["builder"]).name == recipe["task"] == "detection"
    model, kwargs = build_model(recipe["model"]["builder"], recipe["model"]["kwargs"], 3, 3)
    assert isinstance(model, FastRCNN) and model.num_classes == 3
    assert kwargs["context_padding"] == 16 and model.rois_per_image == 64
    assert model.get_layer("rcnn_features").chunk_size == 64


def tiny_rcnn(num_classes: int = 3, **kwargs) -> FastRCNN:
    keras.utils.set_random_seed(kwargs.pop("seed", 1))
    options = {"crop_size": CROP, "context_padding": PAD, "fc_units": 32, "roi_chunk": 7}
    return rcnn(num_classes=num_classes, **{**options, **kwargs})


@pytest.fixture(scope="module")
def small_model():
    return tiny_rcnn(rois_per_image=16)


def test_shapes_chunks_and_padding_rois(small_model):
    rng = np.random.default_rng(1)
    images = rng.normal(0, 30, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    rois = rng.uniform(0, 60, (2, 9, 4)).astype(np.float32)
    rois[..., 2:] += 30
    cls_score, bbox_pred = small_model.predict([images, rois], verbose=0)
    assert cls_score.shape == (2, 9, 4) and bbox_pred.shape == (2, 9, 16)
    # Each region alone through the per-region network: the same as the chunked batch.
    crops = small_model.get_layer("context_warp")([images, rois])
    conv = small_model.get_layer("rcnn_features").layer
    alone = np.stack([conv(crops[:, r]).numpy() for r in range(9)], axis=1)
    chunked = small_model.get_layer("rcnn_features")(crops).numpy()
    np.testing.assert_allclose(chunked, alone, rtol=1e-4, atol=1e-4)
    # No chunking gives the same outputs; padding RoIs do not change the others.
    whole = tiny_rcnn(roi_chunk=None, rois_per_image=16)
    whole.set_weights(small_model.get_weights())
    padded = np.concatenate([rois, np.zeros((2, 4, 4), np.float32)], axis=1)
    got_cls, got_bbox = whole.predict([images, padded], verbose=0)
    np.testing.assert_allclose(got_cls[:, :9], cls_score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_bbox[:, :9], bbox_pred, rtol=1e-4, atol=1e-4)


def test_fit_lowers_the_loss(small_model):
    keras.utils.set_random_seed(2)
    batch = synthetic_batch(np.random.default_rng(2))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    before = fixed_loss(small_model, batch)
    small_model.compile(optimizer=keras.optimizers.Adam(1e-4))
    history = small_model.fit(dataset, steps_per_epoch=8, epochs=1, verbose=0)
    after = fixed_loss(small_model, batch)
    assert set(history.history) == {"loss", "cls_loss", "box_loss"}
    assert after < 0.8 * before, (before, after)


def test_detect_on_the_model(small_model):
    batch = synthetic_batch(np.random.default_rng(3), num_proposals=20)
    out = detect(
        small_model,
        batch["images"],
        batch["proposals"],
        score_threshold=0.0,
        max_detections=10,
        image_shape=batch["image_shape"],
        num_proposals=batch["num_proposals"],
    )
    assert out["boxes"].shape == (2, 10, 4) and out["classes"].shape == (2, 10)
    n = out["num_detections"].numpy()
    assert np.all(n > 0)
    classes = out["classes"].numpy()
    assert all(1 <= c <= 3 for b in range(2) for c in classes[b, : n[b]])
    boxes = out["boxes"].numpy()
    assert boxes[..., 2].max() <= HEIGHT - 1 and boxes[..., 3].max() <= WIDTH - 1


def test_full_size_model_layers_parameters_and_backbone_weights():
    source = keras.applications.VGG16(weights=None, include_top=True)
    # The builder's loader, fed the in-memory VGG16 instead of the ImageNet download.
    model = rcnn(num_classes=3, backbone_weights=source)
    # R-CNN and Fast R-CNN VGG16 have the same weights: 224-px crops give pool5 7 x 7 x 512.
    assert model.count_params() == expected_parameters(3)
    assert isinstance(model, FastRCNN) and model.num_classes == 3
    warp = model.get_layer("context_warp")
    assert (warp.crop_size, warp.context_padding) == (224, 16)
    features = model.get_layer("rcnn_features")
    conv = features.layer
    assert features.chunk_size == 64 and conv.name == "rcnn_conv"
    assert conv.get_layer("pool5").output.shape[1:] == (7, 7, 512)
    assert model.get_layer("fc6").kernel.shape == (7 * 7 * 512, 4096)
    assert all(layer.trainable for layer in conv.layers)  # R-CNN fine-tunes every layer
    assert task_of_builder("rcnn").name == "detection"
    pairs = [(conv, "conv1_1", "block1_conv1"), (conv, "conv5_3", "block5_conv3")]
    pairs += [(model, "fc6", "fc1"), (model, "fc7", "fc2")]
    for owner, ours, theirs in pairs:
        mine = owner.get_layer(ours).get_weights()
        for got, want in zip(mine, source.get_layer(theirs).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_saved_model_export_gives_the_detect_results(tmp_path):
    """The export driver's detection signature (stock TF ops, the chunk loop in the graph)."""
    import cv2

    from keras_dense.export import export_saved_model

    from export_test_utils import normalize_np

    model = tiny_rcnn(num_classes=2, fc_units=8, roi_chunk=2)
    kernel, bias = model.get_layer("cls_score").get_weights()
    model.get_layer("cls_score").set_weights([kernel * 300.0, bias])  # distinct scores
    options = dict(score_threshold=0.0, nms_iou=0.5, max_detections=5)
    card = {"task": "detection", "normalization": "caffe"}
    export_saved_model(model, tmp_path, name="det", card=card, min_size=48, max_size=64, **options)
    serve = tf.saved_model.load(str(tmp_path / "det" / "1")).signatures["serving_default"]
    rgb = np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8)  # already at scale
    png = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    proposals = np.array([[[2, 3, 30, 40], [10, 10, 45, 60], [0, 5, 47, 63]]], np.float32)
    got = serve(image_bytes=tf.constant([png]), proposals=proposals, num_proposals=[3])
    ref = detect(model, normalize_np(rgb, "caffe")[None], proposals, **options)
    count = int(ref["num_detections"][0])
    assert count > 0 and int(got["num_detections"][0]) == count
    np.testing.assert_allclose(
        got["detection_scores"][0, :count], ref["scores"][0, :count], atol=1e-4
    )
    np.testing.assert_allclose(
        got["detection_boxes"][0, :count], ref["boxes"][0, :count], atol=0.05
    )
