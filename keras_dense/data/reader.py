"""Reading records back as NumPy arrays (for tests, tools and inspection)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from keras_dense.data.decode import decode_image
from keras_dense.data.errors import BadInputError
from keras_dense.data.schema import parse_serialized
from keras_dense.data.shard_checks import shard_records
from keras_dense.data.tfrecord_files import check_files, resolve_files


def decode_record(serialized: bytes, source: str = "<record>") -> dict:
    """Decodes one serialized Example into NumPy arrays.

    Args:
        serialized: The Example bytes.
        source: Name used in error messages.

    Returns:
        A dict with `source_id` (str) and `image` (H, W, 3) uint8 (JPEG decoded with the
        accurate integer DCT, as everywhere in keras_dense); when present `mask`
        (H, W) uint8, `boxes` (n, 4) float32 normalised yxyx, `labels` (n,) int64,
        `difficult` (n,) bool, `is_crowd` (n,) bool, `proposals` (m, 4) float32 and
        `image_labels` (k,) int64 (1-based `image/class/label` ids); always
        `instance_masks` (n, H, W) uint8 of 0/1, one per box in the order of `boxes`
        (`image/object/mask`; (0, H, W) when the record has none).

    Raises:
        BadInputError: The record cannot be parsed, its image/mask cannot be decoded, its
            labels (or difficult / crowd flags, when present) are not one per box, or its
            instance masks are not one per box at the image's size.
    """
    try:
        parsed = parse_serialized(tf.constant(serialized))
        out = {
            "source_id": parsed["source_id"].numpy().decode(),
            "image": decode_image(parsed["image_bytes"], 3).numpy(),
        }
        if parsed["mask_bytes"].numpy():
            out["mask"] = tf.io.decode_png(parsed["mask_bytes"], channels=1).numpy()[..., 0]
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as err:
        raise BadInputError(source, f"undecodable record ({str(err).splitlines()[0]})") from None
    named = f"{source} ({out['source_id']})" if out["source_id"] else source
    boxes = parsed["boxes"].numpy()
    num_boxes = boxes.shape[0]
    if num_boxes or parsed["labels"].shape[0]:
        out["boxes"] = boxes.astype(np.float32)
        out["labels"] = parsed["labels"].numpy().astype(np.int64)
        if len(out["labels"]) != num_boxes:
            raise BadInputError(
                named,
                f"{len(out['labels'])} labels (image/object/class/label) for {num_boxes} boxes: "
                "expected one 1-based class id per box",
            )
        # Absent flags mean "not difficult" / "not crowd"; a list of another length is wrong.
        for key in ("difficult", "is_crowd"):
            flags = parsed[key].numpy()
            if len(flags) not in (0, num_boxes):
                raise BadInputError(
                    named,
                    f"{len(flags)} image/object/{key} flags for {num_boxes} boxes: expected one "
                    "per box, or none",
                )
            out[key] = flags if len(flags) else np.zeros(num_boxes, bool)
    image_labels = parsed["image_labels"].numpy()
    if image_labels.shape[0]:
        out["image_labels"] = image_labels.astype(np.int64)
    proposals = parsed["proposals"].numpy()
    if proposals.shape[0]:
        out["proposals"] = proposals.astype(np.float32)
    out["instance_masks"] = _decode_instance_masks(
        parsed["instance_mask_bytes"].numpy(), out["image"].shape[:2], num_boxes, named
    )
    return out


def _decode_instance_masks(
    encoded: np.ndarray, image_shape: tuple[int, int], num_boxes: int, source: str
) -> np.ndarray:
    """(n, H, W) uint8 0/1 masks from the PNGs of `image/object/mask`, checked against the boxes."""
    height, width = image_shape
    if encoded.shape[0] == 0:
        return np.zeros((0, height, width), np.uint8)
    if encoded.shape[0] != num_boxes:
        raise BadInputError(
            source,
            f"{encoded.shape[0]} instance masks (image/object/mask) for {num_boxes} boxes: "
            "expected one mask per box",
        )
    masks = np.zeros((encoded.shape[0], height, width), np.uint8)
    for k, png in enumerate(encoded):
        try:
            decoded = tf.io.decode_png(png, channels=1).numpy()[..., 0]
        except tf.errors.InvalidArgumentError as err:
            raise BadInputError(
                source, f"instance mask {k} is not a PNG ({str(err).splitlines()[0]})"
            ) from None
        if decoded.shape != (height, width):
            raise BadInputError(
                source,
                f"instance mask {k} is {decoded.shape[1]}x{decoded.shape[0]} but the image "
                f"is {width}x{height} (width x height)",
            )
        masks[k] = decoded != 0
    return masks


def read_examples(file_pattern: str | Sequence[str], verify: bool = True) -> Iterator[dict]:
    """Yields every record of the matching shards, in file order, as NumPy arrays.

    Before the first record, the shards are checked as training checks them
    (`tfrecord_files.check_files`, once per call, with the same verification cache): framing,
    record counts and SHA-256 against the manifest, and the set on disk against the manifest
    (no shard missing, none left over), so `evaluate`, `tune-crf`, `predict` and the other
    readers never score a partial or altered set.

    Args:
        file_pattern: A glob pattern (or list of patterns) of TFRecord files.
        verify: Check the shards first; False reads them as they are.

    Yields:
        Dicts as described in `decode_record`.

    Raises:
        BadInputError: No file matches, a file is truncated, corrupt or unlike its manifest,
            or the set is incomplete (named).
    """
    files = resolve_files(file_pattern)
    if verify:
        check_files(files)
    for path in files:
        for index, serialized in shard_records(path):
            yield decode_record(serialized, f"{path} record {index}")
