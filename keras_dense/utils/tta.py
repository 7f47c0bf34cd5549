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
# Allowed image scales. Below 1/4 a 512-pixel image shrinks under 128 pixels, four units of a
# stride-32 network: the prediction is a few blurred cells (at 1e-9, one pixel and a constant
# class). Above 4 every pass holds 16x the image's pixels, beyond DeepLab's 0.5-1.75 and any
# memory budget for ordinary photos.
MIN_SCALE = 0.25
MAX_SCALE = 4.0


def check_scales(values: tuple[float, ...], argument: str, texts: list[str] | None = None):
    """Raises ValueError unless `values` holds one or more scales in [MIN_SCALE, MAX_SCALE].

    Args:
        values: The scales.
        argument: The argument and its value as the message names it, e.g. `--scales '0,1'`.
        texts: How each value was written (default: the number itself).

    Raises:
        ValueError: No value, or one outside the range (or NaN), which is named.
    """
    for index, value in enumerate(values):
        if not (np.isfinite(value) and MIN_SCALE <= value <= MAX_SCALE):
            shown = repr(texts[index]) if texts else f"{value:g}"
            got = f"; {shown} is outside"
            break
    else:
        if values:
            return
        got = ""
    raise ValueError(
        f"{argument}: expected one or more numbers in the range [{MIN_SCALE:g}, "
        f"{MAX_SCALE:g}], e.g. 0.75,1,1.25{got}"
    )


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
        check_scales(scales, f"scales={self.scales!r}")
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
        """Input pixels of all the passes over the image's pixels, `sum(s^2)` (x2 with flip),
        and at least 1.

        The serving graph's passes are independent, so TensorFlow may run them at once: the
        export multiplies its measured bytes per pixel by this factor. Passes at scales below
        1 hold fewer pixels, but the request still holds the full-size image, its
        probabilities and class maps, so the factor never makes the budget larger than
        without augmentation.
        """
        return max(1.0, float(sum(s * s for s in self.scales)) * (2 if self.flip else 1))

    def to_json(self) -> dict:
        """`{"flip": bool, "scales": [...]}` for model cards and reports."""
        return {"flip": self.flip, "scales": list(self.scales)}


def parse_tta(mode: str | None = "none", scales: str | None = None) -> TestTimeAugmentation:
    """The settings of the `--tta` and `--scales` command-line options.

    Args:
        mode: "none" or "flip".
        scales: Comma-separated numbers in [MIN_SCALE, MAX_SCALE] such as "0.75,1,1.25";
            None for "1".

    Returns:
        The `TestTimeAugmentation`.

    Raises:
        ValueError: An unknown mode or a bad scale list (the option and the value are
            named).
    """
    mode = mode or "none"
    if mode not in TTA_MODES:
        raise ValueError(f"--tta {mode!r}: expected one of {TTA_MODES}")
    values = (1.0,)
    if scales is not None:
        parts = [part.strip() for part in str(scales).split(",")]
        try:
            values = tuple(float(part) for part in parts)
        except ValueError:
            values = ()
        check_scales(values, f"--scales {scales!r}", parts)
    return TestTimeAugmentation(flip=mode == "flip", scales=values)


def scaled_size(size: int, scale: float) -> int:
    """`max(1, floor(size * scale + 0.5))` in float32, as the serving graph computes it."""
    value = np.floor(np.float32(size) * np.float32(scale) + np.float32(0.5))
    return max(1, int(value))
