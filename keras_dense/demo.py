"""The end-to-end demo on the built-in shapes data (`make demo`)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Converts the shapes set, reads it back through the input pipeline and summarises it.

    Args:
        argv: Command-line arguments (`--output DIR`, `--num-images N`).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--num-images", type=int, default=200)
    args = parser.parse_args(argv)

    import numpy as np

    from keras_dense import data
    from keras_dense.data.writer import summarize

    start = time.monotonic()
    records = os.path.join(args.output, "tfrecords", "shapes")
    print(f"[1/2] converting {args.num_images} synthetic shapes images -> {records}-*.tfrecord")
    manifest = data.convert_shapes(records, args.num_images, size=128, num_shards=2, workers=2)
    print(summarize(manifest))

    print("[2/2] one augmented training batch from segmentation_dataset:")
    ds = data.segmentation_dataset(
        f"{records}-*.tfrecord", batch_size=8, crop_size=96, training=True, seed=0
    )
    images, masks = next(iter(ds))
    values, counts = np.unique(masks.numpy(), return_counts=True)
    names = manifest["classes"]
    print(
        f"  images {tuple(images.shape)} {images.dtype.name}, range "
        f"[{float(images.numpy().min()):.1f}, {float(images.numpy().max()):.1f}] (caffe)"
    )
    print(f"  masks  {tuple(masks.shape)} {masks.dtype.name}")
    for v, c in zip(values, counts):
        label = names[v] if v < len(names) else "ignore (padding)"
        print(f"    {label:>16}: {100 * c / masks.numpy().size:5.1f}% of pixels")
    print(f"demo finished in {time.monotonic() - start:.1f} s; outputs in {args.output}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
