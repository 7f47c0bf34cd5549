"""Dense-CRF speed and agreement: custom op vs pure-TF twin vs Krähenbühl's reference.

10 mean-field iterations on a 320x213 image with 21 classes, spatial and bilateral kernels
with DeepLab's parameters (theta_alpha=80, theta_beta=13, theta_gamma=3, weights 3 and 10),
timed end to end (lattice construction included), median of 5 runs after one warm-up run:

- `custom_op`: `keras_dense.crf.dense_crf(..., implementation="custom_op")`;
- `tf`: the same with the pure-TF twin;
- `reference`: Krähenbühl's C++ implementation through pydensecrf, with the same unary
  (-log p, same clipping), the same features, Potts compatibility and per-pixel
  normalisation `NORMALIZE_AFTER` (divide by the filtering of ones: our normalisation).

Reports wall and CPU time, the speed ratios, the arg-max agreement with the reference and the
machine's load average (other processes share the cores). Prints JSON.

pydensecrf is a benchmark-only dependency, not a requirement of keras_dense. The PyPI
`pydensecrf` 1.0rc3 sdist no longer builds with Cython 3; its maintained fork builds from
source with pip:

    .venv/bin/python -m pip install pydensecrf2      # provides `import pydensecrf`
    .venv/bin/python benchmarks/crf.py [--runs 5] [--iterations 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402

WIDTH, HEIGHT, CLASSES = 320, 213, 21
PARAMS = dict(
    theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0, spatial_weight=3.0, bilateral_weight=10.0
)
CLIP = 1e-8  # keras_dense.crf.dense_crf.MIN_PROBABILITY


def synthetic_scene(seed: int = 0):
    """A 320x213 scene of 21 classes (ellipses and boxes on a shaded background) and unaries
    from a blurred, noisy copy of its label map."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.zeros((HEIGHT, WIDTH), np.int32)
    for _ in range(14):
        label = int(rng.integers(1, CLASSES))
        centre = (int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(15, 70)), int(rng.integers(15, 60)))
            cv2.ellipse(labels, centre, axes, float(rng.uniform(0, 180)), 0, 360, label, -1)
        else:
            corner = (centre[0] + int(rng.integers(20, 90)), centre[1] + int(rng.integers(20, 70)))
            cv2.rectangle(labels, centre, corner, label, -1)
    palette = rng.uniform(30, 225, (CLASSES, 3))
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    shading = 25 * np.sin(columns / 40.0)[..., None] + 15 * np.cos(rows / 30.0)[..., None]
    image = palette[labels] + shading + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    scores = cv2.GaussianBlur(np.eye(CLASSES, dtype=np.float32)[labels] * 4.0, (0, 0), 6)
    scores += rng.normal(0, 0.8, scores.shape).astype(np.float32)
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return image, labels, probabilities.astype(np.float32)


def reference_crf(probabilities, image, iterations):
    """pydensecrf with matching parameters and normalisation."""
    import numpy as np
    import pydensecrf.densecrf as dcrf

    height, width, classes = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.maximum(probabilities, CLIP)).reshape(-1, classes).T
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(
        sxy=PARAMS["theta_gamma"],
        compat=PARAMS["spatial_weight"],
        kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_AFTER,
    )
    crf.addPairwiseBilateral(
        sxy=PARAMS["theta_alpha"],
        srgb=PARAMS["theta_beta"],
        rgbim=np.ascontiguousarray(image),
        compat=PARAMS["bilateral_weight"],
        kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_AFTER,
    )
    return np.asarray(crf.inference(iterations)).T.reshape(height, width, classes)


def timed(fn, runs: int):
    """Median wall and CPU seconds of `fn()` over `runs` runs after one warm-up run."""
    result = fn()
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus), walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=0, help="TF intra/inter-op threads (0: TF's default)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from keras_dense.crf import dense_crf

    image, labels, probabilities = synthetic_scene()
    runners = {
        "custom_op": lambda: dense_crf(
            probabilities,
            image,
            num_iterations=args.iterations,
            implementation="custom_op",
            **PARAMS,
        ),
        "tf": lambda: dense_crf(
            probabilities, image, num_iterations=args.iterations, implementation="tf", **PARAMS
        ),
    }
    report = {"image": f"{WIDTH}x{HEIGHT}", "classes": CLASSES, "iterations": args.iterations}
    report.update(params=PARAMS, runs=args.runs, threads=args.threads or "default")
    report["load_average_before"] = os.getloadavg()
    try:
        import pydensecrf.densecrf  # noqa: F401

        runners["reference"] = lambda: reference_crf(probabilities, image, args.iterations)
    except ImportError as error:
        report["reference_missing"] = f"{error}: pip install pydensecrf2 (see the docstring)"

    results = {}
    for name, fn in runners.items():
        q, wall, cpu, walls = timed(fn, args.runs)
        results[name] = q
        report[name] = {
            "median_wall_ms": round(wall * 1e3, 1),
            "median_cpu_ms": round(cpu * 1e3, 1),
            "wall_ms_runs": [round(t * 1e3, 1) for t in walls],
            "unary_accuracy": round(float(np.mean(probabilities.argmax(-1) == labels)), 4),
            "crf_accuracy": round(float(np.mean(q.argmax(-1) == labels)), 4),
        }
    report["load_average_after"] = os.getloadavg()
    report["twin_vs_op_max_abs_diff"] = float(np.abs(results["tf"] - results["custom_op"]).max())
    if "reference" in results:
        for name in ("custom_op", "tf"):
            report[name]["argmax_agreement_with_reference"] = round(
                float(np.mean(results[name].argmax(-1) == results["reference"].argmax(-1))), 5
            )
            report[name]["max_abs_prob_diff_to_reference"] = float(
                np.abs(results[name] - results["reference"]).max()
            )
            report[name]["speedup_vs_reference_wall"] = round(
                report["reference"]["median_wall_ms"] / report[name]["median_wall_ms"], 2
            )
    report["environment"] = environment()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
