"""Sums of losses (cross-entropy + Dice, cross-entropy + Lovász) and the losses by name."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_dense.losses.dice import DiceLoss
from keras_dense.losses.focal import FocalLoss
from keras_dense.losses.lovasz import LovaszSoftmaxLoss
from keras_dense.losses.masked_cross_entropy import MaskedSparseCrossEntropy


@keras.saving.register_keras_serializable(package="keras_dense")
class SumOfLosses(keras.losses.Loss):
    """The sum of several losses, each reduced with its own normalisation.

    `SumOfLosses([MaskedSparseCrossEntropy(), DiceLoss()])` is the mean cross-entropy over
    the counted pixels plus the Dice loss averaged over the classes present: no term is
    rescaled, so each keeps the range it has alone (cross-entropy unbounded, Dice in [0, 1]).

    Args:
        losses: The `keras.losses.Loss` objects (or their serialized configs).
        name: Loss name.
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `dtype`).
    """

    def __init__(self, losses: Sequence, name: str = "sum_of_losses", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        built = [
            loss if isinstance(loss, keras.losses.Loss) else keras.losses.deserialize(loss)
            for loss in losses
        ]
        if not built:
            raise ValueError("losses=[]: expected at least one loss")
        self.losses = built

    def call(self, y_true, y_pred):
        """The sum of the reduced losses (a scalar)."""
        return sum(loss(y_true, y_pred) for loss in self.losses)

    def get_config(self):
        config = super().get_config()
        config["losses"] = [keras.losses.serialize(loss) for loss in self.losses]
        return config


# `loss.name` values of a recipe.
LOSS_NAMES = (
    "sparse_categorical_crossentropy",
    "dice",
    "lovasz",
    "focal",
    "ce+dice",
    "ce+lovasz",
)


def build_loss(
    name: str, ignore_label: int = 255, class_weights: Sequence[float] | None = None
) -> keras.losses.Loss:
    """The segmentation loss a recipe's `loss.name` selects (logits in).

    Args:
        name: One of `LOSS_NAMES`: "sparse_categorical_crossentropy" (masked, weighted
            cross-entropy), "dice", "lovasz", "focal", "ce+dice", "ce+lovasz" (sums, see
            `SumOfLosses`).
        ignore_label: Label of pixels that do not count.
        class_weights: Optional weight per class, given to every term.

    Returns:
        The loss.

    Raises:
        ValueError: An unknown name (the known ones are listed).
    """
    weights = list(class_weights) if class_weights else None
    single = {
        "sparse_categorical_crossentropy": MaskedSparseCrossEntropy,
        "dice": DiceLoss,
        "lovasz": LovaszSoftmaxLoss,
        "focal": FocalLoss,
    }
    if name in single:
        return single[name](ignore_label=ignore_label, class_weights=weights)
    if name in ("ce+dice", "ce+lovasz"):
        second = DiceLoss if name == "ce+dice" else LovaszSoftmaxLoss
        return SumOfLosses(
            [
                MaskedSparseCrossEntropy(ignore_label=ignore_label, class_weights=weights),
                second(ignore_label=ignore_label, class_weights=weights),
            ],
            name=name.replace("+", "_plus_"),
        )
    raise ValueError(f"loss name {name!r}: expected one of {LOSS_NAMES}")
