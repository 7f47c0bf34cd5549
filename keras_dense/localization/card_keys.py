"""The model card keys of the background threshold of pseudo-labels, and how they are read."""

from __future__ import annotations

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
