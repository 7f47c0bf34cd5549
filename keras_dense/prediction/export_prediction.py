"""Predicting with an exported SavedModel: its `serving_default` image-bytes signature, per image.

`keras-dense predict --model EXPORT_DIR` (locally or `--runner beam`) loads the export with
`tf.saved_model.load` (stock TF: no Keras, no custom objects) and calls `serving_default` with
one image's encoded bytes at a time, so an image's outputs never depend on which images shared
its batch (a batch of mixed sizes is padded to the largest). Each image's outputs become files:

- PNG bytes outputs (`mask_png_bytes`) are written as `STEM_mask.png`;
- detection outputs are cut to `num_detections` rows; instance masks (`detection_masks`) are
  cropped to the image and written as `STEM_instances.png`, an 8-bit (16-bit past 255) map of
  instance numbers (1 = first detection; a later one paints over an earlier one);
- class maps (`class_maps`, `classes`) are left out: the mask PNG holds the class map, and a
  classifier's per-class maps are large (use `keras-dense predict` on the `.keras` model);
- every other output goes into `STEM.json` (lists).
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import sniff_format
from keras_dense.data.storage import is_file, join, read_bytes

SIGNATURE = "serving_default"
LEFT_OUT = ("classes", "class_maps")


def is_export(path: str) -> bool:
    """Whether `path` is a SavedModel folder (holds `saved_model.pb`)."""
    return is_file(join(path, "saved_model.pb"))


class ServingModel:
    """An export's `serving_default`, called on one image's bytes at a time.

    Args:
        export_dir: The SavedModel folder (e.g. `saved_models/NAME/1`).

    Raises:
        ValueError: The export has no `serving_default`, or it takes more than `image_bytes`
            (a Fast R-CNN export also takes region proposals), naming what it takes.
    """

    def __init__(self, export_dir: str):
        self.export_dir = export_dir
        self._loaded = tf.saved_model.load(export_dir)
        if SIGNATURE not in self._loaded.signatures:
            raise ValueError(
                f"{export_dir}: no '{SIGNATURE}' signature (it has "
                f"{sorted(self._loaded.signatures)}); export it with keras-dense export"
            )
        self.function = self._loaded.signatures[SIGNATURE]
        inputs = sorted(self.function.structured_input_signature[1])
        if inputs != ["image_bytes"]:
            raise ValueError(
                f"{export_dir}: '{SIGNATURE}' takes {inputs}, and predicting an export needs one "
                "that takes image_bytes only (a Fast R-CNN export also needs region proposals: "
                "predict with the .keras model instead)"
            )

    def __call__(self, data: bytes) -> dict[str, np.ndarray]:
        """The outputs for one encoded image, without the batch axis."""
        outputs = self.function(image_bytes=tf.constant([data]))
        return {name: value.numpy()[0] for name, value in outputs.items()}


def check_image_bytes(data: bytes, source: str) -> None:
    """Raises `BadInputError` for bytes that are not a JPEG or PNG (what exports decode)."""
    if not data:
        raise BadInputError(source, "empty file, expected a JPEG or PNG image")
    if sniff_format(data) not in ("jpeg", "png"):
        raise BadInputError(source, "not a JPEG or PNG image (what the export decodes)")


def _instance_map(masks: np.ndarray, size) -> bytes:
    """One PNG of instance numbers from (D, H, W) 0/1 masks cropped to `size`."""
    import cv2

    height, width = (int(v) for v in size)
    ids = np.zeros((height, width), np.uint16 if len(masks) > 255 else np.uint8)
    for number, mask in enumerate(masks[:, :height, :width], start=1):
        ids[mask > 0] = number
    ok, png = cv2.imencode(".png", ids)
    if not ok:
        raise ValueError("PNG encoding of the instance map failed")
    return png.tobytes()


def output_files(outputs: dict[str, np.ndarray], stem: str) -> dict[str, bytes]:
    """The files one image's outputs become (see the module docstring), by file name."""
    outputs = dict(outputs)
    count = outputs.get("num_detections")
    if count is not None:
        for name, value in outputs.items():
            if name.startswith("detection_"):
                outputs[name] = value[: int(count)]
    files, fields = {}, {}
    for name in sorted(outputs):
        value = outputs[name]
        if name in LEFT_OUT:
            continue
        if isinstance(value, bytes):  # encoded images
            files[f"{stem}_mask.png" if name == "mask_png_bytes" else f"{stem}_{name}"] = value
        elif name == "detection_masks":
            size = outputs.get("image_sizes", value.shape[1:3])
            files[f"{stem}_instances.png"] = _instance_map(value, size)
        else:
            fields[name] = value.tolist()
    files[f"{stem}.json"] = (json.dumps(fields, indent=2) + "\n").encode()
    return files


def predict_file(model: ServingModel, path: str, stem: str) -> dict[str, bytes]:
    """Reads one image file and returns its output files.

    Raises:
        BadInputError: The file is unreadable, not a JPEG or PNG, or the export cannot decode
            it, naming the file.
    """
    try:
        data = read_bytes(path)
    except OSError as err:
        raise BadInputError(path, f"cannot read: {err}") from None
    check_image_bytes(data, path)
    try:
        outputs = model(data)
    except (tf.errors.InvalidArgumentError, tf.errors.ResourceExhaustedError) as err:
        raise BadInputError(path, f"the export refused it: {err.message.splitlines()[0]}") from None
    return output_files(outputs, stem)
