"""The `[data]` table and training metrics of semantic segmentation recipes."""

from __future__ import annotations

import dataclasses

from keras_dense.data.device_augment import AUGMENT_ON
from keras_dense.tasks.configs import CropData, one_of

# `training.metrics` of segmentation (see `keras_dense.metrics.build_metrics`).
SEGMENTATION_METRICS = ("mean_iou", "pixel_accuracy")


@dataclasses.dataclass(frozen=True)
class SegmentationData(CropData):
    """`[data]` of segmentation recipes (`keras_dense.data.segmentation_dataset`).

    Attributes:
        photometric: Random brightness, contrast and saturation while training.
        augment_on: "host": augment in tf.data; "device": decode only, augment at the start
            of the train step (`keras_dense.data.device_augment`).
    """

    photometric: bool = True
    augment_on: str = "host"

    def check(self) -> None:
        super().check()
        one_of(self.augment_on, AUGMENT_ON, "data.augment_on")
