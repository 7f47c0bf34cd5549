"""Test-time augmentation settings: horizontal flip and scales (DeepLab's evaluation).

The image is run at every scale, and with `flip` also mirrored left-right; each softmax is
resized back to the image's size (bilinear) and un-mirrored, and the probabilities are
averaged. `keras_dense.prediction.inference.segment_probabilities` does it in NumPy/Keras,
`keras_dense.signatures.segmentation_signatures` inside the serving graph; both compute the
scaled size with `scaled_size`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TTA_MODES = ("none", "flip")


@dataclasses.dataclass(frozen=True)
class TestTimeAugmentation:
    """What test-time augmentation runs.

    Attributes:
        flip: Also run each scale mirrored left-right.
        scales: Image scales (1.0 = the image as it is).
    """

    __test__ = False  # not a pytest test class

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        scales = tuple(float(s) for s in self.scales)
        if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales={self.scales!r}: expected one or more positive numbers")
        object.__setattr__(self, "scales", scales)

    @property
    def enabled(self) -> bool:
        """Whether anything but the single plain pass runs."""
        return self.flip or self.scales != (1.0,)

    @property
    def passes(self) -> int:
        """Model runs per image."""
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def pixel_factor(self) -> float:
        """Input pixels of all the passes over the image's pixels: `sum(s^2)` (x2 with flip).

        The serving graph's passes are independent, so TensorFlow may run them at once: the
        export multiplies its measured bytes per pixel by this factor.
        """
        return float(sum(s * s for s in self.scales)) * (2 if self.flip else 1)

    def to_json(self) -> dict:
        """`{"flip": bool, "scales": [...]}` for model cards and reports."""
        return {"flip": self.flip, "scales": list(self.scales)}


def parse_tta(mode: str | None = "none", scales: str | None = None) -> TestTimeAugmentation:
    """The settings of the `--tta` and `--scales` command-line options.

    Args:
        mode: "none" or "flip".
        scales: Comma-separated positive numbers such as "0.75,1,1.25"; None for "1".

    Returns:
        The `TestTimeAugmentation`.

    Raises:
        ValueError: An unknown mode or a bad scale list (the option is named).
    """
    mode = mode or "none"
    if mode not in TTA_MODES:
        raise ValueError(f"--tta {mode!r}: expected one of {TTA_MODES}")
    values = (1.0,)
    if scales is not None:
        try:
            values = tuple(float(part) for part in str(scales).split(","))
        except ValueError:
            values = ()
        if not values or not all(np.isfinite(s) and s > 0 for s in values):
            raise ValueError(
                f"--scales {scales!r}: expected comma-separated positive numbers, e.g. 0.75,1,1.25"
            )
    return TestTimeAugmentation(flip=mode == "flip", scales=values)


def scaled_size(size: int, scale: float) -> int:
    """`max(1, floor(size * scale + 0.5))` in float32, as the serving graph computes it."""
    value = np.floor(np.float32(size) * np.float32(scale) + np.float32(0.5))
    return max(1, int(value))
