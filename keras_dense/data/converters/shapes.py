"""The built-in synthetic "shapes" data set: circles, squares and triangles.

Every image is drawn from its own random generator (seeded by `seed` and the image index), so
the set is identical for the same arguments whatever the number of workers. Objects may overlap;
the later one is on top. Masks are exact (drawn by the same rasteriser as the image); each
object's instance mask (`image/object/mask`) holds its visible pixels and its box is the tight
box of that mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from keras_dense.data.image_io import encode_png
from keras_dense.data.schema import Record
from keras_dense.data.writer import write_dataset

SHAPE_CLASSES = ("background", "circle", "square", "triangle")
MAX_SIZE = 2048


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured, noisy background: a colour gradient, stripes and Gaussian noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    freq = rng.uniform(4, 16)
    angle = rng.uniform(0, np.pi)
    stripes = 15 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1] + stripes[..., None]
    image += rng.normal(0, 12, size=image.shape)
    return image


def render_shapes(index: int, size: int = 128, seed: int = 0, max_objects: int = 4):
    """Draws one synthetic image: `render_shape_instances` without the instance masks.

    Args:
        index: Image index (with `seed`, it fixes the content).
        size: Width and height in pixels.
        seed: Data-set seed.
        max_objects: Upper bound on the number of objects (at least 1 is drawn).

    Returns:
        `(rgb, mask, boxes, labels)`: (size, size, 3) uint8, (size, size) uint8 class ids,
        (n, 4) float32 pixel boxes `[ymin, xmin, ymax, xmax]` (max exclusive), (n,) int64
        1-based labels. Fully hidden objects have no box.
    """
    rgb, mask, _, boxes, labels = render_shape_instances(index, size, seed, max_objects)
    return rgb, mask, boxes, labels


def render_shape_instances(index: int, size: int = 128, seed: int = 0, max_objects: int = 4):
    """Draws one synthetic image with the mask of every object (the image of `render_shapes`).

    Args:
        index, size, seed, max_objects: As `render_shapes`.

    Returns:
        `(rgb, mask, instance_masks, boxes, labels)`: as `render_shapes`, plus
        (n, size, size) uint8 0/1 masks of each object's visible pixels, in box order (each
        box is the tight box of its mask).
    """
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int32)
    labels = []
    for obj in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, len(SHAPE_CLASSES)))
        radius = rng.uniform(0.08, 0.22) * size
        cy, cx = rng.uniform(radius, size - radius, size=2)
        canvas = np.zeros((size, size), np.uint8)
        if cls == 1:
            cv2.circle(canvas, (int(cx), int(cy)), int(radius), 1, -1)
        else:
            sides = 4 if cls == 2 else 3
            theta = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(sides) / sides
            points = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], -1)
            cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
        region = canvas.astype(bool)
        colour = rng.uniform(0, 255, size=3)
        texture = rng.normal(0, 10, size=(size, size, 1))
        image[region] = (colour + texture[region]).astype(np.float32)
        mask[region] = cls
        instances[region] = obj + 1
        labels.append(cls)
    boxes, kept, masks = [], [], []
    for obj, cls in enumerate(labels):
        visible = instances == obj + 1
        ys, xs = np.nonzero(visible)
        if ys.size == 0:
            continue
        boxes.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
        kept.append(cls)
        masks.append(visible.astype(np.uint8))
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    return (
        rgb,
        mask,
        np.asarray(masks, np.uint8).reshape(-1, size, size),
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(kept, np.int64),
    )


def convert_shapes(
    output: str,
    num_images: int,
    size: int = 128,
    seed: int = 0,
    num_shards: int = 1,
    workers: int = 1,
    runner: str = "local",
    beam_options: Sequence[str] = (),
    progress: bool = True,
) -> dict:
    """Writes the synthetic shapes set as TFRecords (image, mask, boxes and instance masks).

    Args:
        output: `DIR/NAME` of the shards and manifest.
        num_images: Number of images (>= 1).
        size: Image side in pixels (16 to 2048).
        seed: Random seed (>= 0).
        num_shards: Number of shards.
        workers: Encoding threads.
        runner: `"local"` (threads) or `"beam"` (an Apache Beam pipeline writing the same
            shards; see `keras_dense.data.beam_writer`).
        beam_options: `KEY=VALUE` Beam pipeline options (`--beam-option`).
        progress: Show a progress bar.

    Returns:
        The manifest.

    Raises:
        ValueError: Bad arguments.
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images}: expected at least 1")
    if size < 16:
        raise ValueError(f"size={size}: expected at least 16 pixels")
    if size > MAX_SIZE:
        raise ValueError(
            f"size={size}: expected at most {MAX_SIZE} pixels (each image is drawn in memory, "
            "24 bytes per pixel)"
        )
    if seed < 0:
        raise ValueError(f"seed={seed}: expected an integer >= 0")

    def make(index: int) -> Record:
        rgb, mask, instance_masks, boxes, labels = render_shape_instances(index, size, seed)
        return Record(
            source_id=f"shapes_{seed}_{index:06d}",
            image_bytes=encode_png(rgb),
            image_format="png",
            height=size,
            width=size,
            mask_png=encode_png(mask),
            boxes=boxes / size,
            labels=labels,
            label_texts=[SHAPE_CLASSES[c] for c in labels],
            instance_masks=[encode_png(m) for m in instance_masks],
        )

    return write_dataset(
        output,
        list(range(num_images)),
        make,
        item_name=lambda i: f"shapes image {i}",
        num_shards=num_shards,
        workers=workers,
        runner=runner,
        beam_options=beam_options,
        classes=SHAPE_CLASSES,
        ignore_label=255,
        task="segmentation+detection",
        arguments={
            "converter": "shapes",
            "num_images": num_images,
            "size": size,
            "seed": seed,
            "num_shards": num_shards,
        },
        progress=progress,
        extra={"instance_masks": True},
    )
