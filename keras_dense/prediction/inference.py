"""Running a saved model on single images: segmentation scores or detections.

The model card (`X.json` beside `X.keras`, see `keras_dense.utils.model_card`) says how to
feed the model: normalisation, input channels, and for detection the Fast R-CNN scale.
"""

from __future__ import annotations

import os
import weakref
import zipfile

import cv2
import keras
import numpy as np

from keras_dense.data.detection_records import resize_problem
from keras_dense.tiling import DEFAULT_TILE_SIZE, predict_tiled
from keras_dense.utils.normalization import normalize
from keras_dense.utils.output_probe import accepted_output_size
from keras_dense.utils.tta import TestTimeAugmentation, scaled_size

# Images with a side above this are segmented tile by tile (overlap-tile) unless told otherwise.
LARGE_SIDE = 1024
# Bytes one image's prediction may take unless told otherwise (`predict` and `evaluate`
# `--max-memory`).
DEFAULT_MAX_MEMORY = 2 * 1024**3
# The measured memory per pixel of each model (see `model_bytes_per_pixel`).
_BYTES_PER_PIXEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def load_keras_model(path: str) -> keras.Model:
    """Loads `X.keras` in safe mode without compiling it, naming the file on failure.

    Args:
        path: The saved model.

    Returns:
        The model.

    Raises:
        FileNotFoundError: The model file is missing.
        ValueError: The file is not a complete, loadable Keras model.
    """
    import keras_dense.apps  # noqa: F401  (registers the custom layers and models)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model {path}: no such file")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"--model {path}: not a complete .keras archive (truncated or not a Keras file); "
            "expected a file written by model.save() or keras-dense train"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad file
        raise ValueError(f"--model {path}: not a loadable Keras model ({err})") from None


def prepare_image(image: np.ndarray, card: dict) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image as the model's normalised float32 input (H, W, C)."""
    if card.get("input_channels", 3) == 1:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return np.asarray(normalize(image, card.get("normalization")))


def _probe_output(model: keras.Model, size: int, channels: int) -> int | None:
    """The output height for a square input of `size`, or None if the model rejects it."""
    hw = accepted_output_size(model, size, size, channels)
    return None if hw is None else hw[0]


def valid_tile_size(model: keras.Model, card: dict) -> int | None:
    """A tile size for a model whose output is smaller than its input (valid padding).

    Returns None for same-size models. Uses the card's training `input_size` when present,
    else the smallest size from 256 up that the model accepts with an even margin.
    """
    channels = card.get("input_channels", 3)
    fixed = model.inputs[0].shape[1]
    probe = fixed or DEFAULT_TILE_SIZE
    out = _probe_output(model, probe, channels)
    if out == probe:
        return None
    if fixed:
        return fixed
    given = card.get("input_size")
    if given:
        return int(given[0])
    for size in range(probe, probe + 256):
        out = _probe_output(model, size, channels)
        if out is not None and out < size and (size - out) % 2 == 0:
            return size
    raise ValueError("the model's output is smaller than its input and no tile size fits it")


def full_size_bytes_per_pixel(card: dict, num_classes: int) -> int:
    """Memory per pixel that a tiled prediction still holds at the image's full size.

    The decoded uint8 image, its normalised float32 copy, the float32 scores and the uint8
    class map plus its colour rendering.
    """
    channels = card.get("input_channels", 3)
    return 3 + 4 * channels + 4 * num_classes + 1 + 3 + 3


def model_bytes_per_pixel(model: keras.Model) -> float:
    """Memory per input pixel of one pass of a segmenter (`measure_bytes_per_pixel`).

    It depends on the model's layers only, not on the image: it is measured (on symbolic probe
    models) once per model object and kept as long as the model lives.
    """
    from keras_dense.signatures.geometry import segmenter_geometry
    from keras_dense.signatures.memory_budget import measure_bytes_per_pixel

    per_pixel = _BYTES_PER_PIXEL.get(model)
    if per_pixel is None:
        num_classes = int(model.outputs[0].shape[-1])
        per_pixel = measure_bytes_per_pixel(model, segmenter_geometry(model), num_classes)
        _BYTES_PER_PIXEL[model] = per_pixel
    return per_pixel


def plan_prediction(
    model: keras.Model,
    card: dict,
    height: int,
    width: int,
    max_memory: int,
    tta: TestTimeAugmentation | None = None,
):
    """Decides how one image is segmented within a memory budget, before decoding it.

    Args:
        model: The segmenter.
        card: Its model card.
        height: The image height (from its header).
        width: The image width.
        max_memory: Bytes the prediction may use.
        tta: Test-time augmentation: its passes run one after the other, so the largest
            scale s sets the peak (s^2 times the pixels), plus the scaled input and softmax
            and two full-size float32 probability arrays (the sum and the current pass).

    Returns:
        `"whole"` (one pass fits the budget) or `"tiled"` (overlap-tile inference, whose
        memory is one tile batch plus the full-size arrays, fits it).

    Raises:
        ValueError: Even tiled, the image does not fit the budget (the message gives both
            numbers and the flag to raise it).
    """
    pixels = height * width
    num_classes = int(model.outputs[0].shape[-1])
    per_pixel = model_bytes_per_pixel(model)
    extra = 0.0
    if tta is not None and tta.enabled:
        largest = max(tta.scales) ** 2
        channels = card.get("input_channels", 3)
        extra = largest * 4 * (channels + num_classes) + 2 * 4 * num_classes
        per_pixel = per_pixel * max(largest, 1.0)
    if pixels * (per_pixel + extra) <= max_memory:
        return "whole"
    needed = pixels * (full_size_bytes_per_pixel(card, num_classes) + extra)
    if needed <= max_memory:
        return "tiled"
    raise ValueError(
        f"a {width}x{height} image needs about {needed / 2**30:.2f} GiB even tile by tile, "
        f"above the --max-memory budget of {max_memory / 2**30:.2f} GiB; raise --max-memory "
        "or downscale the image"
    )


def segment(
    model: keras.Model,
    image: np.ndarray,
    card: dict,
    tiled: bool | None = None,
    tile_size: int | None = None,
) -> np.ndarray:
    """Per-pixel class scores of one image.

    Args:
        model: A segmenter `(B, H, W, C) -> (B, H', W', K)`.
        image: (H, W, 3) uint8 RGB.
        card: The model card.
        tiled: Overlap-tile inference (`keras_dense.predict_tiled`); None: for images with a
            side above `LARGE_SIDE` and for valid-padding models (whose output is smaller).
        tile_size: Tile size (default: the model's training size for valid models, else 256
            or the training size if larger).

    Returns:
        (H, W, K) float32 scores (logits, or what the model outputs).
    """
    return _scores(model, prepare_image(image, card), card, tiled, tile_size)


def _scores(model, x: np.ndarray, card: dict, tiled: bool | None, tile_size: int | None):
    """`segment` of an already prepared (H, W, C) input."""
    valid_tile = valid_tile_size(model, card)
    if tiled is None:
        tiled = valid_tile is not None or max(x.shape[:2]) > LARGE_SIDE
    if tiled:
        if tile_size is None:
            trained = (card.get("input_size") or [0])[0]
            tile_size = valid_tile or max(DEFAULT_TILE_SIZE, int(trained))
        return np.asarray(predict_tiled(model, x, tile_size=tile_size), np.float32)
    return np.asarray(model.predict_on_batch(x[None]), np.float32)[0]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float32)."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) float array, as `tf.image.resize` (half-pixel centres,
    no antialiasing) does it in the serving graph."""
    import tensorflow as tf

    return tf.image.resize(array, (height, width), method="bilinear").numpy()


def tta_probabilities(
    model: keras.Model,
    x: np.ndarray,
    card: dict,
    tta: TestTimeAugmentation,
    tiled: bool | None = None,
    tile_size: int | None = None,
) -> np.ndarray:
    """Softmax of a prepared (H, W, C) input averaged over the flips and scales of `tta`.

    For each scale s the input is resized (bilinear) to `scaled_size(H, s)` x
    `scaled_size(W, s)`, run as it is and (with `tta.flip`) mirrored left-right; each softmax
    is un-mirrored and resized back to (H, W) (bilinear), and all are averaged.

    Args:
        model: The segmenter (logits out).
        x: The normalised input (`prepare_image`).
        card: The model card.
        tta: The augmentations.
        tiled: As in `segment`, decided per scaled input when None.
        tile_size: As in `segment`.

    Returns:
        (H, W, K) float32 probabilities.
    """
    height, width = x.shape[:2]
    total = None
    for scale in tta.scales:
        size = (scaled_size(height, scale), scaled_size(width, scale))
        scaled = x if size == (height, width) else resize_bilinear(x, *size)
        for flip in (False, True) if tta.flip else (False,):
            inputs = np.ascontiguousarray(scaled[:, ::-1]) if flip else scaled
            probs = softmax(_scores(model, inputs, card, tiled, tile_size))
            if flip:
                probs = probs[:, ::-1]
            if size != (height, width):
                probs = resize_bilinear(probs, height, width)
            total = probs if total is None else total + probs
    return (total / tta.passes).astype(np.float32)


def segment_probabilities(
    model: keras.Model,
    image: np.ndarray,
    card: dict,
    tta: TestTimeAugmentation | None = None,
    tiled: bool | None = None,
    tile_size: int | None = None,
) -> np.ndarray:
    """Per-pixel class probabilities of one image, with optional test-time augmentation.

    Args:
        model: A segmenter whose outputs are logits.
        image: (H, W, 3) uint8 RGB.
        card: The model card.
        tta: Flip and scales (see `tta_probabilities`); None: the softmax of `segment`.
        tiled: As in `segment`.
        tile_size: As in `segment`.

    Returns:
        (H, W, K) float32 probabilities.
    """
    x = prepare_image(image, card)
    if tta is None or not tta.enabled:
        return softmax(_scores(model, x, card, tiled, tile_size))
    return tta_probabilities(model, x, card, tta, tiled, tile_size)


def fast_rcnn_resize(image: np.ndarray, min_size: int, max_size: int):
    """Resizes so the shorter side is `min_size` and the longer at most `max_size`.

    Returns:
        `(resized image, scale)`.

    Raises:
        ValueError: The image is so elongated that its resized shorter side would fall below
            the detector's minimum side (`detection_records.MIN_RESIZED_SIDE`, its feature
            stride): the detector would see no feature row and return nothing.
    """
    height, width = image.shape[:2]
    problem = resize_problem(height, width, min_size, max_size)
    if problem:
        raise ValueError(problem)
    scale = min(min_size / min(height, width), max_size / max(height, width))
    size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), scale


def detect_objects(
    model: keras.Model,
    image: np.ndarray,
    card: dict,
    proposals: np.ndarray | None = None,
    score_threshold: float = 0.05,
) -> dict:
    """Fast or Faster R-CNN detections of one image, in the image's pixels.

    Args:
        model: A Fast R-CNN model (`keras_dense.apps.fast_rcnn`) or a Faster R-CNN model
            (`keras_dense.apps.faster_rcnn`, which proposes its own regions: `proposals`
            is not used).
        image: (H, W, 3) uint8 RGB.
        card: The model card (`min_size`, `max_size`, `normalization`).
        proposals: (n, 4) yxyx pixel proposals of `image`; None runs selective search
            (Fast R-CNN).
        score_threshold: Lowest score kept.

    Returns:
        `{"boxes": (n, 4) yxyx pixels, "scores": (n,), "labels": (n,) 1-based}`.

    Raises:
        ValueError: The image is too elongated for the detector (see `fast_rcnn_resize`).
    """
    return detect_objects_batch(
        model,
        np.asarray(image)[None],
        card,
        score_threshold,
        proposals=None if proposals is None else [proposals],
    )[0]


def detect_objects_batch(
    model: keras.Model,
    images: np.ndarray,
    card: dict,
    score_threshold: float = 0.05,
    proposals: list | None = None,
) -> list[dict]:
    """`detect_objects` on images of one shape in one model call (Fast R-CNN's proposals
    padded to the longest list and counted per image).

    Args:
        model: A Fast or Faster R-CNN model.
        images: (n, H, W, 3) uint8 RGB.
        card: The model card.
        score_threshold: Lowest score kept.
        proposals: Fast R-CNN: one (m, 4) yxyx pixel array per image; None runs selective
            search on each.

    Returns:
        One `{"boxes", "scores", "labels"}` per image, as `detect_objects` gives them.
    """
    from keras_dense.detection import detect, proposes_regions, selective_search

    sizes = (card.get("min_size", 600), card.get("max_size", 1000))
    resized = [fast_rcnn_resize(image, *sizes) for image in images]
    scale = resized[0][1]
    x = np.stack([np.asarray(normalize(r, card.get("normalization"))) for r, _ in resized])
    if proposes_regions(model):
        out = detect(model, x, score_threshold=score_threshold, scale=[scale] * len(x))
    else:
        lists = []
        for index, image in enumerate(images):
            found = selective_search(image) if proposals is None else proposals[index]
            found = np.asarray(found, np.float32).reshape(-1, 4)
            if len(found) == 0:
                height, width = image.shape[:2]
                found = np.array([[0, 0, height - 1, width - 1]], np.float32)
            lists.append(found)
        counts = np.array([len(p) for p in lists], np.int32)
        padded = np.stack([np.pad(p, ((0, counts.max() - len(p)), (0, 0)), "edge") for p in lists])
        out = detect(
            model, x, padded * scale, score_threshold=score_threshold, num_proposals=counts
        )
    numbers = np.asarray(out["num_detections"])
    return [
        {
            "boxes": np.asarray(out["boxes"][i, : numbers[i]]) / scale,
            "scores": np.asarray(out["scores"][i, : numbers[i]]),
            "labels": np.asarray(out["classes"][i, : numbers[i]]),
        }
        for i in range(len(x))
    ]


def detect_objects_sliced(
    model: keras.Model,
    image: np.ndarray,
    card: dict,
    tile: int = 512,
    overlap: float = 0.2,
    full_image: bool = True,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    merge: str = "nms",
    max_memory: int | None = None,
) -> dict:
    """`detect_objects` on overlapping tiles of a large image, merged back
    (`keras_dense.detection.detect_sliced`): small objects are seen at full resolution.

    Each tile (and, with `full_image`, the whole image shrunk to one tile) goes through
    `detect_objects`, i.e. the card's resizing and normalisation: one tile at a time, or
    with `max_memory` as many per call as the budget holds
    (`keras_dense.prediction.detection_memory`). The detections are the same either way.

    Returns:
        `{"boxes": (n, 4) yxyx pixels, "scores": (n,), "labels": (n,) 1-based}`.

    Raises:
        ValueError: `max_memory` too small for one tile (named).
    """
    from keras_dense.detection import detect_sliced
    from keras_dense.prediction.detection_memory import tiles_per_call

    batch_size = 1
    if max_memory is not None:
        height, width = (min(side, tile) for side in np.asarray(image).shape[:2])
        sizes = (card.get("min_size", 600), card.get("max_size", 1000))
        resized = fast_rcnn_resize(np.zeros((height, width, 3), np.uint8), *sizes)[0]
        batch_size = tiles_per_call(model, *resized.shape[:2], max_memory)
    return detect_sliced(
        lambda rgb: detect_objects(model, rgb, card, score_threshold=score_threshold),
        image,
        tile=tile,
        overlap=overlap,
        full_image=full_image,
        nms_iou=nms_iou,
        merge=merge,
        batch_detector=lambda tiles: detect_objects_batch(model, tiles, card, score_threshold),
        batch_size=batch_size,
    )
