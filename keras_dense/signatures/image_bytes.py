"""In-graph image decoding for serving signatures: JPEG/PNG bytes to checked pixel arrays.

Everything here is stock TensorFlow ops, so it runs inside a SavedModel served by TF Serving.
Bad bytes raise `InvalidArgumentError` (through `tf.debugging.Assert` or the decoders), never
crash the process: only JPEG and PNG are accepted (by signature bytes), files cut short are
refused naming their position in the batch (a PNG must hold its IEND chunk, a JPEG an
end-of-image marker after its scan data), and the pixel count announced by the header is
checked against a limit before anything is decoded.
"""

from __future__ import annotations

import tensorflow as tf

from keras_dense.data.decode import JPEG_DCT_METHOD
from keras_dense.utils.normalization import finish, mean_pixel

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Decoded pixels allowed per image (a 50-megapixel photo); larger images are refused.
DEFAULT_MAX_PIXELS = 50_000_000


# The IEND chunk that closes every PNG: length 0, type, CRC.
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# JPEG markers: start of scan (the entropy-coded data follows) and end of image.
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
# JPEG states of the marker walk in `_jpeg_scan_start`.
_WALKING, _AT_SCAN, _ENDS_EARLY, _UNREADABLE = 0, 1, 2, 3


def _contains(data: tf.Tensor, start: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """Whether `pattern` occurs in `data[start:]` (vectorised: one comparison per byte)."""
    values = tf.io.decode_raw(tf.strings.substr(data, start, tf.strings.length(data)), tf.uint8)
    count = tf.maximum(tf.size(values) - len(pattern) + 1, 0)
    found = tf.ones([count], tf.bool)
    for offset, byte in enumerate(pattern):
        found = tf.logical_and(found, tf.equal(values[offset : offset + count], byte))
    return tf.reduce_any(found)


def _ends_with(data: tf.Tensor, suffix: bytes) -> tf.Tensor:
    length = tf.strings.length(data)
    start = tf.maximum(length - len(suffix), 0)
    return tf.equal(tf.strings.substr(data, start, len(suffix)), suffix)


def _png_complete(data: tf.Tensor) -> tf.Tensor:
    """Whether PNG bytes hold their IEND chunk (at the end, or before trailing bytes, which
    decoders ignore): a file cut anywhere before its last byte does not."""
    return tf.cond(
        _ends_with(data, PNG_END), lambda: tf.constant(True), lambda: _contains(data, 8, PNG_END)
    )


def _jpeg_ends_after(data: tf.Tensor, scan: tf.Tensor) -> tf.Tensor:
    """Whether JPEG bytes hold an end-of-image marker after their scan starts at `scan`.

    A file that ends with the marker is complete without looking further; only one with bytes
    after its end (which decoders ignore) is searched byte by byte.
    """
    marker = bytes([0xFF, _JPEG_EOI])
    at_end = _ends_with(data, marker) & (tf.strings.length(data) - 2 > scan)
    return tf.cond(at_end, lambda: tf.constant(True), lambda: _contains(data, scan, marker))


def _jpeg_scan_start(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Walks the JPEG marker segments from the start of the file to the first start of scan.

    Segments before the scan carry their length, so the walk skips their contents (an EXIF
    thumbnail, with markers of its own, included).

    Returns:
        `(state, position)`: `_AT_SCAN` and the scan marker's offset; `_ENDS_EARLY` (the file
        ends inside the header); or `_UNREADABLE` (a layout the walk does not follow, left to
        the decoder).
    """
    length = tf.strings.length(data)

    def step(position, state):
        def read():
            return tf.cast(
                tf.io.decode_raw(tf.strings.substr(data, position, 4), tf.uint8), tf.int32
            )

        inside = position + 4 <= length
        head = tf.cond(inside, read, lambda: tf.zeros([4], tf.int32))
        head = tf.ensure_shape(head, [4])
        marker, size = head[1], head[2] * 256 + head[3]
        fill = tf.equal(marker, 0xFF)
        alone = (marker == 0xD8) | (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))
        scan = tf.equal(marker, _JPEG_SOS)
        odd = (head[0] != 0xFF) | (marker == _JPEG_EOI) | (~fill & ~alone & ~scan & (size < 2))
        state = tf.where(
            ~inside, _ENDS_EARLY, tf.where(odd, _UNREADABLE, tf.where(scan, _AT_SCAN, _WALKING))
        )
        skip = tf.where(fill, 1, tf.where(alone, 2, 2 + size))
        return tf.where(tf.equal(state, _WALKING), position + skip, position), state

    position, state = tf.while_loop(
        lambda position, state: tf.equal(state, _WALKING),
        step,
        (tf.constant(2), tf.constant(_WALKING)),
    )
    return state, position


def _check_complete(data: tf.Tensor, is_png: tf.Tensor, index) -> tf.Tensor:
    """Asserts that JPEG or PNG bytes are not cut short (the decoders' own errors do not say
    which image of a batch failed); returns a tensor to depend on."""
    size = tf.strings.length(data)

    def png():
        check = tf.debugging.Assert(
            _png_complete(data),
            [
                tf.strings.format(
                    "image_bytes[{}]: truncated PNG: no IEND chunk, the file ends early ({} bytes)",
                    (index, size),
                )
            ],
        )
        with tf.control_dependencies([check]):
            return tf.constant(True)

    def jpeg():
        state, scan = _jpeg_scan_start(data)
        header = tf.debugging.Assert(
            tf.not_equal(state, _ENDS_EARLY),
            [
                tf.strings.format(
                    "image_bytes[{}]: truncated JPEG: the file ends inside its header ({} bytes)",
                    (index, size),
                )
            ],
        )
        with tf.control_dependencies([header]):
            ended = tf.cond(
                tf.equal(state, _AT_SCAN),
                lambda: _jpeg_ends_after(data, scan),
                lambda: tf.constant(True),
            )
        check = tf.debugging.Assert(
            ended,
            [
                tf.strings.format(
                    "image_bytes[{}]: truncated JPEG: no end-of-image marker after the image "
                    "data ({} bytes)",
                    (index, size),
                )
            ],
        )
        with tf.control_dependencies([check]):
            return tf.constant(True)

    return tf.cond(is_png, png, jpeg)


def _header_size(data: tf.Tensor, is_png: tf.Tensor, index) -> tf.Tensor:
    """`(height, width)` read from the header of JPEG or PNG bytes, without decoding."""

    def png_size():
        # IHDR: width and height as big-endian uint32 at bytes 16-23. Check the length first:
        # an out-of-range substr error would quote the (binary) bytes.
        check = tf.debugging.Assert(
            tf.strings.length(data) >= 24,
            [tf.strings.format("image_bytes[{}]: truncated PNG header", index)],
        )
        with tf.control_dependencies([check]):
            header = tf.strings.substr(data, 16, 8)
        width_height = tf.io.decode_raw(header, tf.int32, False)
        width_height = tf.ensure_shape(width_height, [2])
        return tf.stack([width_height[1], width_height[0]])

    def jpeg_size():
        return tf.io.extract_jpeg_shape(data)[:2]

    return tf.cond(is_png, png_size, jpeg_size)


def decode_image_bytes(
    data: tf.Tensor, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS, index=0
) -> tf.Tensor:
    """Decodes one JPEG or PNG image, refusing anything else.

    JPEGs are decoded with the accurate integer DCT (as OpenCV and PIL do), so the pixels are
    the same as a client decoding the file itself.

    Args:
        data: Scalar tf.string, the encoded file.
        channels: 1 (grey) or 3 (RGB); other colour layouts are converted.
        max_pixels: Largest accepted `height * width`.
        index: Position of the image in its batch, for error messages.

    Returns:
        (H, W, channels) uint8 image.

    Raises:
        tf.errors.InvalidArgumentError (at run time): not a JPEG/PNG, corrupt, or too large.
    """
    # The messages never quote the bytes: error strings must stay valid UTF-8.
    size = checked_header_size(data, index)
    is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_MAGIC)
    pixels = tf.cast(size[0], tf.int64) * tf.cast(size[1], tf.int64)
    check_size = tf.debugging.Assert(
        tf.logical_and(tf.reduce_all(size > 0), pixels <= max_pixels),
        [
            tf.strings.format(
                "image_bytes[{}]: image size {} is empty or above {} pixels",
                (index, size, max_pixels),
            )
        ],
    )
    with tf.control_dependencies([check_size]):
        image = tf.cond(
            is_png,
            lambda: tf.io.decode_png(data, channels=channels),
            lambda: tf.io.decode_jpeg(data, channels=channels, dct_method=JPEG_DCT_METHOD),
        )
    return tf.ensure_shape(image, [None, None, channels])


def checked_header_size(data: tf.Tensor, index=0) -> tf.Tensor:
    """`(height, width)` of JPEG or PNG bytes from the header, refusing other formats.

    Args:
        data: Scalar tf.string, the encoded file.
        index: Position of the image in its batch, for error messages.

    Returns:
        (2,) int32.
    """
    prefix = tf.strings.substr(data, 0, 8)
    is_png = tf.equal(prefix, PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(prefix, 0, 3), JPEG_MAGIC)
    check_format = tf.debugging.Assert(
        tf.logical_or(is_png, is_jpeg),
        [
            tf.strings.format(
                "image_bytes[{}]: not a JPEG or PNG file ({} bytes)",
                (index, tf.strings.length(data)),
            )
        ],
    )
    with tf.control_dependencies([check_format]):
        complete = _check_complete(data, is_png, index)
    with tf.control_dependencies([complete]):
        return _header_size(data, is_png, index)


def decode_batch(
    image_bytes: tf.Tensor,
    channels: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_request_pixels: int | None = None,
) -> tuple[tf.RaggedTensor, tf.Tensor]:
    """Decodes a batch of encoded images of any sizes, within a pixel budget.

    Every header is read first; a request whose images hold more than `max_request_pixels`
    in total is refused (InvalidArgumentError naming the budget) before anything is decoded.

    Args:
        image_bytes: (N,) tf.string, N >= 1.
        channels: Channels to decode to.
        max_pixels: Largest accepted pixel count per image (None: `DEFAULT_MAX_PIXELS`).
        max_request_pixels: Largest accepted pixel count of the whole request (None: no
            limit besides `max_pixels`).

    Returns:
        `(pixels, sizes)`: a (N, None) uint8 ragged tensor whose row i is image i flattened
        in (H, W, C) order, and the (N, 2) int32 `(height, width)` of each image.
    """
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    check = tf.debugging.Assert(
        tf.size(image_bytes) > 0, ["image_bytes: expected at least one image"]
    )
    with tf.control_dependencies([check]):
        image_bytes = tf.identity(image_bytes)
    checks = []
    if max_request_pixels is not None:
        max_request_pixels = int(max_request_pixels)
        header_sizes = tf.map_fn(
            lambda i: checked_header_size(image_bytes[i], i),
            tf.range(tf.size(image_bytes)),
            fn_output_signature=tf.TensorSpec([2], tf.int32),
        )
        total = tf.reduce_sum(tf.reduce_prod(tf.cast(header_sizes, tf.int64), axis=1))
        checks.append(
            tf.debugging.Assert(
                total <= max_request_pixels,
                [
                    tf.strings.format(
                        "image_bytes: the request holds {} pixels in {} image(s), above this "
                        "model's budget of {} pixels per request (set at export with "
                        "--max-request-memory); send fewer or smaller images",
                        (total, tf.size(image_bytes), max_request_pixels),
                    )
                ],
            )
        )
    with tf.control_dependencies(checks):
        image_bytes = tf.identity(image_bytes)

    def decode_one(index):
        image = decode_image_bytes(image_bytes[index], channels, max_pixels, index)
        return tf.reshape(image, [-1]), tf.shape(image)[:2]

    return tf.map_fn(
        decode_one,
        tf.range(tf.size(image_bytes)),
        fn_output_signature=(
            tf.RaggedTensorSpec(shape=[None], dtype=tf.uint8, ragged_rank=0),
            tf.TensorSpec([2], tf.int32),
        ),
    )


def image_at(pixels: tf.RaggedTensor, sizes: tf.Tensor, index: tf.Tensor, channels: int):
    """Image `index` of a `decode_batch` result, as (H, W, C) uint8."""
    start, stop = pixels.row_splits[index], pixels.row_splits[index + 1]
    shape = tf.concat([sizes[index], [channels]], 0)
    return tf.reshape(pixels.flat_values[start:stop], shape)


def centred_image(image: tf.Tensor, normalization: str | None) -> tf.Tensor:
    """A 0-255 image minus the normalisation's mean pixel (float32); padding it with zeros
    pads with the mean pixel, as the training pipelines do."""
    return tf.cast(image, tf.float32) - mean_pixel(normalization, image.shape[-1])


def finish_normalization(centred: tf.Tensor, normalization: str | None) -> tf.Tensor:
    """`keras_dense.utils.normalization.finish`, with the caffe channel swap as `tf.reverse`
    (a negative-stride slice costs about 7 times more in TensorFlow)."""
    if normalization == "caffe" and centred.shape[-1] == 3:
        return tf.reverse(centred, [-1])
    return finish(centred, normalization)


def normalized_batch(
    pixels: tf.RaggedTensor,
    sizes: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    channels: int,
    normalization: str | None,
    margin: int = 0,
) -> tf.Tensor:
    """The model input for a decoded batch: (N, height, width, C) float32.

    Each image is centred, mirror-padded by `margin`, zero-padded (i.e. with the mean pixel)
    at the bottom and right to `(height, width)`; the batch is then normalised. A batch of
    images that already have that size (and no margin) is reshaped without copies.
    """
    count = tf.shape(sizes)[0]

    def one_by_one():
        def one(index):
            image = centred_image(image_at(pixels, sizes, index, channels), normalization)
            return pad_to(mirror_pad(image, margin), height, width)

        return tf.map_fn(
            one,
            tf.range(count),
            fn_output_signature=tf.TensorSpec([None, None, channels], tf.float32),
        )

    if margin:
        centred = one_by_one()
    else:

        def reshaped():
            shape = tf.stack([count, height, width, channels])
            return centred_image(tf.reshape(pixels.flat_values, shape), normalization)

        exact = tf.reduce_all(tf.equal(sizes, tf.stack([height, width])))
        centred = tf.cond(exact, reshaped, one_by_one)
    return finish_normalization(centred, normalization)


def mirror_indices(length: tf.Tensor, margin: int) -> tf.Tensor:
    """Indices of a 1-D signal of `length` extended by `margin` on each side by mirroring.

    The mirror excludes the edge sample (NumPy's "reflect") and repeats as often as needed,
    so margins larger than the signal work.
    """
    positions = tf.range(-margin, length + margin)
    period = tf.maximum(2 * (length - 1), 1)
    folded = tf.math.floormod(positions, period)
    return tf.where(folded >= length, period - folded, folded)


def mirror_pad(image: tf.Tensor, margin: int) -> tf.Tensor:
    """Mirror-pads an (H, W, C) image by `margin` pixels on each side ("reflect")."""
    if margin == 0:
        return image
    shape = tf.shape(image)
    image = tf.gather(image, mirror_indices(shape[0], margin), axis=0)
    return tf.gather(image, mirror_indices(shape[1], margin), axis=1)


def pad_to(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor, value=0) -> tf.Tensor:
    """Pads an (H, W, ...) tensor at the bottom and right to (height, width, ...)."""
    shape = tf.shape(image)
    paddings = [[0, height - shape[0]], [0, width - shape[1]]]
    paddings += [[0, 0]] * (len(image.shape) - 2)
    return tf.pad(image, paddings, constant_values=value)


def encode_class_png(classes: tf.Tensor) -> tf.Tensor:
    """PNG bytes of an (H, W) class map (8-bit when ids fit, else 16-bit)."""
    classes = classes[..., None]
    return tf.cond(
        tf.reduce_max(classes) < 256,
        lambda: tf.io.encode_png(tf.cast(classes, tf.uint8), compression=1),
        lambda: tf.io.encode_png(tf.cast(classes, tf.uint16), compression=1),
    )
