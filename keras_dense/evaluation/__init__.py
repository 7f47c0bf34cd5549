"""Evaluation metrics computed outside the graph (NumPy)."""

from keras_dense.evaluation.coco_map import coco_metrics
from keras_dense.evaluation.localization_metrics import (
    corloc,
    multilabel_average_precision,
    pointing_game,
)
from keras_dense.evaluation.segmentation_metrics import confusion_matrix, segmentation_scores
from keras_dense.evaluation.voc_map import average_precision, voc_detection_map

__all__ = ["average_precision", "coco_metrics", "voc_detection_map"]
__all__ += ["confusion_matrix", "segmentation_scores"]
__all__ += ["corloc", "multilabel_average_precision", "pointing_game"]
