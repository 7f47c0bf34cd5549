"""Reading input files on any file system TensorFlow has: local paths, `gs://`, `ram://`, ...

Local paths use the operating system directly (its errors are `OSError`s, as before); a path
with a scheme goes through `tf.io.gfile`, so that a converter's workers on other machines read
the same bucket. `tf.errors.NotFoundError` from a remote path becomes `FileNotFoundError`.
"""

from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether a path names a file system other than the local one (`gs://...`, `ram://...`)."""
    return bool(_SCHEME.match(str(path))) and not str(path).startswith("file://")


def read_bytes(path: str) -> bytes:
    """The whole content of a file."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(f"{path}: no such file") from err


def list_folder(folder: str) -> list[str]:
    """The names directly inside `folder` (unsorted), without trailing slashes."""
    if not is_remote(folder):
        return os.listdir(folder)
    import tensorflow as tf

    return [name.rstrip("/") for name in tf.io.gfile.listdir(folder)]


def is_folder(path: str) -> bool:
    """Whether `path` is an existing folder."""
    if not is_remote(path):
        return os.path.isdir(path)
    import tensorflow as tf

    return tf.io.gfile.isdir(path)


def is_file(path: str) -> bool:
    """Whether `path` is an existing file."""
    if not is_remote(path):
        return os.path.isfile(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def join(folder: str, name: str) -> str:
    """`folder/name` (os.path.join for local paths; one slash for remote ones)."""
    if not is_remote(folder):
        return os.path.join(folder, name)
    return f"{folder.rstrip('/')}/{name}"


def glob_files(pattern: str) -> list[str]:
    """The paths matching a glob pattern, sorted."""
    if not is_remote(pattern):
        import glob

        return sorted(glob.glob(pattern))
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(pattern))
