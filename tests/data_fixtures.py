"""Small data sets written by the tests themselves, with an independent PNG writer."""

from __future__ import annotations

import pathlib
import struct
import zlib

import cv2
import numpy as np

from keras_dense.data.image_io import encode_png
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def write_palette_png(path, indices: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Writes an 8-bit palette PNG by hand (filter 0), so readers are tested independently."""
    indices = np.asarray(indices, np.uint8)
    h, w = indices.shape
    if palette is None:
        rng = np.random.default_rng(7)
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + indices[y].tobytes() for y in range(h))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
        + _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )
    pathlib.Path(path).write_bytes(data)


def palette_png_bytes(folder, indices: np.ndarray) -> bytes:
    """The bytes of a palette PNG of `indices`, written through `write_palette_png` in `folder`."""
    path = pathlib.Path(folder) / "palette.png"
    write_palette_png(path, indices)
    return path.read_bytes()


def grey_png_bytes(values: np.ndarray, bit_depth: int) -> bytes:
    """A greyscale PNG of `bit_depth` (1, 2, 4, 8 or 16) bits a pixel, packed by hand
    (filter 0), as image editors and other tools write them; our writers only write 8 bits."""
    height, width = values.shape
    rows = []
    for row in values:
        if bit_depth == 16:
            packed = np.asarray(row).astype(">u2").tobytes()
        else:
            bits = "".join(format(int(v), f"0{bit_depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            packed = int(bits, 2).to_bytes(len(bits) // 8, "big")
        rows.append(b"\x00" + packed)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + _chunk(b"IEND", b"")
    )


def write_rgb(path, rgb: np.ndarray) -> None:
    """Writes an RGB array with OpenCV (format from the extension)."""
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random RGB uint8 image."""
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_pairs_folder(root: pathlib.Path, n: int = 6, num_classes: int = 3, seed: int = 0):
    """Writes `images/` (PNG and JPEG) and `masks/` (grey and palette PNG) of random sizes.

    Returns:
        `{stem: mask}` of the written masks.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {}
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        stem = f"img{i:02d}"
        ext = ".jpg" if i % 2 else ".png"
        write_rgb(root / "images" / f"{stem}{ext}", random_image(rng, h, w))
        mask = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        mask[0, :3] = 255
        if i % 3 == 0:
            write_palette_png(root / "masks" / f"{stem}.png", mask)
        else:
            assert cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
        masks[stem] = mask
    return masks


VOC_XML = """<annotation><filename>{stem}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>
<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc_xml(path, stem: str, w: int, h: int, objects: list[tuple]) -> None:
    """Writes a VOC annotation; objects are `(name, x0, y0, x1, y1, difficult)`."""
    body = "".join(
        VOC_OBJECT.format(
            name=o[0], x0=o[1], y0=o[2], x1=o[3], y1=o[4], difficult=int(o[5]) if len(o) > 5 else 0
        )
        for o in objects
    )
    pathlib.Path(path).write_text(VOC_XML.format(stem=stem, w=w, h=h, objects=body))


def coordinate_records(tmp_path, sizes=((90, 120), (70, 50), (130, 100))):
    """Images whose R, G channels are y+1, x+1 (B = 200); masks are a function of (y, x)."""

    def make(size):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([yy + 1, xx + 1, np.full_like(yy, 200)], -1).astype(np.uint8)
        mask = ((yy * 7 + xx * 3) % 250).astype(np.uint8)
        return Record(f"coord_{h}x{w}", encode_png(rgb), "png", h, w, mask_png=encode_png(mask))

    write_dataset(str(tmp_path / "coord"), list(sizes), make, progress=False)
    return str(tmp_path / "coord-*.tfrecord")


def write_tiny_unet_recipe(
    path,
    root,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float,
    momentum: float = 0.0,
    image_summaries: int = 0,
):
    """Writes a recipe training a 4-filter, depth-2 U-Net on `root/{train,val}-*.tfrecord`."""
    path.write_text(
        f"""
[model]
builder = "unet"
[model.kwargs]
padding = "same"
filters = 4
depth = 2
batch_norm = true
[data]
train = "{root / "train-*.tfrecord"}"
validation = "{root / "val-*.tfrecord"}"
crop_size = 32
[training]
batch_size = 4
epochs = {epochs}
steps_per_epoch = {steps_per_epoch}
image_summaries = {image_summaries}
[optimizer]
name = "sgd"
learning_rate = {learning_rate}
momentum = {momentum}
[schedule]
name = "poly"
"""
    )
    return path
