"""Explaining an annotation whose size is that of a photo's stored, not displayed, pixels."""

from __future__ import annotations


def size_mismatch(
    said: str, size: tuple[int, int], shape: tuple[int, int], orientation: int
) -> str:
    """The reason for an annotation whose image size differs from the converted image's.

    Converters turn EXIF-oriented JPEGs upright, as viewers and most annotation tools show
    them. A tool that ignores EXIF (LabelImg, scripts reading raw pixels) annotates the stored
    pixels instead: for orientations 5-8 its size is the displayed size transposed, which is
    said here with the way out.

    Args:
        said: What gave the size, e.g. `"<size> says"` or `"the JSON says"`.
        size: The annotation's `(width, height)`.
        shape: The converted image's `(height, width)`.
        orientation: The file's EXIF orientation (1 = none).

    Returns:
        The reason, naming both sizes (width x height).
    """
    height, width = shape
    reason = f"{said} {size[0]}x{size[1]} but the image is {width}x{height}"
    if orientation >= 5 and tuple(size) == (height, width):
        reason += (
            f": {size[0]}x{size[1]} is the size of its stored pixels, but the file has EXIF "
            f"orientation {orientation} and is {width}x{height} as displayed, as viewers show it "
            "and as it is converted. The annotation was made on the unrotated pixels (LabelImg "
            "and some scripts ignore EXIF): remove the file's orientation tag (e.g. exiftool "
            "-Orientation= FILE) to keep the pixels as annotated, or annotate the upright image"
        )
    return reason
