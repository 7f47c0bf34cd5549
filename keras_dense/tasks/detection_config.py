"""The `[data]` table of detection and instance segmentation recipes."""

from __future__ import annotations

import dataclasses

from keras_dense.tasks.configs import DataConfig
from keras_dense.utils.typed_tables import require


@dataclasses.dataclass(frozen=True)
class DetectionData(DataConfig):
    """`[data]` of detection recipes (`keras_dense.data.detection_dataset`).

    Attributes:
        min_size: Shorter image side fed to the model.
        max_size: Cap on the longer side.
        max_boxes: Boxes per image (a record with more is refused or skipped).
        max_proposals: Region proposals read per image (0: none; models that propose their
            own regions read none).
        allow_missing_proposals: Fast R-CNN / R-CNN on records without proposals train on the
            ground-truth boxes only, with a warning, instead of refusing them.
    """

    min_size: int = 600
    max_size: int = 1000
    max_boxes: int = 100
    max_proposals: int = 2000
    allow_missing_proposals: bool = False

    def check(self) -> None:
        super().check()
        for key in ("min_size", "max_size", "max_boxes"):
            value = getattr(self, key)
            require(value >= 1, f"data.{key}", f"expected >= 1, got {value}")
        require(
            self.max_proposals >= 0,
            "data.max_proposals",
            f"expected >= 0 (0: no proposals read), got {self.max_proposals}",
        )
