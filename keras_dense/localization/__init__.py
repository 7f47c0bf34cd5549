"""Localisation without boxes: class maps of classifiers, points and boxes from them, and
segmentation pseudo-labels.

- `maps`: `class_maps` of a `keras_dense.apps.wsl_classifier` and `augmented_class_maps`
  under test-time scales and flips.
- `cam`: `class_activation_maps`, Zhou et al.'s CAM (CVPR 2016) for any Keras classifier that
  ends `GlobalAveragePooling2D -> Dense`.
- `points`: `points_from_maps`, the peak of each class map (the pointing game's prediction).
- `boxes`: `boxes_from_maps`, the box of the largest connected region above a fraction of each
  map's maximum (the CAM paper's localisation).
- `pseudo_labels`: masks (and CRF probabilities) from class maps and image labels;
  `pseudo_label_writer`: shards of them; `card_keys`: the model card's background threshold.
- `memory`, `record_checks`: a classifier's memory per image and the check of its records.

Maps are NumPy arrays `(B, H, W, C)`. Points are `(y, x)` pixel indices; boxes are
`[ymin, xmin, ymax, xmax]` in pixels with inclusive ends, the convention of
`keras_dense.detection.boxes` (a one-pixel region is the box `[y, x, y, x]`).
"""

from keras_dense.localization.arrays import check_finite
from keras_dense.localization.boxes import boxes_from_maps
from keras_dense.localization.cam import class_activation_maps
from keras_dense.localization.card_keys import (
    BACKGROUND_THRESHOLD_KEY,
    CRF_BACKGROUND_THRESHOLD_KEY,
    DEFAULT_BACKGROUND_THRESHOLD,
    card_background_threshold,
)
from keras_dense.localization.maps import CLASS_MAPS_LAYER, augmented_class_maps, class_maps
from keras_dense.localization.memory import class_map_bytes_per_pixel, class_map_memory_problem
from keras_dense.localization.points import points_from_maps
from keras_dense.localization.pseudo_label_writer import write_pseudo_labels
from keras_dense.localization.pseudo_labels import (
    crf_pseudo_label_masks,
    normalised_class_maps,
    pseudo_label_masks,
    pseudo_label_probabilities,
)
from keras_dense.localization.record_checks import check_classifier_records

__all__ = [
    "BACKGROUND_THRESHOLD_KEY",
    "CLASS_MAPS_LAYER",
    "CRF_BACKGROUND_THRESHOLD_KEY",
    "DEFAULT_BACKGROUND_THRESHOLD",
    "augmented_class_maps",
    "boxes_from_maps",
    "card_background_threshold",
    "check_classifier_records",
    "check_finite",
    "class_activation_maps",
    "class_map_bytes_per_pixel",
    "class_map_memory_problem",
    "class_maps",
    "crf_pseudo_label_masks",
    "normalised_class_maps",
    "points_from_maps",
    "pseudo_label_masks",
    "pseudo_label_probabilities",
    "write_pseudo_labels",
]
