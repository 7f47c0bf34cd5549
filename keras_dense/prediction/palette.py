"""Colouring class masks: the PASCAL VOC palette, overlays, box and instance drawing."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IGNORE_COLOUR = (224, 224, 192)  # VOC's colour of the "void" label 255


def voc_palette(size: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class id -> RGB.

    Each id's bits are spread over the three channels, most significant bit first (id 1 is
    dark red, 2 dark green, 3 olive, ...); id 0 is black and 255 is VOC's void colour.

    Args:
        size: Number of entries (256).

    Returns:
        (size, 3) uint8 RGB colours.
    """
    palette = np.zeros((size, 3), np.uint8)
    for class_id in range(size):
        value, colour = class_id, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[class_id] = colour
    if size > 255:
        palette[255] = IGNORE_COLOUR
    return palette


PALETTE = voc_palette()


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids (0..255) -> (H, W, 3) uint8 RGB with the VOC palette."""
    return PALETTE[np.clip(np.asarray(mask), 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends the coloured mask over an RGB image; background (id 0) stays untouched.

    Args:
        image: (H, W, 3) uint8 RGB (or (H, W) grey).
        mask: (H, W) class ids.
        alpha: Opacity of the colours.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image = np.asarray(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
    blended = cv2.addWeighted(image.astype(np.uint8), 1.0 - alpha, colorize(mask), alpha, 0.0)
    return np.where((np.asarray(mask) > 0)[..., None], blended, image).astype(np.uint8)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of class id `label` in drawn boxes (its VOC palette entry)."""
    return tuple(int(c) for c in PALETTE[int(label) % 255 or 1])


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float] | None,
    class_names: Sequence[str],
    colours: np.ndarray | None = None,
) -> np.ndarray:
    """Draws detections on a copy of an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (n, 4) `[ymin, xmin, ymax, xmax]` pixels.
        labels: (n,) 1-based class ids (name = `class_names[label - 1]`).
        scores: (n,) scores, or None: captions without a score (ground truth).
        class_names: Names of the classes.
        colours: Optional (n, 3) RGB colour of each box; by default its class's VOC colour.

    Returns:
        (H, W, 3) uint8 RGB with boxes and captions.
    """
    canvas = np.ascontiguousarray(np.asarray(image, np.uint8).copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    if scores is None:
        scores = [None] * len(labels)
    for index, (box, label, score) in enumerate(zip(np.asarray(boxes), labels, scores)):
        y0, x0, y1, x1 = (int(round(v)) for v in box)
        if colours is None:
            colour = class_colour(label)
        else:
            colour = tuple(int(c) for c in colours[index])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
        name = class_names[label - 1] if 0 < label <= len(class_names) else f"class {label}"
        caption = name if score is None else f"{name} {float(score):.2f}"
        (w, h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(y0 - h - base, 0)
        cv2.rectangle(canvas, (x0, top), (x0 + w, top + h + base), colour, -1)
        cv2.putText(
            canvas,
            caption,
            (x0, top + h),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return canvas


def instance_colours(count: int) -> np.ndarray:
    """`count` well separated, saturated RGB colours (hues spaced by the golden angle).

    Returns:
        (count, 3) uint8 RGB.
    """
    hues = (np.arange(count) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)  # OpenCV: 0-179
    hsv = np.stack([hues, np.full(count, 220, np.uint8), np.full(count, 255, np.uint8)], -1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0] if count else np.zeros((0, 3), np.uint8)


def draw_instances(
    image: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    alpha: float = 0.5,
) -> np.ndarray:
    """Draws instance segmentations: each instance's mask blended in its own colour, plus its
    box and caption in that colour.

    Instances are painted in the given order (highest score first from `detect`), so where
    masks overlap the later ones are on top.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (n, H, W) bool (or probabilities, cut at 0.5) instance masks.
        boxes: (n, 4) `[ymin, xmin, ymax, xmax]` pixels.
        labels: (n,) 1-based class ids.
        scores: (n,) scores, or None: captions without a score (ground truth).
        class_names: Names of the classes.
        alpha: Opacity of the mask colours.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ValueError: The masks do not match the image or the boxes.
    """
    canvas = np.asarray(image, np.uint8)
    if canvas.ndim == 2 or canvas.shape[-1] == 1:
        canvas = np.repeat(canvas.reshape(canvas.shape[0], canvas.shape[1], 1), 3, axis=-1)
    masks = np.asarray(masks)
    if masks.dtype != bool:
        masks = masks >= 0.5
    if masks.ndim != 3 or masks.shape[1:] != canvas.shape[:2] or len(masks) != len(boxes):
        raise ValueError(
            f"masks: expected ({len(boxes)}, {canvas.shape[0]}, {canvas.shape[1]}), got "
            f"{masks.shape}"
        )
    colours = instance_colours(len(masks))
    painted = canvas.astype(np.float32)
    for mask, colour in zip(masks, colours):
        painted[mask] = (1.0 - alpha) * painted[mask] + alpha * colour.astype(np.float32)
    painted = np.clip(np.round(painted), 0, 255).astype(np.uint8)
    return draw_boxes(painted, boxes, labels, scores, class_names, colours=colours)
