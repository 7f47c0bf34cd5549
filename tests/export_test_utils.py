"""Shared pieces of the export, serving-config and client tests: small models, test images and
NumPy/OpenCV references written independently of keras_dense.export."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np

import keras_dense

# keras.applications' preprocess_input constants, written out again for an independent check.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def small_unet(seed: int = 3, **kwargs) -> keras.Model:
    """A 3-class U-Net with 4 filters and 3 levels (same padding unless overridden)."""
    keras.utils.set_random_seed(seed)
    options = dict(num_classes=3, input_shape=(None, None, 3), padding="same", filters=4, depth=3)
    options.update(kwargs)
    return keras_dense.apps.unet(**options)


def tiny_faster_rcnn(**overrides) -> keras.Model:
    """A two-class Faster R-CNN on the compact backbone, small enough for CPU tests
    (`overrides`: other `faster_rcnn` arguments, e.g. `roi_mode`)."""
    keras.utils.set_random_seed(0)
    options = {
        "num_classes": 2,
        "backbone": "compact",
        "backbone_width": 8,
        "fc_units": 32,
        "rpn_filters": 32,
        "anchor_scales": (32, 64),
        "test_pre_nms_top_n": 50,
        "test_post_nms_top_n": 10,
        "min_size": 8,
        **overrides,
    }
    return keras_dense.apps.faster_rcnn(**options)


def make_image(height: int, width: int, seed: int, grey: bool = False) -> np.ndarray:
    """A smooth random RGB (or grey) uint8 image with some structure."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 1 if grey else 3)).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 2.0)
    image = image.reshape(height, width, -1)
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255.0
    return image.astype(np.uint8)[..., 0] if grey else image.astype(np.uint8)


def encode(image: np.ndarray, fmt: str) -> bytes:
    """JPEG or PNG bytes of an RGB (or grey) uint8 image."""
    bgr = image[..., ::-1] if image.ndim == 3 else image
    ok, data = cv2.imencode(f".{fmt}", np.ascontiguousarray(bgr))
    assert ok
    return data.tobytes()


def decode_rgb(data: bytes) -> np.ndarray:
    """Decodes bytes as a client would, with OpenCV, to RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return bgr[..., ::-1]


def normalize_np(rgb: np.ndarray, mode: str | None) -> np.ndarray:
    """keras.applications-style preprocessing in NumPy."""
    x = rgb.astype(np.float32)
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if mode == "tf":
        return x / 127.5 - 1.0
    return x


def assert_classes_match(got: np.ndarray, scores: np.ndarray, rtol: float = 1e-4) -> None:
    """`got` (H, W) must be the argmax of `scores` (H, W, K) wherever the argmax is clear.

    Pixels whose two best scores differ by less than `rtol` times the largest score may go
    either way (float rounding); exact ties go to the first class on both sides. The reference
    must be informative: a second class on at least 5% of the pixels, few unclear pixels.
    """
    assert got.shape == scores.shape[:2], (got.shape, scores.shape)
    top2 = np.sort(scores, axis=-1)[..., -2:]
    gap = top2[..., 1] - top2[..., 0]
    unclear = (gap > 0) & (gap <= rtol * max(float(np.abs(scores).max()), 1e-6))
    reference = scores.argmax(-1)
    assert unclear.mean() < 0.05
    assert np.sort(np.bincount(reference.ravel()))[-2] >= 0.05 * reference.size
    np.testing.assert_array_equal(got[~unclear], reference[~unclear])


class Reached(Exception):
    """Raised where a command has got past its option checks (the test stops there)."""


def reached(*args, **kwargs):
    """A stand-in for the first step after a command's checks (loading, exporting)."""
    raise Reached


def card_only(tmp_path, task: str) -> str:
    """The path of a model of `task` whose card alone exists: options are checked on the card."""
    card = {"task": task, "normalization": "caffe", "classes": ["circle", "square"]}
    (tmp_path / f"{task}.json").write_text(json.dumps(card))
    return str(tmp_path / f"{task}.keras")
