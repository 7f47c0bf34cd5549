"""The dense-CRF parameters a model card holds (written by `keras-dense tune-crf`).

The card key `"crf"` is a JSON object of `keras_dense.crf.dense_crf` keyword arguments, e.g.
`{"theta_alpha": 60.0, "theta_beta": 10.0, "bilateral_weight": 8.0, "spatial_weight": 3.0}`
plus, from the tuner, `"tuned_on"` and `"mean_iou"` (kept for the record, not passed on).
"""

from __future__ import annotations

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


def card_crf_parameters(card: dict) -> dict:
    """The `dense_crf` keyword arguments stored in a model card (empty: DeepLab's defaults).

    Args:
        card: The model card.

    Returns:
        A dict of the `CRF_PARAMETERS` keys the card's `"crf"` object sets.

    Raises:
        ValueError: The card's `"crf"` is not an object or holds a non-numeric value.
    """
    stored = card.get(CARD_KEY) or {}
    if not isinstance(stored, dict):
        raise ValueError(f"model card key {CARD_KEY!r}: expected a JSON object, got {stored!r}")
    parameters = {}
    for name, kind in CRF_PARAMETERS.items():
        if name not in stored:
            continue
        value = stored[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"model card key {CARD_KEY}.{name}: expected a number, got {value!r}")
        parameters[name] = kind(value)
    return parameters
