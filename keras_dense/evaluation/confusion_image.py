"""Drawing a confusion matrix as an image with OpenCV (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def confusion_matrix_image(
    cm: np.ndarray, class_names: Sequence[str], cell: int | None = None, title: str = ""
) -> np.ndarray:
    """Renders a row-normalised confusion matrix as an RGB image.

    Each cell's shade is the share of the true class's pixels (row) predicted as the column's
    class, from white (0) to dark blue (1); cells show that share in percent when they are
    large enough to hold the text. Rows are true classes, columns predictions.

    Args:
        cm: (C, C) counts.
        class_names: The C class names.
        cell: Cell size in pixels (default: from the class count, 12 to 48).
        title: Optional caption drawn at the top.

    Returns:
        (H, W, 3) uint8 RGB image.

    Raises:
        ValueError: `cm` is not square or does not match `class_names`.
    """
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(
            f"cm {cm.shape} and {len(class_names)} class names: expected a square C x C "
            "matrix with one name per class"
        )
    classes = cm.shape[0]
    if cell is None:
        cell = int(np.clip(640 // max(classes, 1), 12, 48))
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    scale = 0.4
    label_width = max(cv2.getTextSize(n, _FONT, scale, 1)[0][0] for n in class_names) + 10
    top = label_width + (24 if title else 4)
    left = label_width
    size = classes * cell
    caption = "rows: truth, columns: prediction (% of the row)"
    width = max(left + size + 10, cv2.getTextSize(caption, _FONT, 0.35, 1)[0][0] + 8)
    if title:
        width = max(width, cv2.getTextSize(title, _FONT, 0.45, 1)[0][0] + 8)
    image = np.full((top + size + 20, width, 3), 255, np.uint8)
    if title:
        cv2.putText(image, title, (4, 16), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for t in range(classes):
        for p in range(classes):
            value = share[t, p]
            # White -> dark blue (RGB).
            colour = tuple(
                int(round(c)) for c in (255 - 225 * value, 255 - 190 * value, 255 - 80 * value)
            )
            y0, x0 = top + t * cell, left + p * cell
            cv2.rectangle(image, (x0, y0), (x0 + cell - 1, y0 + cell - 1), colour, -1)
            if cell >= 28 and rows[t, 0] > 0:
                text = f"{100 * value:.0f}"
                ink = (255, 255, 255) if value > 0.5 else (0, 0, 0)
                (w, h), _ = cv2.getTextSize(text, _FONT, 0.35, 1)
                origin = (x0 + (cell - w) // 2, y0 + (cell + h) // 2)
                cv2.putText(image, text, origin, _FONT, 0.35, ink, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (left + size, top + size), (0, 0, 0), 1)
    for i, name in enumerate(class_names):
        (w, h), _ = cv2.getTextSize(name, _FONT, scale, 1)
        y = top + i * cell + (cell + h) // 2
        cv2.putText(image, name, (left - w - 5, y), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        # Column labels, written vertically: draw on a strip and rotate it.
        strip = np.full((h + 6, w + 4, 3), 255, np.uint8)
        cv2.putText(strip, name, (2, h + 2), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
        x = left + i * cell + (cell - strip.shape[1]) // 2
        y0 = top - strip.shape[0] - 2
        x, y0 = max(x, 0), max(y0, 0)
        region = image[y0 : y0 + strip.shape[0], x : x + strip.shape[1]]
        image[y0 : y0 + strip.shape[0], x : x + strip.shape[1]] = strip[
            : region.shape[0], : region.shape[1]
        ]
    cv2.putText(image, caption, (4, top + size + 14), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return image
