"""The two-stage detector family: one base (RoI sampling options, config, batch check, steps),
Mask R-CNN composed from Faster R-CNN's parts without a throwaway model, and Faster R-CNN's
backbone taken from the backbone registry (any family, cut at `feature_stride`)."""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.apps import (
    FasterRCNN,
    FastRCNN,
    MaskRCNN,
    fast_rcnn,
    faster_rcnn,
    mask_rcnn,
)
from keras_dense.backbones import registry
from keras_dense.backbones.backbone import Backbone

# Tiny heads and proposal counts: CPU-sized.
SMALL = dict(
    fc_units=16,
    rpn_filters=16,
    anchor_scales=(16, 32),
    train_pre_nms_top_n=64,
    train_post_nms_top_n=16,
    test_pre_nms_top_n=32,
    test_post_nms_top_n=8,
    min_size=2,
)
COMPACT = dict(backbone="compact", backbone_width=4, **SMALL)
# Non-default training options of every level (base, Faster R-CNN, Mask R-CNN).
TRAINING = dict(
    rois_per_image=24,
    fg_fraction=0.4,
    bg_iou_range=(0.05, 0.45),
    box_stds=(0.1, 0.1, 0.25, 0.25),
    use_difficult=True,
    rpn_batch_size_per_image=64,
    rpn_box_loss_weight=2.0,
)


def batch(height: int = 32, width: int = 48) -> dict:
    """A 1-image detection batch with one box and its instance mask."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (1, height, width, 3)).astype(np.float32)
    masks = np.zeros((1, 1, height, width), np.uint8)
    masks[0, 0, 6:26, 10:40] = 1
    images[0, 6:26, 10:40] += 3.0
    return {
        "images": images,
        "image_shape": np.array([[height, width]], np.int32),
        "scale": np.ones(1, np.float32),
        "boxes": np.array([[[6, 10, 26, 40]]], np.float32),
        "labels": np.array([[1]], np.int32),
        "num_boxes": np.array([1], np.int32),
        "instance_masks": masks,
    }


def extra_config(model) -> dict:
    """The config entries besides the functional graph."""
    skip = ("layers", "input_layers", "output_layers")
    return {k: v for k, v in model.get_config().items() if k not in skip}


MASK = dict(mask_filters=4, mask_loss_weight=0.5)


@pytest.mark.parametrize(
    "build, cls",
    [
        (lambda: faster_rcnn(2, **COMPACT, **TRAINING), FasterRCNN),
        (lambda: mask_rcnn(2, **COMPACT, **MASK, **TRAINING), MaskRCNN),
    ],
    ids=["faster_rcnn", "mask_rcnn"],
)
def test_config_round_trip_keeps_every_training_option(build, cls):
    keras.utils.set_random_seed(0)
    model = build()
    config = model.get_config()
    for key, value in TRAINING.items():
        expected = list(value) if isinstance(value, tuple) else value
        assert config[key] == expected, key
    revived = cls.from_config(copy.deepcopy(config))  # from_config pops keys
    assert type(revived) is cls
    assert revived.get_config() == config
    for key in ("rois_per_image", "bg_iou_range", "box_stds", "rpn_box_loss_weight"):
        assert getattr(revived, key) == getattr(model, key)


def test_fast_rcnn_keeps_its_paper_defaults_on_any_graph():
    # Any functional [images, rois] -> [cls_score, bbox_pred] graph is a FastRCNN.
    images = keras.Input((None, None, 3))
    rois = keras.Input((None, 4))
    x = keras.layers.Dense(4)(rois)
    model = FastRCNN([images, rois], [keras.layers.Dense(3)(x), keras.layers.Dense(12)(x)])
    assert model.num_classes == 2
    assert (model.rois_per_image, model.bg_iou_range) == (64, (0.1, 0.5))  # Fast R-CNN paper
    config = extra_config(model)
    assert config["rois_per_image"] == 64 and config["bg_iou_range"] == [0.1, 0.5]
    assert FastRCNN.from_config(model.get_config()).get_config() == model.get_config()
    assert [m.name for m in model.metrics] == ["loss", "cls_loss", "box_loss"]
    with pytest.raises(ValueError, match=r"FastRCNN.fit/evaluate: expected batches that are"):
        model.check_batch(np.zeros(3))
    with pytest.raises(ValueError, match=r"missing keys \['proposals', 'num_proposals'\]"):
        model.check_batch({k: v for k, v in batch().items() if k != "instance_masks"})


def test_mask_rcnn_builds_no_throwaway_faster_rcnn(monkeypatch):
    built = []
    init = FasterRCNN.__init__

    def spy(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(FasterRCNN, "__init__", spy)
    keras.utils.set_random_seed(0)
    model = mask_rcnn(2, **COMPACT, mask_filters=4, roi_mode="max")
    assert built == ["MaskRCNN"]  # one detector model, no inner Faster R-CNN
    names = [layer.name for layer in model.layers]
    assert sorted(names) == sorted(
        ["images", "image_shape", "scale", "backbone", "rpn", "proposal_layer", "roi_head"]
        + ["detection", "mask_head", "detection_masks"]
    )
    assert len(model.weights) == sum(len(layer.weights) for layer in model.layers)
    # The same parts as Faster R-CNN built with the same options.
    keras.utils.set_random_seed(0)
    faster = faster_rcnn(2, **COMPACT, roi_mode="max")
    for part in ("backbone", "rpn", "proposal_layer", "roi_head"):
        assert model.get_layer(part).get_config() == faster.get_layer(part).get_config(), part


@pytest.mark.parametrize("builder", [fast_rcnn, faster_rcnn, mask_rcnn])
def test_builders_name_an_unknown_argument(builder):
    # It was dropped silently: a misspelt recipe key trained with the default.
    with pytest.raises(ValueError, match=r"unknown arguments \['anchor_scale'\]"):
        builder(2, anchor_scale=(8,))
    with pytest.raises(ValueError, match=r"unknown arguments \['rois_per_imag'\]"):
        builder(2, rois_per_imag=8)


def last_block_at_stride_16(application: keras.Model, height: int) -> str:
    """The name of the last residual block output (`Add`) of a keras.applications network
    at stride 16."""
    names = [
        layer.name
        for layer in application.layers
        if isinstance(layer, keras.layers.Add) and layer.output.shape[1] == height // 16
    ]
    return names[-1]


def test_registry_backbone_mobilenetv2_at_stride_16_builds_and_trains():
    keras.utils.set_random_seed(0)
    model = faster_rcnn(2, backbone="mobilenetv2", feature_stride=16, dropout=0.0, **SMALL)
    trunk = model.get_layer("backbone")
    reference = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(64, 96, 3)
    )
    assert trunk.layers[-1].name == last_block_at_stride_16(reference, 64)
    assert trunk.output.shape[-1] == reference.get_layer(trunk.layers[-1].name).output.shape[-1]
    assert "Conv_1" not in {layer.name for layer in trunk.layers}  # nothing past stride 16
    data = batch()
    assert trunk(data["images"]).shape[1:3] == (2, 3)
    assert model.get_layer("proposal_layer").stride == 16
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
    rpn = model.get_layer("rpn").get_weights()[0].copy()
    logs = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0).history
    assert set(logs) == {"loss", *model.loss_names}
    assert all(np.isfinite(v[0]) for v in logs.values())
    assert not np.array_equal(model.get_layer("rpn").get_weights()[0], rpn)


def test_resnet_trunk_stops_at_conv4_and_vgg16_keeps_its_frozen_layers():
    keras.utils.set_random_seed(0)
    trunk = faster_rcnn(2, backbone="resnet50", **SMALL).get_layer("backbone")
    names = {layer.name for layer in trunk.layers}
    assert "conv4_block6_out" in names and not any(n.startswith("conv5") for n in names)
    assert all(layer.trainable for layer in trunk.layers)
    pretrained = keras.applications.VGG16(weights=None, include_top=False)
    vgg = faster_rcnn(2, backbone="vgg16", backbone_weights=pretrained, **SMALL)
    vgg = vgg.get_layer("backbone")
    frozen = {layer.name for layer in vgg.layers if layer.weights and not layer.trainable}
    assert frozen == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
    assert vgg.layers[-1].name == "conv5_3" and "pool5" not in {x.name for x in vgg.layers}


def test_a_stride_the_family_cannot_give_is_named(monkeypatch):
    with pytest.raises(ValueError, match=r"feature_stride=32: expected one of \[8, 16\]"):
        faster_rcnn(2, backbone="xception", feature_stride=32, **SMALL)
    with pytest.raises(ValueError, match="backbone='resnet5'"):
        faster_rcnn(2, backbone="resnet5", **SMALL)

    def coarse(x, output_stride=32):
        y = keras.layers.Conv2D(4, 3, strides=32, padding="same", name="coarse")(x)
        return {32: y}

    family = Backbone("coarse", coarse, (32,), 32, normalization=None)
    registry.backbone_names()  # loads the families first
    monkeypatch.setitem(registry._REGISTRY, "coarse", family)
    with pytest.raises(ValueError, match=r"feature_stride=16: backbone='coarse' gives .*\[32\]"):
        faster_rcnn(2, backbone="coarse", **SMALL)


def test_mask_rcnn_loads_backbone_weights_through_the_family(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    path = str(tmp_path / "resnet50_notop.weights.h5")
    source.save_weights(path)
    model = mask_rcnn(2, backbone="resnet50", backbone_weights=path, mask_filters=4, **SMALL)
    trunk = model.get_layer("backbone")
    for name in ("conv1_conv", "conv2_block1_0_bn", "conv4_block6_3_conv"):
        for got, want in zip(
            trunk.get_layer(name).get_weights(), source.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(got, want, err_msg=name)
