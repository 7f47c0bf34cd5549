"""Whether a class mask's PNG is read as its class ids, from its header alone.

Every reader of `image/segmentation/class/encoded` decodes it with
`tf.io.decode_png(..., channels=1)` into uint8. That call never fails on a mask another tool
wrote in another PNG form; it reads the wrong numbers:

- a palette PNG (colour type 3) as the grey level of each pixel's palette colour, not its
  index;
- an RGB or RGBA PNG as the grey level of each colour;
- a 1-, 2- or 4-bit greyscale PNG scaled to 0..255 (a 1-bit id 1 becomes 255, the ignore
  label);
- a 16-bit PNG as its high bytes (ids below 256 become 0).

Only an 8-bit greyscale PNG (colour type 0, or 4 whose alpha the single-channel decode drops)
is read as its ids. `class_mask_problem` decides this from the signature and the `IHDR` chunk,
without decoding a pixel. Our converters write 8-bit greyscale masks; `keras-dense convert
pairs` reads the other forms as class ids.
"""

from __future__ import annotations

from keras_dense.data.image_structure import PNG_SIGNATURE, png_header

_COLOUR_TYPES = {2: "colour (RGB)", 3: "palette", 6: "colour (RGBA)"}
EXPECTED = (
    "expected an 8-bit single-channel (greyscale) PNG of class ids; convert the masks with "
    "`keras-dense convert pairs`, which reads palette and low-bit masks as class ids"
)


def class_mask_problem(data: bytes) -> str | None:
    """Why `tf.io.decode_png(data, channels=1)` would not give a class mask's ids, or None.

    Reads the PNG signature and `IHDR` only (bit depth and colour type); the rest of the
    bytes (their chunks' CRCs, the pixels) is not checked here.

    Args:
        data: The `image/segmentation/class/encoded` bytes.

    Returns:
        The reason, saying what TensorFlow would read and what is expected; None for an
        8-bit greyscale PNG.
    """
    if not data.startswith(PNG_SIGNATURE):
        return f"the class mask is not a PNG (starts with {data[:8]!r}); {EXPECTED}"
    header = png_header(data)
    if header is None:
        return f"the class mask's PNG header (IHDR) cannot be read; {EXPECTED}"
    if header.colour_type in _COLOUR_TYPES:
        return (
            f"the class mask is a {_COLOUR_TYPES[header.colour_type]} PNG: TensorFlow reads it "
            f"as the grey level of each pixel's colour, not a class id; {EXPECTED}"
        )
    if header.bit_depth == 16:
        return (
            "the class mask is a 16-bit PNG: TensorFlow reads it as 8-bit, which turns ids "
            f"below 256 into 0; {EXPECTED}"
        )
    if header.bit_depth != 8:
        return (
            f"the class mask is a {header.bit_depth}-bit greyscale PNG: TensorFlow scales it "
            f"to 8 bits (id 1 becomes {255 // (2**header.bit_depth - 1)}); {EXPECTED}"
        )
    return None
