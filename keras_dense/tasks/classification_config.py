"""The `[data]` table and training metrics of weakly supervised classification recipes."""

from __future__ import annotations

import dataclasses

from keras_dense.tasks.configs import CropData
from keras_dense.utils.typed_tables import require

# `training.metrics` of classification: ROC AUC over the labels, accuracy at probability 0.5.
CLASSIFICATION_METRICS = ("auc", "accuracy_at_0_5")


@dataclasses.dataclass(frozen=True)
class ClassificationData(CropData):
    """`[data]` of classification recipes (`keras_dense.data.classification_dataset`).

    `scale_range[0]` (at most 1) is the smallest side fraction of the random resized crop.

    Attributes:
        photometric: Must stay false: the classification pipeline has no photometric
            distortion (the key is accepted so that recipes may say so).
    """

    photometric: bool = False

    def check(self) -> None:
        super().check()
        require(
            not self.photometric,
            "data.photometric",
            "the classification pipeline has no photometric distortion; set it false or "
            "leave it out",
        )
