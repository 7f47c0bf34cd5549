"""Localisation without boxes: class maps of classifiers, and points and boxes from them.

- `class_maps`: the `class_maps` layer of a `keras_dense.apps.wsl_classifier`, averaged per
  class, at the input resolution (bilinear) or the feature resolution.
- `augmented_class_maps`: `class_maps` averaged over test-time scales and left-right flips,
  each resized back to the image (a finer, less biased peak for the pointing game).
- `class_activation_maps`: Zhou et al.'s CAM (CVPR 2016) for any Keras classifier that ends
  `GlobalAveragePooling2D -> Dense`: the map of class `c` is `sum_k w_kc f_k` over the
  features `f` that enter the global average pooling.
- `points_from_maps`: the peak of each class map (the pointing game's prediction).
- `boxes_from_maps`: the box of the largest connected region above a fraction of each map's
  maximum (the CAM paper's localisation).

Maps are NumPy arrays `(B, H, W, C)`. Points are `(y, x)` pixel indices; boxes are
`[ymin, xmin, ymax, xmax]` in pixels with inclusive ends, the convention of
`keras_dense.detection.boxes` (a one-pixel region is the box `[y, x, y, x]`).
"""

from __future__ import annotations

import cv2
import keras
import numpy as np

from keras_dense.layers.walk import iter_layers
from keras_dense.layers.wsl_pooling import ClassWisePooling2D
from keras_dense.signatures.memory_budget import (
    SAFETY_FACTOR,
    activation_bytes,
    serving_bytes_per_pixel,
)
from keras_dense.utils.tta import TestTimeAugmentation, scaled_size

CLASS_MAPS_LAYER = "class_maps"
# Layers that may follow the CAM's Dense layer (its pre-activation logits are what CAM splits).
_OUTPUT_ACTIVATIONS = (keras.layers.Activation, keras.layers.Softmax)
# Layers between the global average pooling and the Dense layer that are identities at
# inference.
_INFERENCE_IDENTITIES = (keras.layers.Dropout,)


def _as_images(images) -> np.ndarray:
    images = np.asarray(keras.ops.convert_to_numpy(images))
    if images.ndim != 4:
        raise ValueError(
            f"images must be a batch (batch, height, width, channels), got the shape {images.shape}"
        )
    return images


def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    resized = keras.ops.image.resize(
        maps.astype(np.float32), size, interpolation="bilinear", data_format="channels_last"
    )
    return np.asarray(keras.ops.convert_to_numpy(resized), np.float32)


def _single_input(model: keras.Model):
    """The model's input tensor when it has one (so that a probe takes a plain array)."""
    inputs = list(model.inputs)
    return inputs[0] if len(inputs) == 1 else inputs


def _producers(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """`id(output tensor) -> layer` over the model's own layers (first call of each)."""
    found = {}
    for layer in model.layers:
        try:
            outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        for tensor in outputs:
            found[id(tensor)] = layer
    return found


def check_finite(values: np.ndarray, model: keras.Model, what: str) -> None:
    """Refuses a model's outputs that are not finite (a diverged model's NaN weights).

    Read as they are, NaN scores still rank (an mAP comes out), NaN maps never claim a pixel
    and a NaN score is written into JSON as the invalid `NaN`.

    Raises:
        ValueError: Naming the model, what was computed and how many values are not finite.
    """
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(
            f"model {model.name!r}: {bad} of its {what} are not finite (NaN or inf): its "
            "weights are likely not finite (a diverged training); use another checkpoint"
        )


def class_maps(model: keras.Model, images, upsample: bool = True) -> np.ndarray:
    """The class maps of a weakly supervised classifier (`keras_dense.apps.wsl_classifier`).

    Reads the output of the layer named `class_maps` (the 1x1 convolution before the spatial
    pooling, found with `keras_dense.layers.walk.iter_layers`). When a `ClassWisePooling2D`
    layer follows it (`maps_per_class > 1` or WILDCAT), each class's maps are averaged as
    that layer does, so that there is one map per class.

    Args:
        model: The classifier; its `class_maps` layer must be in its own graph (not in a
            nested model).
        images: `(B, H, W, 3)` images, preprocessed as for the classifier.
        upsample: Resize the maps bilinearly to `(H, W)`; `False` keeps the feature resolution
            `(h, w)`.

    Returns:
        float32 maps `(B, H, W, C)` (or `(B, h, w, C)`).

    Raises:
        ValueError: The model has no `class_maps` layer, images are not a batch, or the maps
            are not finite (`check_finite`).
    """
    images = _as_images(images)
    layer = next((item for item in iter_layers(model) if item.name == CLASS_MAPS_LAYER), None)
    if layer is None:
        raise ValueError(
            f"model {model.name!r} has no layer named {CLASS_MAPS_LAYER!r}: expected a "
            "keras_dense.apps.wsl_classifier (use class_activation_maps for a GAP -> Dense "
            "classifier)"
        )
    maps_per_class = 1
    for candidate in model.layers:
        if isinstance(candidate, ClassWisePooling2D) and candidate.input is layer.output:
            maps_per_class = candidate.maps_per_class
    probe = keras.Model(_single_input(model), layer.output)
    maps = np.asarray(keras.ops.convert_to_numpy(probe(images, training=False)), np.float32)
    check_finite(maps, model, "class maps")
    if maps_per_class > 1:
        b, h, w, channels = maps.shape
        maps = maps.reshape(b, h, w, channels // maps_per_class, maps_per_class).mean(axis=-1)
    return _resize(maps, images.shape[1:3]) if upsample else maps


def augmented_class_maps(
    model: keras.Model, images, tta: TestTimeAugmentation | None = None
) -> np.ndarray:
    """`class_maps` averaged over test-time scales and left-right flips, at the image size.

    Each scale `s` resizes the images bilinearly (half-pixel centres) to
    `keras_dense.utils.tta.scaled_size` of each side, reads their class maps at that size,
    un-mirrors the flipped pass and resizes the maps back to `(H, W)`; the maps of the
    `tta.passes` passes are averaged. Upscaling the input (`s > 1`) samples the maps more
    finely (output stride `stride / s` in the image's pixels) and enlarges small objects
    relative to the receptive field; the flip cancels a left-right bias of the learned maps.
    With the default (one plain pass) this is `class_maps(model, images)`.

    Args:
        model: A `keras_dense.apps.wsl_classifier` (see `class_maps`).
        images: `(B, H, W, 3)` images, preprocessed as for the classifier.
        tta: The scales and flip (`keras_dense.utils.tta.parse_tta`); None: one plain pass.

    Returns:
        float32 maps `(B, H, W, C)`.

    Raises:
        ValueError: As `class_maps`.
    """
    images = _as_images(images)
    tta = tta or TestTimeAugmentation()
    height, width = images.shape[1:3]
    total = None
    for scale in tta.scales:
        size = (scaled_size(height, scale), scaled_size(width, scale))
        scaled = images if size == (height, width) else _resize(images, size)
        for mirrored in (False, True) if tta.flip else (False,):
            maps = class_maps(model, scaled[:, :, ::-1] if mirrored else scaled)
            if mirrored:
                maps = maps[:, :, ::-1]
            if size != (height, width):
                maps = _resize(np.ascontiguousarray(maps), (height, width))
            total = maps if total is None else total + maps
    return (total / tta.passes).astype(np.float32)


def class_map_bytes_per_pixel(model: keras.Model, tta: TestTimeAugmentation | None = None) -> float:
    """Memory per image pixel of a classifier's scores and class maps at the image size.

    The model's activations grow with the image (measured on symbolic inputs, as the export
    measures them: `keras_dense.signatures.memory_budget.activation_bytes` at two sizes);
    besides them the image (uint8 and float32), the maps at the image size, their sum over
    the test-time passes and the pseudo-label arrays are held, all times `SAFETY_FACTOR`.
    Test-time passes run one after the other, so the largest scale `s` sets the peak
    (`s ** 2` times the pixels).

    Args:
        model: A `keras_dense.apps.wsl_classifier` (3-channel input).
        tta: The test-time scales (None: the plain image).

    Returns:
        Bytes per input pixel.
    """
    sizes = (64, 128)
    used = [activation_bytes(model, size, size, 3) for size in sizes]
    slope = (used[1] - used[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
    num_classes = int(model.outputs[0].shape[-1])
    per_pixel = SAFETY_FACTOR * (slope + serving_bytes_per_pixel(3, 0) + 4 * 4 * num_classes)
    if tta is not None and tta.enabled:
        per_pixel *= max(1.0, max(tta.scales) ** 2)
    return float(per_pixel)


def _memory_text(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def class_map_memory_problem(
    model: keras.Model,
    height: int,
    width: int,
    max_memory: int,
    tta: TestTimeAugmentation | None = None,
) -> str | None:
    """Why an image is too large for a memory budget (`class_map_bytes_per_pixel`), or None.

    A classifier's maps cannot be computed tile by tile without changing them (the pooled
    scores that normalise them see the whole image), so an image over the budget is refused.

    Args:
        model: The classifier.
        height: The image height.
        width: The image width.
        max_memory: Bytes one image may take.
        tta: The test-time scales.
    """
    needed = height * width * class_map_bytes_per_pixel(model, tta)
    if needed <= max_memory:
        return None
    return (
        f"a {width}x{height} image needs about {_memory_text(needed)} for the classifier's "
        f"scores and class maps, above the --max-memory budget of {_memory_text(max_memory)}; "
        "raise --max-memory or downscale the image"
    )


def check_classifier_records(
    model: keras.Model,
    pattern,
    classes,
    offset: int,
    ignore_label: int = 255,
    max_memory: int | None = None,
    tta: TestTimeAugmentation | None = None,
    require_masks: bool = False,
    what: str | None = None,
):
    """Checks the records a classifier is about to read, and their largest image's memory.

    Every record is checked once (`keras_dense.data.classification_records`), so that a bad
    field is named (shard, record, source_id, field) before the model runs instead of being
    dropped or failing in the graph; then the largest image must fit `max_memory`.

    Args:
        model: The classifier.
        pattern: The shards.
        classes: The classifier's class names (its card's; box class texts are compared with
            them), or their number (texts not compared).
        offset: Mask id of class 0 (`keras_dense.data.classification_pipeline.mask_offset`).
        ignore_label: The masks' ignore label.
        max_memory: Bytes one image may take (None: not checked).
        tta: The test-time scales the maps are computed at.
        require_masks: Every record must have a class mask.
        what: Where the shards come from, for the messages (default `--data PATTERN`).

    Returns:
        The `ClassificationReport`.

    Raises:
        keras_dense.data.BadInputError: A bad record, no records, or an image over the budget.
    """
    from keras_dense.data.classification_records import (
        ClassificationRules,
        check_classification_records,
    )
    from keras_dense.data.errors import BadInputError

    names = None if isinstance(classes, int) else tuple(classes)
    count = classes if names is None else len(names)
    rules = ClassificationRules(count, int(offset), int(ignore_label), names, require_masks)
    if what is None:
        what = f"--data {pattern if isinstance(pattern, str) else ', '.join(pattern)}"
    report = check_classification_records(pattern, rules, what)
    largest = report.largest
    if max_memory is not None and largest is not None:
        problem = class_map_memory_problem(
            model, largest["height"], largest["width"], max_memory, tta
        )
        if problem:
            raise BadInputError(largest["location"], problem)
    return report


def _cam_layers(classifier: keras.Model):
    """The classifier's final `(GlobalAveragePooling2D, Dense)` pair, or a ValueError."""
    expected = (
        "class_activation_maps needs a classifier whose single output is "
        "GlobalAveragePooling2D -> [Dropout] -> Dense -> [Activation/Softmax]"
    )
    outputs = keras.tree.flatten(classifier.outputs)
    if len(outputs) != 1:
        raise ValueError(f"{expected}; {classifier.name!r} has {len(outputs)} outputs")
    producers = _producers(classifier)
    layer = producers.get(id(outputs[0]))
    while isinstance(layer, _OUTPUT_ACTIVATIONS):
        layer = producers.get(id(layer.input))
    if not isinstance(layer, keras.layers.Dense):
        found = type(layer).__name__ if layer is not None else "nothing"
        raise ValueError(f"{expected}; the output comes from {found} (not a Dense layer)")
    dense = layer
    layer = producers.get(id(dense.input))
    while isinstance(layer, _INFERENCE_IDENTITIES):
        layer = producers.get(id(layer.input))
    if not isinstance(layer, keras.layers.GlobalAveragePooling2D) or layer.keepdims:
        found = type(layer).__name__ if layer is not None else "the model input"
        raise ValueError(
            f"{expected}; the Dense layer {dense.name!r} is fed by {found} (expected a "
            "GlobalAveragePooling2D with keepdims=False)"
        )
    if layer.data_format != "channels_last":
        raise ValueError(f"{expected}; {layer.name!r} must be channels_last")
    return layer, dense


def class_activation_maps(classifier: keras.Model, images, upsample: bool = True) -> np.ndarray:
    """Class activation maps (Zhou et al., CVPR 2016) of a GAP -> Dense classifier.

    With `f_k` the `K` feature maps that enter the final `GlobalAveragePooling2D` and `w_kc`
    the kernel of the `Dense` layer after it, the map of class `c` is `sum_k w_kc f_k(x, y)`.
    Since the pooling is a mean, at the feature resolution (`upsample=False`) the mean of each
    map plus the Dense bias `b_c` is exactly the class's pre-activation logit (up to float
    rounding), whatever activation follows (the Dense layer's own, e.g. keras.applications'
    softmax, or a separate `Activation` / `Softmax` layer). The layers are found by walking
    back from the output (`model.layers`, `layer.input`, `layer.output`); `Dropout` between
    the pooling and the Dense layer is skipped (an identity at inference).

    Args:
        classifier: A Keras classifier ending `GlobalAveragePooling2D -> Dense`, such as
            `keras.applications.ResNet50()`.
        images: `(B, H, W, 3)` images, preprocessed as for the classifier.
        upsample: Resize the maps bilinearly to `(H, W)`; `False` keeps the feature resolution.

    Returns:
        float32 maps `(B, H, W, C)` (or `(B, h, w, C)`), without the bias.

    Raises:
        ValueError: The classifier does not end `GlobalAveragePooling2D -> Dense` (the message
            names what was found), or images are not a batch.
    """
    images = _as_images(images)
    pooling, dense = _cam_layers(classifier)
    features_model = keras.Model(_single_input(classifier), pooling.input)
    features = np.asarray(keras.ops.convert_to_numpy(features_model(images, training=False)))
    kernel = np.asarray(keras.ops.convert_to_numpy(dense.kernel), np.float64)
    maps = np.einsum("bhwk,kc->bhwc", features.astype(np.float64), kernel).astype(np.float32)
    return _resize(maps, images.shape[1:3]) if upsample else maps


def _as_maps(maps) -> np.ndarray:
    maps = np.asarray(keras.ops.convert_to_numpy(maps))
    if maps.ndim != 4:
        raise ValueError(
            f"maps must be (batch, height, width, classes), got the shape {maps.shape}"
        )
    return maps


def points_from_maps(maps) -> np.ndarray:
    """The location of each class map's maximum (the first one in row-major order on ties).

    Args:
        maps: `(B, H, W, C)` class maps.

    Returns:
        int64 `(B, C, 2)` points `(y, x)` in pixels of the maps.
    """
    maps = _as_maps(maps)
    b, h, w, c = maps.shape
    flat = maps.reshape(b, h * w, c)
    index = np.argmax(flat, axis=1)  # (B, C)
    return np.stack([index // w, index % w], axis=-1).astype(np.int64)


def boxes_from_maps(maps, threshold: float = 0.2) -> np.ndarray:
    """Boxes of the largest region of each class map above `threshold` times its maximum.

    As in the CAM paper: the pixels with `map >= threshold * max(map)` are split into
    8-connected regions (OpenCV's `connectedComponentsWithStats`, one call per map) and the
    box of the region with the most pixels is kept (the first one found on ties). A map whose
    maximum is not positive has no such region; its box is the single pixel of its maximum.

    Args:
        maps: `(B, H, W, C)` class maps (e.g. `class_maps(..., upsample=True)`).
        threshold: The fraction of the maximum, in [0, 1] (0.2 in the CAM paper).

    Returns:
        int64 `(B, C, 4)` boxes `[ymin, xmin, ymax, xmax]`, inclusive pixel indices (the
        convention of `keras_dense.detection.boxes`).

    Raises:
        ValueError: `threshold` is not in [0, 1].
    """
    if isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    maps = _as_maps(maps).astype(np.float64)
    peaks = points_from_maps(maps)
    boxes = np.concatenate([peaks, peaks], axis=-1)  # single-pixel fallback
    top = maps.max(axis=(1, 2))  # (B, C)
    for i, j in zip(*np.nonzero(top > 0)):
        mask = (maps[i, :, :, j] >= threshold * top[i, j]).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count < 2:
            continue
        label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, width, height = (int(v) for v in stats[label, :4])
        boxes[i, j] = (y, x, y + height - 1, x + width - 1)
    return boxes.astype(np.int64)


# ----------------------------------------------------------------------------- pseudo-labels

DEFAULT_BACKGROUND_THRESHOLD = 0.5
# Model card keys of the chosen thresholds (`keras-dense tune-threshold`): for raw and for
# CRF-refined pseudo-labels.
BACKGROUND_THRESHOLD_KEY = "background_threshold"
CRF_BACKGROUND_THRESHOLD_KEY = "background_threshold_crf"


def card_background_threshold(card: dict, crf: bool = False) -> tuple[float, str]:
    """The background threshold a model card gives, and where it came from.

    With `crf`, the card's `background_threshold_crf` (chosen on CRF-refined pseudo-masks)
    comes first; then `background_threshold`; then `DEFAULT_BACKGROUND_THRESHOLD`.

    Args:
        card: The model card.
        crf: Whether the pseudo-labels are refined by the dense CRF.

    Returns:
        `(threshold, "model card KEY" | "default")`.

    Raises:
        ValueError: The card's value is not a number in [0, 1].
    """
    keys = (
        (CRF_BACKGROUND_THRESHOLD_KEY, BACKGROUND_THRESHOLD_KEY)
        if crf
        else (BACKGROUND_THRESHOLD_KEY,)
    )
    for key in keys:
        value = card.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"model card key {key!r}: expected a number in [0, 1], got {value!r}")
        return float(value), f"model card {key}"
    return DEFAULT_BACKGROUND_THRESHOLD, "default"


def normalised_class_maps(maps, labels) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled class's map divided by its image maximum, and which classes may claim.

    Args:
        maps: `(B, H, W, C)` class maps.
        labels: `(B, C)` 0/1 image labels.

    Returns:
        `(normalised (B, H, W, C) float32, allowed (B, C) bool)`: a class is allowed where the
        image is labelled with it and its map's peak is positive (else its map is unchanged).

    Raises:
        ValueError: The shapes disagree.
    """
    maps = _as_maps(maps).astype(np.float32)
    labels = np.asarray(labels)
    if labels.shape != (maps.shape[0], maps.shape[-1]):
        raise ValueError(
            f"labels must be (images, classes) = {(maps.shape[0], maps.shape[-1])}, got "
            f"{labels.shape}"
        )
    peak = maps.max(axis=(1, 2))  # (B, C)
    allowed = (labels > 0) & (peak > 0)  # a class whose map never rises claims nothing
    scale = np.where(allowed, peak, 1.0)[:, None, None, :]
    return maps / scale, allowed


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"background threshold must be in [0, 1], got {threshold!r}")
    return float(threshold)


def pseudo_label_masks(maps, labels, threshold: float = DEFAULT_BACKGROUND_THRESHOLD):
    """Segmentation pseudo-labels from class maps and image-level labels.

    Only the classes an image is labelled with may claim pixels (the others are suppressed,
    as the adaptive bias of weakly supervised segmentation does). Each labelled class's map
    is divided by its maximum over the image; a pixel is background (0) where every labelled
    class is below `threshold` (also where the image has no labelled class, or the labelled
    classes' maps are never positive), else the labelled class with the highest normalised
    map, as id `c + 1`.

    Args:
        maps: `(B, H, W, C)` class maps (e.g. `class_maps(..., upsample=True)`).
        labels: `(B, C)` 0/1 image labels.
        threshold: The fraction of each class's peak below which it claims nothing, in
            [0, 1].

    Returns:
        uint8 `(B, H, W)` masks: 0 background, `c + 1` for class `c`.

    Raises:
        ValueError: Shapes disagree, or the threshold is outside [0, 1].
    """
    threshold = _check_threshold(threshold)
    normalised, allowed = normalised_class_maps(maps, labels)
    scores = np.where(allowed[:, None, None, :], normalised, -np.inf)
    foreground = (scores >= threshold).any(axis=-1)
    return np.where(foreground, np.argmax(scores, axis=-1) + 1, 0).astype(np.uint8)


def pseudo_label_probabilities(maps, labels, threshold: float = DEFAULT_BACKGROUND_THRESHOLD):
    """Class probabilities `(B, H, W, 1 + C)` behind `pseudo_label_masks`, for a dense CRF.

    The unnormalised score of background is `threshold`; that of a labelled class its map
    over its peak, clipped to [0, 1]; absent classes score 0. Each pixel's scores are divided
    by their sum (a small epsilon keeps background and the labelled classes above zero), so
    the argmax is the pseudo-label (ties aside) and the CRF's unary is `-log` of these.

    Args:
        maps: `(B, H, W, C)` class maps.
        labels: `(B, C)` 0/1 image labels.
        threshold: The background score, in [0, 1].

    Returns:
        float32 probabilities summing to 1 over the last axis.
    """
    threshold = _check_threshold(threshold)
    normalised, allowed = normalised_class_maps(maps, labels)
    eps = 1e-3
    classes = np.where(allowed[:, None, None, :], np.clip(normalised, 0.0, 1.0) + eps, 0.0)
    background = np.full(classes.shape[:-1] + (1,), threshold + eps, np.float32)
    scores = np.concatenate([background, classes], axis=-1)
    return (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32)


def crf_pseudo_label_masks(probabilities, images, labels, **crf_parameters) -> np.ndarray:
    """Pseudo-labels refined by `keras_dense.crf.dense_crf`, absent classes still suppressed.

    Args:
        probabilities: `(B, H, W, 1 + C)` from `pseudo_label_probabilities`.
        images: `(B, H, W, 3)` uint8 RGB images.
        labels: `(B, C)` 0/1 image labels.
        **crf_parameters: `dense_crf` keyword arguments (e.g. a model card's).

    Returns:
        uint8 `(B, H, W)` masks.
    """
    from keras_dense.crf import dense_crf

    allowed = np.concatenate([np.ones((len(labels), 1), bool), np.asarray(labels) > 0], axis=-1)[
        :, None, None, :
    ]
    refined = np.stack(
        [dense_crf(p, image, **crf_parameters) for p, image in zip(probabilities, images)]
    )
    return np.argmax(np.where(allowed, refined, -1.0), axis=-1).astype(np.uint8)


class _StreamedRecords:
    """The serialized records of shards, read while iterated; their count known beforehand."""

    def __init__(self, pattern, count: int):
        self.pattern = pattern
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        from keras_dense.data.records_dataset import records_dataset

        return records_dataset(self.pattern, False).as_numpy_iterator()


def write_pseudo_labels(
    model: keras.Model,
    pattern,
    output: str,
    classes,
    normalization: str | None,
    threshold: float = DEFAULT_BACKGROUND_THRESHOLD,
    crf: bool = False,
    crf_parameters: dict | None = None,
    provenance: dict | None = None,
    ignore_label: int = 255,
    num_shards: int = 1,
    progress: bool = True,
    max_memory: int | None = None,
) -> dict:
    """Writes segmentation shards whose masks are a classifier's pseudo-labels.

    Every record of `pattern` is read (any shards the classification task reads: its image
    labels come from its mask, boxes or `image/class/label`), its class maps computed at the
    image's size, and `pseudo_label_masks` (or, with `crf`, `crf_pseudo_label_masks`) written
    as its mask beside the original encoded image. The class list is background + `classes`.

    Args:
        model: A `keras_dense.apps.wsl_classifier`.
        pattern: Input shards.
        output: `DIR/NAME` of the new shards (`keras_dense.data.writer.write_dataset`).
        classes: The classifier's class names (without background).
        normalization: The classifier's input normalisation.
        threshold: Background threshold (fraction of each labelled class's peak).
        crf: Refine with the dense CRF.
        crf_parameters: `dense_crf` keyword arguments (None: DeepLab's defaults).
        provenance: Stored in the manifest's `arguments` (model path, data pattern, ...).
        ignore_label: The input masks' ignore label (when deriving labels from masks).
        num_shards: Output shards.
        progress: Show a progress bar.
        max_memory: Bytes one image's class maps may take (None: not checked).

    Every record is checked first (`check_classifier_records`), and the records are then read
    as they are written (never all held in memory).

    Returns:
        The manifest.

    Raises:
        keras_dense.data.BadInputError: A bad record (named), no records, or an image over
            `max_memory`.
        ValueError: The output would write onto an input shard.
    """
    import tensorflow as tf

    from keras_dense.data.classification_pipeline import (
        decode_optional_mask,
        mask_offset,
        record_labels,
    )
    from keras_dense.data.decode import decode_image
    from keras_dense.data.image_io import encode_png, sniff_format
    from keras_dense.data.schema import Record, parse_serialized
    from keras_dense.data.tfrecord_files import resolve_files
    from keras_dense.data.writer import refuse_overlap, write_dataset
    from keras_dense.utils.normalization import normalize

    threshold = _check_threshold(threshold)
    inputs = resolve_files(pattern)
    refuse_overlap(output, num_shards, inputs)  # before reading: never onto its own input
    classes = list(classes)
    offset = mask_offset(pattern)
    report = check_classifier_records(model, pattern, classes, offset, ignore_label, max_memory)
    serialized = _StreamedRecords(pattern, report.records)

    def make(item) -> Record:
        parsed = parse_serialized(tf.constant(item))
        image = decode_image(parsed["image_bytes"], 3)
        height, width = int(image.shape[0]), int(image.shape[1])
        mask = decode_optional_mask(parsed)
        labels = record_labels(
            parsed, mask, height, width, len(classes), offset, ignore_label
        ).numpy()[None]
        rgb = image.numpy()[None]
        maps = class_maps(model, np.asarray(normalize(tf.constant(rgb), normalization)))
        if crf:
            probabilities = pseudo_label_probabilities(maps, labels, threshold)
            pseudo = crf_pseudo_label_masks(probabilities, rgb, labels, **(crf_parameters or {}))
        else:
            pseudo = pseudo_label_masks(maps, labels, threshold)
        data = parsed["image_bytes"].numpy()
        return Record(
            source_id=parsed["source_id"].numpy().decode(),
            image_bytes=data,
            image_format=sniff_format(data) or "jpeg",
            height=height,
            width=width,
            mask_png=encode_png(pseudo[0]),
        )

    return write_dataset(
        output,
        serialized,
        make,
        item_name=lambda item: "record",
        num_shards=num_shards,
        classes=["background", *classes],
        ignore_label=255,
        task="segmentation",
        arguments={
            "pseudo_label": {
                **(provenance or {}),
                "data": pattern if isinstance(pattern, str) else list(pattern),
                "background_threshold": threshold,
                "crf": bool(crf),
                "crf_parameters": dict(crf_parameters or {}) if crf else None,
            }
        },
        progress=progress,
        read_from=inputs,
    )
