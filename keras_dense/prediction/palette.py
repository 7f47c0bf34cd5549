"""Colouring class masks: the PASCAL VOC palette, overlays and box drawing."""

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


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
) -> np.ndarray:
    """Draws detections on a copy of an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (n, 4) `[ymin, xmin, ymax, xmax]` pixels.
        labels: (n,) 1-based class ids (name = `class_names[label - 1]`).
        scores: (n,) scores.
        class_names: Names of the classes.

    Returns:
        (H, W, 3) uint8 RGB with boxes and captions.
    """
    canvas = np.ascontiguousarray(np.asarray(image, np.uint8).copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for box, label, score in zip(np.asarray(boxes), labels, scores):
        y0, x0, y1, x1 = (int(round(v)) for v in box)
        colour = tuple(int(c) for c in PALETTE[int(label) % 255 or 1])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
        name = class_names[label - 1] if 0 < label <= len(class_names) else f"class {label}"
        caption = f"{name} {float(score):.2f}"
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
