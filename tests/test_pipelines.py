"""The tf.data pipelines: alignment under augmentation, evaluation padding, detection."""

from __future__ import annotations

import numpy as np
import pytest

from keras_dense.data import (
    BadInputError,
    convert_shapes,
    detection_dataset,
    read_examples,
    segmentation_dataset,
)

from data_fixtures import coordinate_records


def test_augmentation_keeps_mask_aligned(tmp_path):
    pattern = coordinate_records(tmp_path)
    ds = segmentation_dataset(
        pattern,
        batch_size=3,
        crop_size=(64, 80),
        training=True,
        photometric=False,
        normalization=None,
        seed=5,
        scale_range=(0.5, 2.0),
    )
    flips = scales = 0
    for images, masks in ds.repeat(6):
        images, masks = images.numpy(), masks.numpy()
        for image, mask in zip(images, masks):
            valid = np.isclose(image[..., 2], 200.0, atol=1e-3)
            # Padding is exactly where the mask says ignore.
            np.testing.assert_array_equal(valid, mask != 255)
            assert (image[~valid] == 0).all()
            y = image[..., 0][valid] - 1
            x = image[..., 1][valid] - 1
            tie = (np.abs(y % 1 - 0.5) < 1e-3) | (np.abs(x % 1 - 0.5) < 1e-3)
            expected = (np.floor(y + 0.5) * 7 + np.floor(x + 0.5) * 3) % 250
            assert (mask[valid][~tie] == expected[~tie]).all()
            row = image[valid.any(1).argmax(), :, 1][valid[valid.any(1).argmax()]]
            flips += row.size > 1 and row[0] > row[-1]
            step = np.diff(image[..., 1], axis=1)[valid[:, 1:] & valid[:, :-1]]
            scales += step.size > 0 and abs(abs(np.median(step)) - 1) > 0.05
    assert flips > 0 and scales > 0, "augmentation never flipped or scaled"


def test_evaluation_pads_with_ignore_and_keeps_every_pixel(tmp_path):
    convert_shapes(str(tmp_path / "s"), 5, size=40, progress=False)
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "s-*"))}
    pattern = coordinate_records(tmp_path)
    batches = list(segmentation_dataset(pattern, batch_size=2, normalization=None))
    assert [b[0].shape[0] for b in batches] == [2, 1]
    images, masks = batches[0][0].numpy(), batches[0][1].numpy()
    assert images.shape[1:3] == (90, 120)
    # The first two records are 90x120 and 70x50: the second is padded with ignore / zero.
    assert (masks[1, 70:] == 255).all() and (masks[1, :, 50:] == 255).all()
    assert (images[1, 70:] == 0).all() and (masks[1, :70, :50] != 255).all()
    yy, xx = np.mgrid[0:90, 0:120]
    np.testing.assert_array_equal(masks[0, :90], (yy * 7 + xx * 3) % 250)
    x, y = next(iter(segmentation_dataset(str(tmp_path / "s-*"), 5, normalization="caffe")))
    first = sorted(examples)[0]
    np.testing.assert_array_equal(y.numpy()[0], examples[first]["mask"])
    expected = examples[first]["image"][..., ::-1] - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(x.numpy()[0], expected, atol=1e-4)


def test_truncated_and_altered_shards_are_named(tmp_path):
    convert_shapes(str(tmp_path / "s"), 6, size=32, num_shards=2, progress=False)
    shard = tmp_path / "s-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="s-00001-of-00002.tfrecord: SHA-256 differs"):
        segmentation_dataset(str(tmp_path / "s-*"), 2)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(BadInputError, match="s-00001-of-00002.tfrecord: truncated"):
        segmentation_dataset(str(tmp_path / "s-*"), 2, verify=True)
    with pytest.raises(BadInputError, match="s-00001-of-00002.tfrecord"):
        list(read_examples(str(tmp_path / "s-*")))
    with pytest.raises(BadInputError, match="no TFRecord file matches"):
        segmentation_dataset(str(tmp_path / "nothing-*"), 2)


def test_detection_batches_scale_and_flip_together(tmp_path):
    convert_shapes(str(tmp_path / "d"), 4, size=64, progress=False)
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "d-*"))}
    plain = next(
        iter(
            detection_dataset(
                str(tmp_path / "d-*"), 4, min_size=96, max_size=200, normalization=None
            )
        )
    )
    assert plain["images"].shape == (4, 96, 96, 3)
    for i, sid in enumerate(plain["source_id"].numpy()):
        e = examples[sid.decode()]
        n = int(plain["num_boxes"][i])
        assert n == len(e["boxes"])
        np.testing.assert_allclose(plain["boxes"][i, :n].numpy(), e["boxes"] * 96, atol=1e-4)
        assert (plain["labels"][i, n:].numpy() == 0).all()
    flipped_any = False
    for batch in detection_dataset(
        str(tmp_path / "d-*"),
        4,
        training=True,
        min_size=96,
        max_size=200,
        normalization=None,
        seed=1,
    ).repeat(3):
        for i, sid in enumerate(batch["source_id"].numpy()):
            j = list(plain["source_id"].numpy()).index(sid)
            n = int(batch["num_boxes"][i])
            same = np.allclose(batch["images"][i], plain["images"][j])
            mirrored = np.allclose(batch["images"][i], plain["images"][j][:, ::-1])
            assert same or mirrored
            ref = plain["boxes"][j, :n].numpy()
            if not same:
                flipped_any = True
                ref = np.stack([ref[:, 0], 96 - ref[:, 3], ref[:, 2], 96 - ref[:, 1]], 1)
            np.testing.assert_allclose(batch["boxes"][i, :n].numpy(), ref, atol=1e-4)
    assert flipped_any


def test_bad_pipeline_arguments(tmp_path):
    convert_shapes(str(tmp_path / "s"), 2, size=32, progress=False)
    with pytest.raises(ValueError, match="crop_size is required"):
        segmentation_dataset(str(tmp_path / "s-*"), 2, training=True)
    with pytest.raises(ValueError, match="normalization='bgr'"):
        segmentation_dataset(str(tmp_path / "s-*"), 2, normalization="bgr")
