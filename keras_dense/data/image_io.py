"""Reading images and label masks from files, with explicit checks for damaged files."""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import cv2
import numpy as np

from keras_dense.data.errors import BadInputError
from keras_dense.data.image_structure import JPEG_SOI, PNG_SIGNATURE, structure_problem
from keras_dense.data.storage import join, list_folder, read_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


def sniff_format(data: bytes) -> str | None:
    """Returns `"jpeg"`, `"png"` or None from the leading bytes."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    return None


def _check_complete(data: bytes, fmt: str | None, path: str) -> None:
    """Rejects truncated or corrupt JPEG/PNG files, which decoders often accept with a warning.

    Bytes after the end of the image (padding, a motion photo's video) are accepted, as the
    decoders accept them (`image_structure.structure_problem`).
    """
    problem = structure_problem(data, fmt)
    if problem:
        raise BadInputError(path, problem)


class LoadedImage(NamedTuple):
    """An image file as a converter stores it.

    Attributes:
        data: The encoded bytes to store: the file itself, or a PNG re-encoding when the file
            is not JPEG/PNG or carries an EXIF orientation.
        format: `"jpeg"` or `"png"`, the format of `data`.
        rgb: The (H, W, 3) uint8 pixels that decoding `data` gives (TF, OpenCV and PIL agree).
        orientation: The file's EXIF orientation (1 = none) that was applied to the pixels.
    """

    data: bytes
    format: str
    rgb: np.ndarray
    orientation: int


def exif_orientation(data: bytes) -> int:
    """Reads the EXIF orientation tag (0x0112) of a JPEG file.

    Args:
        data: The file's bytes.

    Returns:
        The orientation, 1..8 (1 = stored as displayed); 1 when the file has no such tag or
        is not a JPEG.
    """
    if not data.startswith(JPEG_SOI):
        return 1
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            return 1
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            return _tiff_orientation(segment[6:])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation entry of IFD0 of an EXIF TIFF block (1 if absent or malformed)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) < 12:
            return 1
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """`(height, width)` of JPEG or PNG bytes, read from the header without decoding.

    Args:
        data: The file's bytes.

    Returns:
        The size, or None for other formats or a header that cannot be read.
    """
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(height), int(width)
    if not data.startswith(JPEG_SOI):
        return None
    pos = 2
    while pos + 9 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # Start-of-frame markers C0..CF except C4 (DHT), C8 (JPG) and CC (DAC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(height), int(width)
        pos += 2 + length
    return None


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turns stored pixels into displayed pixels for an EXIF orientation (TIFF 6.0 / EXIF 2.3).

    Args:
        pixels: (H, W, ...) array as stored in the file.
        orientation: 1..8.

    Returns:
        The array as displayed (H and W swapped for orientations 5..8).
    """
    flip_x = orientation in (2, 3, 6, 7)  # mirror columns after the transpose (if any)
    flip_y = orientation in (3, 4, 7, 8)
    if orientation >= 5:  # the stored rows are the displayed columns
        pixels = np.swapaxes(pixels, 0, 1)
    if flip_x:
        pixels = pixels[:, ::-1]
    if flip_y:
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def read_image_file(path: str, apply_exif: bool = True) -> LoadedImage:
    """Reads and validates an image file.

    The stored bytes always decode, with any decoder, to the returned pixels:
    - JPEG and PNG files without an EXIF orientation are kept as they are (no re-encoding);
    - a JPEG with an EXIF orientation other than 1 (phone photos) is turned upright, as every
      viewer and annotation tool shows it, and stored as a lossless PNG of those pixels
      (TensorFlow's decoders ignore EXIF, so the raw bytes would decode rotated);
    - other formats are re-encoded as PNG.

    Args:
        path: The image file.
        apply_exif: Turn EXIF-oriented JPEGs upright (what converters do). False keeps the
            stored pixel order, as TensorFlow (and so TF Serving) decodes the file.

    Returns:
        A `LoadedImage` `(data, format, rgb, orientation)`.

    Raises:
        BadInputError: The file is empty, truncated or not a decodable image.
    """
    data = read_bytes(path)
    if not data:
        raise BadInputError(path, "empty file, expected a JPEG or PNG image")
    fmt = sniff_format(data)
    _check_complete(data, fmt, path)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise BadInputError(
            path, "not a decodable image (expected JPEG, PNG or another format OpenCV reads)"
        )
    rgb = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    orientation = exif_orientation(data) if fmt == "jpeg" else 1
    if orientation != 1 and apply_exif:
        rgb = apply_orientation(rgb, orientation)
    if fmt is None or (orientation != 1 and apply_exif):
        data = encode_png(rgb)
        fmt = "png"
    return LoadedImage(data, fmt, rgb, orientation)


def _png_chunks(data: bytes, path: str):
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            return
    raise BadInputError(path, "truncated PNG: the IEND chunk is missing")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def palette_indices(data: bytes, path: str = "<bytes>") -> np.ndarray | None:
    """Decodes a palette PNG to its palette indices (not colours).

    Decoders expand palettes to colours. Here the palette is replaced by the identity grey
    palette (entry i = (i, i, i)), so the decoded colour of each pixel is its index.

    Args:
        data: PNG bytes.
        path: Name used in error messages.

    Returns:
        (H, W) uint8 indices, or None when the PNG has no palette.
    """
    chunks = list(_png_chunks(data, path))
    header = dict(chunks).get(b"IHDR")
    if header is None or header[9] != 3:  # colour type 3 = indexed
        return None
    out = [PNG_SIGNATURE]
    for kind, payload in chunks:
        if kind == b"PLTE":
            entries = len(payload) // 3
            payload = bytes(np.repeat(np.arange(entries, dtype=np.uint8), 3))
        elif kind == b"tRNS":
            continue
        out.append(_chunk(kind, payload))
    decoded = cv2.imdecode(np.frombuffer(b"".join(out), np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise BadInputError(path, "corrupt palette PNG")
    return decoded[:, :, 0].copy()


def read_mask_file(path: str) -> np.ndarray:
    """Reads a label mask: a single-channel or palette PNG of class ids.

    Args:
        path: The mask file.

    Returns:
        (H, W) uint8 class ids (palette indices for palette PNGs; the stored values of 1, 2
        and 4-bit grey PNGs, which decoders scale to 8 bits).

    Raises:
        BadInputError: The file is damaged, not a PNG, or not single-channel 8-bit.
    """
    data = read_bytes(path)
    if sniff_format(data) != "png":
        raise BadInputError(
            path,
            "expected a single-channel or palette PNG mask (lossless); "
            "JPEG masks corrupt class ids",
        )
    _check_complete(data, "png", path)
    indices = palette_indices(data, path)
    if indices is not None:
        return indices
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise BadInputError(path, "corrupt PNG mask")
    if mask.ndim == 3:
        channels = mask[:, :, :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise BadInputError(
                path,
                f"mask has {mask.shape[2]} distinct colour channels; "
                "expected a single-channel or palette PNG of class ids",
            )
        mask = channels[..., 0]
    if mask.dtype != np.uint8:
        if mask.max() > 255:
            raise BadInputError(
                path,
                f"mask is {mask.dtype} with values up to {mask.max()}; expected 8-bit class ids",
            )
        mask = mask.astype(np.uint8)
    return _stored_grey_values(mask, data)


def _stored_grey_values(mask: np.ndarray, data: bytes) -> np.ndarray:
    """The ids a 1, 2 or 4-bit grey PNG stores; decoders scale them to 8 bits.

    An image editor's binary mask (1 bit) would otherwise read as 0/255: the ignore label of
    a semantic mask, instance id 255 of an instance mask.
    """
    # IHDR is the first chunk: bytes 24 and 25 are its bit depth and colour type (0 = grey).
    if data.startswith(PNG_SIGNATURE) and len(data) >= 26 and data[25] == 0:
        depth = data[24]
        if depth in (1, 2, 4):
            return mask // (255 // (2**depth - 1))
    return mask


def encode_png(array: np.ndarray) -> bytes:
    """Encodes an RGB (H, W, 3) or single-channel (H, W) uint8 array as PNG bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encodes an RGB (H, W, 3) uint8 array as JPEG bytes."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def list_images(folder: str) -> list[str]:
    """Sorted image files (by extension) directly inside `folder`."""
    return sorted(
        join(folder, name)
        for name in list_folder(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    )
