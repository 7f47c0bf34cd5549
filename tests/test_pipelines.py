"""The tf.data pipelines: alignment under augmentation, evaluation padding, detection."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.data import (
    BadInputError,
    convert_shapes,
    detection_dataset,
    read_examples,
    segmentation_dataset,
    tfrecord_files,
)
from keras_dense.data.image_io import encode_jpeg, encode_png
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset

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


def _textured_jpeg(rng, h, w) -> bytes:
    """A photo-like JPEG (smooth shading plus noise), where the fast DCT is visibly off."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 // h, xx * 255 // w, (yy + xx) * 127 // (h + w)], -1)
    rgb = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return encode_jpeg(rgb, 85)


def test_jpeg_pixels_equal_opencv_in_every_reader(tmp_path):
    """Training, evaluation, read_examples and detection all decode JPEG as OpenCV does."""
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (50, 70)]
    jpegs = [_textured_jpeg(rng, h, w) for h, w in sizes]

    def make(i):
        h, w = sizes[i]
        mask = np.zeros((h, w), np.uint8)
        boxes = np.array([[0.1, 0.1, 0.5, 0.6]], np.float32)
        return Record(
            f"tex{i}",
            jpegs[i],
            "jpeg",
            h,
            w,
            mask_png=encode_png(mask),
            boxes=boxes,
            labels=np.array([1]),
        )

    write_dataset(str(tmp_path / "t"), [0, 1], make, progress=False)
    pattern = str(tmp_path / "t-*.tfrecord")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    reference = {
        f"tex{i}": cv2.imdecode(np.frombuffer(data, np.uint8), flags)[..., ::-1]
        for i, data in enumerate(jpegs)
    }
    # The check means something: the fast DCT gives other pixels.
    for i, data in enumerate(jpegs):
        fast = tf.io.decode_image(data, channels=3).numpy()
        assert np.abs(fast.astype(int) - reference[f"tex{i}"]).max() > 0
    for example in read_examples(pattern):
        np.testing.assert_array_equal(example["image"], reference[example["source_id"]])
    for images, _ in segmentation_dataset(pattern, 1, normalization=None):
        image = images.numpy()[0]
        match = [k for k, v in reference.items() if v.shape == image.shape]
        np.testing.assert_array_equal(image, reference[match[0]])
    # Training at scale 1 without flip or jitter samples every pixel at its centre.
    train = segmentation_dataset(
        pattern,
        1,
        crop_size=(80, 80),
        training=True,
        scale_range=(1.0, 1.0),
        flip=False,
        photometric=False,
        normalization=None,
    )
    for images, masks in train:
        h, w = (masks.numpy()[0] != 255).any(1).sum(), (masks.numpy()[0] != 255).any(0).sum()
        image = images.numpy()[0][:h, :w]
        match = [k for k, v in reference.items() if v.shape[:2] == (h, w)]
        np.testing.assert_allclose(image, reference[match[0]], atol=1e-3)
    for batch in detection_dataset(pattern, 1, min_size=48, max_size=70, normalization=None):
        sid = batch["source_id"].numpy()[0].decode()
        h, w = reference[sid].shape[:2]
        if min(h, w) == 48:  # Scale 1: no resampling.
            np.testing.assert_allclose(batch["images"].numpy()[0, :h, :w], reference[sid])


def test_image_and_mask_of_different_sizes_name_the_record_and_shard(tmp_path):
    rng = np.random.default_rng(1)

    def make(i):
        h, w = 40, 30
        mask_h = h + 4 if i == 1 else h
        return Record(
            f"pair{i}",
            _textured_jpeg(rng, h, w),
            "jpeg",
            h,
            w,
            mask_png=encode_png(np.zeros((mask_h, w), np.uint8)),
        )

    write_dataset(str(tmp_path / "m"), [0, 1, 2], make, num_shards=3, progress=False)
    pattern = str(tmp_path / "m-*.tfrecord")
    for kwargs in (
        dict(training=True, crop_size=32, fast_decode=True),
        dict(training=True, crop_size=32, fast_decode=False),
        dict(),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            list(segmentation_dataset(pattern, 1, **kwargs))
        message = str(info.value)
        assert "image and mask sizes differ" in message and "pair1" in message, message
        assert "m-00001-of-00003.tfrecord" in message, message


def test_verification_runs_once_per_shard_version(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_DENSE_CACHE", str(tmp_path / "cache"))
    convert_shapes(str(tmp_path / "s"), 6, size=32, num_shards=2, progress=False)
    pattern = str(tmp_path / "s-*")
    opened = []
    real_open = tfrecord_files._open

    def counting_open(path):
        opened.append(os.path.basename(path))
        return real_open(path)

    monkeypatch.setattr(tfrecord_files, "_open", counting_open)
    segmentation_dataset(pattern, 2)
    assert len(opened) == 4  # framing walk + SHA-256 of each of the two shards
    opened.clear()
    segmentation_dataset(pattern, 2, training=True, crop_size=16)
    segmentation_dataset(pattern, 2)
    assert opened == [], "a verified, unchanged shard must not be read again"
    assert len(os.listdir(tmp_path / "cache" / "verified")) == 2
    # Same size, new bytes, new modification time: checked again and named.
    shard = tmp_path / "s-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = shard.stat()
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(BadInputError, match="s-00001-of-00002.tfrecord: SHA-256 differs"):
        segmentation_dataset(pattern, 2)
    assert opened == ["s-00001-of-00002.tfrecord"] * 2
    # Restored, it passes (checked again); then a manifest edited after the check is
    # compared with the remembered digest, without reading the shard.
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    segmentation_dataset(pattern, 2)
    manifest = tmp_path / "s.json"
    content = json.loads(manifest.read_text())
    content["shards"][0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(content))
    opened.clear()
    with pytest.raises(BadInputError, match="s-00000-of-00002.tfrecord: SHA-256 differs"):
        segmentation_dataset(pattern, 2)
    assert opened == []


def test_remote_shards_are_not_read_up_front(monkeypatch):
    assert tfrecord_files.is_remote("gs://bucket/train-00000-of-00001.tfrecord")
    assert tfrecord_files.is_remote("s3://b/x") and tfrecord_files.is_remote("hdfs://n/x")
    assert not tfrecord_files.is_remote("/data/x.tfrecord")
    assert not tfrecord_files.is_remote("file:///data/x.tfrecord")
    monkeypatch.setattr(tfrecord_files, "_open", lambda path: pytest.fail(f"read {path}"))
    tfrecord_files.check_files(["gs://bucket/train-00000-of-00001.tfrecord"])


def test_read_stage_refuses_exclude_with_filenames(tmp_path):
    from keras_dense.data.record_stage import read_stage

    convert_shapes(str(tmp_path / "s"), 2, size=32, progress=False)
    pattern = str(tmp_path / "s-*")
    with pytest.raises(ValueError, match="exclude= needs with_filenames=False"):
        read_stage(pattern, False, 8, False, True, 0, True, with_filenames=True, exclude=[1])
    records = list(read_stage(pattern, False, 8, False, True, 0, True, with_filenames=True))
    assert len(records) == 2 and all(str(f.numpy()).endswith(".tfrecord'") for f, _ in records)
