"""Fast R-CNN model: shapes, frozen layers, training with fit, saving, SVD compression."""

from __future__ import annotations

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.apps import FastRCNN, compress_dense, fast_rcnn
from keras_dense.detection import detect, fast_rcnn_loss
from keras_dense.layers import RoIPooling

from helpers import run_python

HEIGHT, WIDTH = 96, 128
VGG16_CONV = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
VGG16_CONV += [(256, 512)] + [(512, 512)] * 5


def expected_parameters(num_classes: int) -> int:
    """Fast R-CNN VGG16 parameter count from the paper's layer sizes."""
    conv = sum(3 * 3 * cin * cout + cout for cin, cout in VGG16_CONV)
    fc = (7 * 7 * 512 * 4096 + 4096) + (4096 * 4096 + 4096)
    heads = (4096 + 1) * (num_classes + 1) + (4096 + 1) * 4 * (num_classes + 1)
    return conv + fc + heads


def synthetic_batch(rng, num_proposals=60):
    """A 2-image batch in the detection_dataset format: coloured boxes, jittered proposals."""
    batch = 2
    images = rng.normal(0, 20, (batch, HEIGHT, WIDTH, 3)).astype(np.float32)
    boxes = np.zeros((batch, 5, 4), np.float32)
    labels = np.zeros((batch, 5), np.int32)
    num_boxes = np.array([2, 1], np.int32)
    proposals = np.zeros((batch, num_proposals, 4), np.float32)
    for b in range(batch):
        for g in range(num_boxes[b]):
            y0, x0 = rng.uniform(0, 40), rng.uniform(0, 60)
            box = [y0, x0, min(y0 + rng.uniform(32, 50), HEIGHT - 1), min(x0 + 50, WIDTH - 1)]
            boxes[b, g], labels[b, g] = box, g + 1
            images[b, int(box[0]) : int(box[2]), int(box[1]) : int(box[3]), g] += 120.0
        for p in range(num_proposals):
            jitter = rng.normal(0, 14, 4)
            proposals[b, p] = boxes[b, p % num_boxes[b]] + jitter
    proposals[..., 0::2] = np.clip(proposals[..., 0::2], 0, HEIGHT - 1)
    proposals[..., 1::2] = np.clip(proposals[..., 1::2], 0, WIDTH - 1)
    proposals[..., 2:] = np.maximum(proposals[..., 2:], proposals[..., :2] + 1)
    return {
        "images": images,
        "image_shape": np.array([[HEIGHT, WIDTH]] * batch, np.int32),
        "scale": np.ones(batch, np.float32),
        "boxes": boxes,
        "labels": labels,
        "difficult": np.zeros((batch, 5), bool),
        "num_boxes": num_boxes,
        "proposals": proposals,
        "num_proposals": np.array([num_proposals, num_proposals - 10], np.int32),
        "source_id": np.array([f"img{b}" for b in range(batch)]),
    }


def fixed_loss(model, batch) -> float:
    """Loss on RoIs sampled with a fixed seed, without dropout: comparable across steps."""
    targets = model.sample_targets(batch, seed=(5, 6))
    images = tf.convert_to_tensor(batch["images"])
    cls_score, bbox_pred = model([images, targets["rois"]], training=False)
    terms = fast_rcnn_loss(targets["labels"], targets["box_targets"], cls_score, bbox_pred)
    return float(terms["loss"])


@pytest.fixture(scope="module")
def full_model():
    """The paper-sized model (134M parameters), built once; K = 3, 16 RoIs per image.

    Its convolutions come from an in-memory VGG16 (random weights): a pretrained trunk, whose
    conv1 / conv2 the paper freezes.
    """
    keras.utils.set_random_seed(1)
    vgg16 = keras.applications.VGG16(weights=None, include_top=False)
    return fast_rcnn(num_classes=3, rois_per_image=16, backbone_weights=vgg16)


def test_from_scratch_nothing_is_frozen():
    # Frozen random filters would never learn: only pretrained layers are frozen.
    model = fast_rcnn(num_classes=1)
    assert [layer.name for layer in model.layers if layer.weights and not layer.trainable] == []


def test_shapes_layers_and_parameter_count(full_model):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, HEIGHT, WIDTH, 3)).astype(np.float32)
    rois = rng.uniform(0, 90, (2, 8, 4)).astype(np.float32)
    cls_score, bbox_pred = full_model.predict([images, rois], verbose=0)
    assert cls_score.shape == (2, 8, 4) and bbox_pred.shape == (2, 8, 16)
    assert full_model.count_params() == expected_parameters(3)
    assert full_model.num_classes == 3
    names = [layer.name for layer in full_model.layers]
    assert "pool5" not in names and "pool4" in names
    roi = full_model.get_layer("roi_pool5")
    assert isinstance(roi, RoIPooling) and roi.pool_size == (7, 7) and roi.spatial_scale == 1 / 16
    assert full_model.get_layer("fc6").kernel.shape == (7 * 7 * 512, 4096)
    frozen = {layer.name for layer in full_model.layers if layer.weights and not layer.trainable}
    assert frozen == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
    # Padding RoIs do not change the others' outputs (each RoI is pooled on its own).
    padded = np.concatenate([rois, np.zeros((2, 5, 4), np.float32)], axis=1)
    cls_padded, _ = full_model.predict([images, padded], verbose=0)
    np.testing.assert_allclose(cls_padded[:, :8], cls_score, atol=1e-4)


def test_detect_on_the_model(full_model):
    rng = np.random.default_rng(1)
    batch = synthetic_batch(rng)
    out = detect(
        full_model,
        batch["images"],
        batch["proposals"],
        score_threshold=0.0,
        max_detections=20,
        image_shape=batch["image_shape"],
        num_proposals=batch["num_proposals"],
    )
    assert out["boxes"].shape == (2, 20, 4) and out["classes"].shape == (2, 20)
    n = out["num_detections"].numpy()
    classes = out["classes"].numpy()
    assert all(1 <= c <= 3 for b in range(2) for c in classes[b, : n[b]])
    boxes = out["boxes"].numpy()
    assert boxes[..., 2].max() <= HEIGHT - 1 and boxes[..., 3].max() <= WIDTH - 1


def test_fit_lowers_the_loss_and_keeps_frozen_layers(full_model):
    keras.utils.set_random_seed(2)  # dropout and RoI sampling
    batch = synthetic_batch(np.random.default_rng(2))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    before = fixed_loss(full_model, batch)
    frozen = full_model.get_layer("conv1_1").get_weights()[0].copy()
    trained = full_model.get_layer("conv3_1").get_weights()[0].copy()
    full_model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    history = full_model.fit(dataset, steps_per_epoch=6, epochs=1, verbose=0)
    after = fixed_loss(full_model, batch)
    assert set(history.history) == {"loss", "cls_loss", "box_loss"}
    assert np.isfinite(history.history["loss"][0])
    assert after < 0.8 * before, (before, after)
    np.testing.assert_array_equal(full_model.get_layer("conv1_1").get_weights()[0], frozen)
    assert not np.array_equal(full_model.get_layer("conv3_1").get_weights()[0], trained)


def test_keras_round_trip_in_a_fresh_process(full_model, tmp_path):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(1, HEIGHT, WIDTH, 3)).astype(np.float32)
    rois = rng.uniform(0, 90, (1, 6, 4)).astype(np.float32)
    expected = full_model.predict([images, rois], verbose=0)
    path = tmp_path / "fast_rcnn.keras"
    full_model.save(path)
    np.savez(tmp_path / "inputs.npz", images=images, rois=rois)
    out = run_python(
        f"""
        import numpy as np, keras, keras_dense
        model = keras.models.load_model({str(path)!r})
        data = np.load({str(tmp_path / "inputs.npz")!r})
        cls, bbox = model.predict([data["images"], data["rois"]], verbose=0)
        np.savez({str(tmp_path / "out.npz")!r}, cls=cls, bbox=bbox)
        frozen = [l.name for l in model.layers if l.weights and not l.trainable]
        print(type(model).__name__, model.rois_per_image, sorted(frozen))
        """
    )
    assert out.split()[:3] == ["FastRCNN", "16", "['conv1_1',"]
    assert "'conv2_2']" in out
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(got["cls"], expected[0], atol=1e-5)
    np.testing.assert_allclose(got["bbox"], expected[1], atol=1e-5)


def test_backbone_weights_from_a_vgg16_file(tmp_path):
    source = keras.applications.VGG16(weights=None, include_top=True)
    path = str(tmp_path / "vgg16.weights.h5")
    source.save_weights(path)
    model = fast_rcnn(num_classes=1, backbone_weights=path)
    pairs = [("conv1_1", "block1_conv1"), ("conv5_3", "block5_conv3")]
    pairs += [("fc6", "fc1"), ("fc7", "fc2")]
    for ours, theirs in pairs:
        for mine, ref in zip(
            model.get_layer(ours).get_weights(), source.get_layer(theirs).get_weights()
        ):
            np.testing.assert_array_equal(mine, ref)
    with pytest.raises(ValueError, match="pool_size"):
        fast_rcnn(pool_size=6, backbone_weights=path)


def tiny_fast_rcnn(num_classes=2, **kwargs) -> FastRCNN:
    """The FastRCNN class on a small graph (same contract as the paper's model)."""
    images = keras.Input((None, None, 3), name="images")
    rois = keras.Input((None, 4), name="rois")
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu", name="conv")(images)
    x = RoIPooling(2, 0.25, name="roi_pool")([x, rois])
    x = keras.layers.Reshape((-1, 32), name="flatten")(x)
    x = keras.layers.Dense(24, activation="relu", name="fc6")(x)
    x = keras.layers.Dense(12, activation="relu", name="fc7")(x)
    cls = keras.layers.Dense(num_classes + 1, name="cls_score")(x)
    bbox = keras.layers.Dense(4 * (num_classes + 1), name="bbox_pred")(x)
    return FastRCNN(inputs=[images, rois], outputs=[cls, bbox], **kwargs)


def test_compress_dense_keeps_the_class_and_is_exact_at_full_rank():
    model = tiny_fast_rcnn(rois_per_image=8, fg_fraction=0.5)
    rng = np.random.default_rng(4)
    images = rng.normal(size=(2, 32, 40, 3)).astype(np.float32)
    rois = rng.uniform(0, 30, (2, 5, 4)).astype(np.float32)
    expected = model.predict([images, rois], verbose=0)
    full = compress_dense(model, {"fc6": 24, "fc7": 12})
    assert isinstance(full, FastRCNN)
    assert (full.rois_per_image, full.fg_fraction) == (8, 0.5)
    names = [layer.name for layer in full.layers]
    assert "fc6" not in names and {"fc6_svd_v", "fc6_svd_u", "fc7_svd_v", "fc7_svd_u"} <= set(names)
    assert full.get_layer("fc6_svd_v").kernel.shape == (32, 24)
    assert full.get_layer("fc6_svd_v").bias is None
    for got, want in zip(full.predict([images, rois], verbose=0), expected):
        np.testing.assert_allclose(got, want, atol=1e-4)
    # The original is untouched and still works.
    assert "fc6" in [layer.name for layer in model.layers]


def test_compress_dense_error_decreases_with_rank():
    inputs = keras.Input((40,))
    x = keras.layers.Dense(30, activation="relu", name="fc6")(inputs)
    outputs = keras.layers.Dense(10, name="out")(x)
    model = keras.Model(inputs, outputs)
    # A kernel with a decaying spectrum, as trained fc layers have.
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.normal(size=(40, 30)))
    v, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    kernel = (u * (0.7 ** np.arange(30))) @ v.T
    model.get_layer("fc6").set_weights([kernel.astype(np.float32), rng.normal(size=30)])
    x = rng.normal(size=(64, 40)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    errors = []
    for rank in (2, 5, 10, 20, 30):
        small = compress_dense(model, {"fc6": rank})
        assert small.count_params() == rank * (40 + 30) + 30 + 310
        errors.append(np.abs(small.predict(x, verbose=0) - expected).mean())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5
    with pytest.raises(ValueError, match="not a Dense layer"):
        compress_dense(model, {"nope": 3})
    with pytest.raises(ValueError, match="expected an int in"):
        compress_dense(model, {"fc6": 31})


def test_compressed_fast_rcnn_trains_and_round_trips(tmp_path):
    from helpers import keras_roundtrip_in_subprocess

    keras.utils.set_random_seed(6)
    model = compress_dense(tiny_fast_rcnn(), {"fc6": 8})
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    batch = synthetic_batch(np.random.default_rng(6))
    before = fixed_loss(model, batch)
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=30, verbose=0)
    assert fixed_loss(model, batch) < 0.7 * before
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(1, 32, 40, 3)).astype(np.float32)]
    inputs.append(rng.uniform(0, 30, (1, 4, 4)).astype(np.float32))
    keras_roundtrip_in_subprocess(model, inputs, tmp_path, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        fast_rcnn(num_classes=0)
    with pytest.raises(ValueError, match="backbone"):
        fast_rcnn(backbone="resnet50")
    with pytest.raises(ValueError, match="input_shape"):
        fast_rcnn(input_shape=(None, None, 1))
    with pytest.raises(ValueError, match="batch: missing keys"):
        tiny_fast_rcnn().sample_targets({"images": np.zeros((1, 8, 8, 3))})


def test_trains_on_bccd_records(shared_datasets, tmp_path):
    from keras_dense.data import convert_voc, detection_dataset

    root = tmp_path / "bccd"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    stems = [f"BloodImage_0000{i}" for i in range(4)]
    (root / "ImageSets" / "Main" / "few.txt").write_text("\n".join(stems) + "\n")
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir()
        for stem in stems:
            ext = ".jpg" if sub == "JPEGImages" else ".xml"
            (root / sub / f"{stem}{ext}").symlink_to(
                shared_datasets / "bccd" / sub / f"{stem}{ext}"
            )
    convert_voc(
        str(root),
        str(tmp_path / "records" / "bccd"),
        task="detection",
        split="few",
        classes=["Platelets", "RBC", "WBC"],
        proposals="selective_search",
        on_error="skip",
        progress=False,
    )
    pattern = str(tmp_path / "records" / "*.tfrecord*")
    assert glob.glob(pattern)
    dataset = detection_dataset(
        pattern, batch_size=2, training=True, min_size=96, max_size=128, seed=0, max_boxes=64
    )
    batches = [dict(b) for b in dataset.take(2)]
    assert batches[0]["images"].shape[1:3] == (96, 128)
    assert int(batches[0]["num_proposals"][0]) > 0
    keras.utils.set_random_seed(0)  # initialisation, dropout and RoI sampling
    model = fast_rcnn(num_classes=3, rois_per_image=16)
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    before = np.mean([fixed_loss(model, b) for b in batches])
    model.fit(dataset.repeat(), steps_per_epoch=9, verbose=0)
    after = np.mean([fixed_loss(model, b) for b in batches])
    assert after < 0.85 * before, (before, after)
