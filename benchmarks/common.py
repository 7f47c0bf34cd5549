"""Shared bits of the benchmark scripts: timing and the environment report."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> tuple[float, list]:
    """Median wall time of `fn()` over `runs` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


# The widest vector extensions TensorFlow's CPU kernels use, widest first: two machines that
# both call themselves "AMD EPYC" can differ by 2x per training step on these alone.
VECTOR_EXTENSIONS = ("amx_tile", "avx512_bf16", "avx512f", "avx2", "avx")


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU as `/proc/cpuinfo` names it: model name, family/model, vector extensions.

    Virtual machines often mask the model name ("AMD EPYC"), so the family and model numbers
    and the vector extensions are what tell two machines apart. Off Linux, only the name that
    `platform.processor()` gives is known.

    Args:
        cpuinfo: The file to read (a test passes its own).

    Returns:
        `name`, `family_model` ("family 25 model 1", or "") and `vector` (the extensions of
        `VECTOR_EXTENSIONS` the first processor has, widest first).
    """
    info = {"name": platform.processor() or "", "family_model": "", "vector": []}
    try:
        with open(cpuinfo) as f:
            text = f.read().split("\n\n", 1)[0]  # the first processor's block
    except OSError:
        return info
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    info["name"] = fields.get("model name", info["name"])
    if "cpu family" in fields and "model" in fields:
        info["family_model"] = f"family {fields['cpu family']} model {fields['model']}"
    flags = set(fields.get("flags", "").split())
    info["vector"] = [ext for ext in VECTOR_EXTENSIONS if ext in flags]
    return info


def environment() -> dict:
    """Versions and machine facts to print beside every measurement."""
    import keras
    import numpy as np
    import tensorflow as tf

    processor = cpu()
    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu": processor["name"],
        "cpu_family_model": processor["family_model"],
        "cpu_vector_extensions": processor["vector"],
        "cpu_count": os.cpu_count(),
        "gpus": len(gpus),
        "gpu_name": details.get("device_name", ""),
    }


def downscaled_pairs(images, masks, split, side: int, out) -> tuple[str, str]:
    """Copies of a split's photos (bilinear) and masks (nearest) at most `side` px on a side.

    Args:
        images: Folder of `<stem>.jpg` photos.
        masks: Folder of `<stem>.png` masks.
        split: A split file whose lines start with a stem.
        side: The longer side of the copies (smaller images stay as they are).
        out: Folder that receives `images/` and `masks/` (written once, then reused).

    Returns:
        The copies' image and mask folders, for `keras-dense convert pairs`.
    """
    import pathlib

    from PIL import Image

    out = pathlib.Path(out)
    done = out / "complete"
    folders = {"images": out / "images", "masks": out / "masks"}
    if not done.is_file():
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        for line in pathlib.Path(split).read_text().splitlines():
            if not line.strip():
                continue
            stem = line.split()[0]
            for source, target, ext, resample in (
                (images, folders["images"], "jpg", Image.BILINEAR),
                (masks, folders["masks"], "png", Image.NEAREST),
            ):
                with Image.open(pathlib.Path(source) / f"{stem}.{ext}") as img:
                    img = img.convert("RGB") if ext == "jpg" else img
                    scale = min(1.0, side / max(img.size))
                    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
                    img.resize(size, resample).save(target / f"{stem}.{ext}", quality=95)
        done.write_text("")
    return str(folders["images"]), str(folders["masks"])
