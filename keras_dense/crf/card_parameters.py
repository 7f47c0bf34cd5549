"""The dense-CRF parameters a model card holds (written by `keras-dense tune-crf`).

The card key `"crf"` is a JSON object of `keras_dense.crf.dense_crf` keyword arguments, e.g.
`{"theta_alpha": 60.0, "theta_beta": 10.0, "bilateral_weight": 8.0, "spatial_weight": 3.0}`
plus, from the tuner, `"tuned_on"`, `"mean_iou"` and its other `RECORD_KEYS` (kept for the
record, not passed on). Any other key (a misspelt `"theta_alfa"`) and any value outside its
valid range (`keras_dense.crf.parameter_ranges`) is refused, naming the card key.
"""

from __future__ import annotations

import difflib
import math

from keras_dense.crf.parameter_ranges import PARAMETER_RANGES

# The dense_crf keyword arguments a card may set, and their types.
CRF_PARAMETERS = {
    "theta_alpha": float,
    "theta_beta": float,
    "theta_gamma": float,
    "spatial_weight": float,
    "bilateral_weight": float,
    "num_iterations": int,
}
CARD_KEY = "crf"
# What `keras-dense tune-crf` records beside the parameters (not passed to dense_crf).
RECORD_KEYS = ("mean_iou", "baseline_mean_iou", "default_crf_mean_iou", "tuned_on", "images")


def _unknown_key(name: str) -> ValueError:
    valid = (*CRF_PARAMETERS, *RECORD_KEYS)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ValueError(
        f"model card key {CARD_KEY}.{name}: not a dense-CRF parameter; {hint}expected "
        f"parameters {list(CRF_PARAMETERS)} (and the tuner's record {list(RECORD_KEYS)})"
    )


def _checked_value(name: str, value) -> float | int:
    """The value of parameter `name`, of its type and within its valid range."""
    where = f"model card key {CARD_KEY}.{name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if CRF_PARAMETERS[name] is int:
        if not (math.isfinite(value) and value == int(value) and value >= 0):
            raise ValueError(f"{where}: expected a non-negative integer, got {value!r}")
        return int(value)
    low, high = PARAMETER_RANGES[name]
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(
            f"{where}: {value!r} is outside the valid range [{low:g}, {high:g}] of {name} "
            "(see keras_dense.crf.parameter_ranges); fix the card or run keras-dense tune-crf"
        )
    return float(value)


def card_crf_parameters(card: dict) -> dict:
    """The `dense_crf` keyword arguments stored in a model card (empty: DeepLab's defaults).

    Args:
        card: The model card.

    Returns:
        A dict of the `CRF_PARAMETERS` keys the card's `"crf"` object sets.

    Raises:
        ValueError: The card's `"crf"` is not an object, holds a key that is neither a
            parameter nor one of the tuner's `RECORD_KEYS` (with the closest valid key), or a
            value that is not a number within the parameter's valid range (naming the key).
    """
    stored = card.get(CARD_KEY) or {}
    if not isinstance(stored, dict):
        raise ValueError(f"model card key {CARD_KEY!r}: expected a JSON object, got {stored!r}")
    for name in stored:
        if name not in CRF_PARAMETERS and name not in RECORD_KEYS:
            raise _unknown_key(name)
    return {name: _checked_value(name, stored[name]) for name in CRF_PARAMETERS if name in stored}
