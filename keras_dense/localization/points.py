"""Points from class maps: each map's peak (the pointing game's prediction).

Points are `(y, x)` pixel indices of the maps.
"""

from __future__ import annotations

import numpy as np

from keras_dense.localization.arrays import as_maps


def points_from_maps(maps) -> np.ndarray:
    """The location of each class map's maximum (the first one in row-major order on ties).

    Args:
        maps: `(B, H, W, C)` class maps.

    Returns:
        int64 `(B, C, 2)` points `(y, x)` in pixels of the maps.
    """
    maps = as_maps(maps)
    b, h, w, c = maps.shape
    flat = maps.reshape(b, h * w, c)
    index = np.argmax(flat, axis=1)  # (B, C)
    return np.stack([index // w, index % w], axis=-1).astype(np.int64)
