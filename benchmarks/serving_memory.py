"""Peak memory of the demo SavedModel's `serving_default` for large requests.

Exports the shapes demo model (U-Net, same padding, 16 filters, depth 4; random weights: the
memory does not depend on them) with the default 2 GiB request budget, then sends zero-valued
PNGs of growing size to `serving_default`, each request in a fresh process, and reports the
process's peak RSS and whether the request was answered or refused. The baseline is the same
request against an export with the budget switched off (`max_request_memory` huge), measured
in the same run for the 4000 x 4000 request (the larger ones need more than 12 GB unbounded),
to show what the budget prevents.

    .venv/bin/python benchmarks/serving_memory.py [--skip-unbounded]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REQUESTS = {
    "4000x4000": [(4000, 4000)],
    "8x2000x2000": [(2000, 2000)] * 8,
    "7000x7000": [(7000, 7000)],
}


def _child(model_dir: str, sizes: list[tuple[int, int]]) -> None:
    import numpy as np
    import tensorflow as tf

    from keras_dense.data.image_io import encode_png

    loaded = tf.saved_model.load(model_dir)
    fn = loaded.signatures["serving_default"]
    images = [encode_png(np.zeros((h, w, 3), np.uint8)) for h, w in sizes]
    start = time.perf_counter()
    try:
        out = fn(image_bytes=tf.constant(images))
        status = f"answered {tuple(out['classes'].shape)}"
    except tf.errors.InvalidArgumentError as err:
        status = "refused: " + err.message.split("\n")[0][:200]
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"status": status, "seconds": seconds, "peak_rss_bytes": rss}))


def _run_child(model_dir: str, sizes) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", model_dir, json.dumps(sizes)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": f"crashed (exit {proc.returncode})", "stderr": proc.stderr[-500:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--skip-unbounded", action="store_true")
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], [tuple(s) for s in json.loads(args.child[1])])
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import environment

    import keras_dense
    from keras_dense.export.saved_model_export import export_saved_model

    model = keras_dense.apps.unet(
        4, input_shape=(None, None, 3), padding="same", filters=16, depth=4, batch_norm=True
    )
    root = tempfile.mkdtemp(prefix="serving_memory_")
    bounded = export_saved_model(model, root, name="bounded", verify=False)
    budget = bounded.memory_budget
    results = {
        "model": "unet(4, input_shape=(None, None, 3), padding='same', filters=16, depth=4)",
        "budget": {
            "bytes_per_pixel": budget.bytes_per_pixel,
            "max_request_pixels": budget.max_request_pixels,
            "max_image_pixels": budget.max_image_pixels,
        },
        "requests": {},
    }
    unbounded = None
    if not args.skip_unbounded:
        unbounded = export_saved_model(
            model, root, name="unbounded", verify=False, max_request_memory=1 << 50
        )
    side = int((0.9 * budget.max_request_pixels) ** 0.5)
    requests = {**REQUESTS, f"{side}x{side} (90% of budget)": [(side, side)]}
    for label, sizes in requests.items():
        row = {"bounded": _run_child(bounded.path, sizes)}
        if unbounded is not None and label == "4000x4000":  # the others exceed 16 GB
            row["unbounded_baseline"] = _run_child(unbounded.path, sizes)
        results["requests"][label] = row
    results["environment"] = environment()
    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
