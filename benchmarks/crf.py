"""Dense-CRF speed and agreement: custom op vs pure-TF twin vs Krähenbühl's reference.

10 mean-field iterations on a 320x213 image with 21 classes, spatial and bilateral kernels
with DeepLab's parameters (theta_alpha=80, theta_beta=13, theta_gamma=3, weights 3 and 10),
timed end to end (lattice construction included) in the same process:

- `custom_op`: `keras_dense.crf.dense_crf(..., implementation="custom_op")`: every
  iteration in the fused op `KerasDensePottsMeanField` (`keras_dense.ops.potts_mean_field`);
- `custom_op_per_filter`: the path before the fused op, same lattices: `mean_field` with one
  filter op per kernel and iteration, softmax, normalisation and sums as TF ops (what
  CRF-as-RNN training runs);
- `tf`: the same with the pure-TF twin (the path inside exported SavedModels);
- `reference`: Krähenbühl's C++ implementation through pydensecrf, with the same unary
  (-log p, same clipping), the same features, Potts compatibility and per-pixel
  normalisation `NORMALIZE_AFTER` (divide by the filtering of ones: our normalisation).

One warm-up run each, then `--runs` rounds; each round runs every implementation once
(interleaved, so that a change in the machine's load hits all of them alike). Reports the
median, min and max wall time (`time.perf_counter`) and CPU time (`time.process_time`: all
threads of the process, i.e. the work done), the ratios of the medians, a breakdown into
lattice construction and one filtering (op vs twin), agreement with the reference, versions,
the machine and `os.getloadavg()` before and after (other processes share the cores: treat
differences smaller than the runs' spread as noise). Prints JSON.

`--learned` adds the learned lattice filters (`keras_dense.ops.lattice_convolution`, issue 22)
against the Gaussian blur in the same run, each implementation (twin, compiled ops) against
its own Gaussian filter: one filtering of the 21 classes with
both kernels (spatial d=2, bilateral d=5; lattices, sparse operators and neighbour tables
built beforehand), forward and forward+backward (gradients to the values and the taps), for
the separable and the general form at radius 1 and 2, and the time to find the neighbours.

pydensecrf is a benchmark-only dependency, not a requirement of keras_dense. The PyPI
`pydensecrf` 1.0rc3 sdist no longer builds with Cython 3; its maintained fork `pydensecrf2`
(1.1 tested; builds from source with pip and g++) provides `import pydensecrf`:

    .venv/bin/python -m pip install pydensecrf2
    .venv/bin/python benchmarks/crf.py [--runs 7] [--iterations 10] [--threads 1] [--learned]

Without it the report says so under "reference" and compares the op and the twin only.
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


def per_filter_crf(probabilities, image, iterations):
    """`dense_crf` as it ran before the fused op: one TF op per filter, softmax and sum."""
    import numpy as np
    import tensorflow as tf

    from keras_dense.crf.mean_field import build_kernels, mean_field, potts_pairwise

    height, width, classes = probabilities.shape
    unary = np.log(np.maximum(probabilities, CLIP)).reshape(1, -1, classes)
    if iterations not in _PER_FILTER_GRAPHS:

        @tf.function
        def run(unary, image):
            thetas = (PARAMS["theta_alpha"], PARAMS["theta_beta"], PARAMS["theta_gamma"])
            lattices = build_kernels(image, *thetas, "custom_op")
            scales = [-PARAMS["spatial_weight"], -PARAMS["bilateral_weight"]]
            logits = mean_field(
                unary, lattices, potts_pairwise, iterations, "custom_op", kernel_scales=scales
            )
            return tf.nn.softmax(logits, axis=-1)

        _PER_FILTER_GRAPHS[iterations] = run
    refined = _PER_FILTER_GRAPHS[iterations](
        tf.constant(unary), tf.constant(image[None].astype(np.float32))
    )
    return refined.numpy().reshape(height, width, classes)


_PER_FILTER_GRAPHS: dict = {}


def _summary(walls: list, cpus: list) -> dict:
    def ms(values):
        return [round(v * 1e3, 2) for v in values]

    return {
        "median_wall_ms": round(statistics.median(walls) * 1e3, 2),
        "median_cpu_ms": round(statistics.median(cpus) * 1e3, 2),
        "wall_ms_min_max": [min(ms(walls)), max(ms(walls))],
        "cpu_ms_min_max": [min(ms(cpus)), max(ms(cpus))],
        "wall_ms_runs": ms(walls),
        "cpu_ms_runs": ms(cpus),
    }


def interleaved(runners: dict, runs: int) -> tuple[dict, dict]:
    """One warm-up call each, then `runs` rounds of one timed call each.

    Returns:
        (last result of each runner, timing summary of each runner).
    """
    results = {name: fn() for name, fn in runners.items()}
    walls = {name: [] for name in runners}
    cpus = {name: [] for name in runners}
    for _ in range(runs):
        for name, fn in runners.items():
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return results, {name: _summary(walls[name], cpus[name]) for name in runners}


def _ratio(numerator: dict, denominator: dict, key: str) -> float:
    return round(numerator[key] / denominator[key], 2)


def component_timings(image, probabilities, runs: int) -> dict:
    """Lattice construction (both kernels) and one filtering of the 21 classes with both
    kernels, for the op and for the twin (the twin's sparse operator built beforehand)."""
    import numpy as np
    import tensorflow as tf

    from keras_dense.crf.mean_field import build_kernels
    from keras_dense.ops import filter_lattice, prepare_filter

    image_tensor = tf.constant(image[None].astype(np.float32))
    q = tf.constant(probabilities.reshape(1, -1, CLASSES))
    thetas = (PARAMS["theta_alpha"], PARAMS["theta_beta"], PARAMS["theta_gamma"])
    runners = {}
    for implementation in ("custom_op", "tf"):
        build = tf.function(lambda x, i=implementation: build_kernels(x, *thetas, i))
        prepare = tf.function(
            lambda x, i=implementation: [
                prepare_filter(lat, i) for lat in build_kernels(x, *thetas, i)
            ]
        )
        operators = prepare(image_tensor)
        filtering = tf.function(
            lambda v, ops=operators, i=implementation: [
                filter_lattice(v, op, implementation=i) for op in ops
            ]
        )
        runners[f"{implementation}_build"] = lambda b=build: b(image_tensor)
        runners[f"{implementation}_build_and_prepare"] = lambda p=prepare: p(image_tensor)
        runners[f"{implementation}_filter_both_kernels"] = lambda f=filtering: f(q)
    _, timings = interleaved(runners, runs)
    return {
        name: {k: v for k, v in summary.items() if k.startswith("median")}
        for name, summary in timings.items()
    }


def learned_filter_timings(image, probabilities, runs: int) -> dict:
    """Learned lattice filters vs the Gaussian blur, forward and forward+backward, each
    implementation (the twin, the compiled ops) against its own Gaussian filter."""
    import numpy as np
    import tensorflow as tf

    from keras_dense.crf.mean_field import kernel_features
    from keras_dense.ops import filter_lattice, lattice_stencil, prepare_filter
    from keras_dense.ops.lattice_convolution import lattice_convolve, lattice_neighbors
    from keras_dense.ops.permutohedral_tf import build_lattice

    thetas = (PARAMS["theta_alpha"], PARAMS["theta_beta"], PARAMS["theta_gamma"])
    features = kernel_features(tf.constant(image[None].astype(np.float32)), *thetas)
    lattices = [build_lattice(f) for f in features]
    q = tf.constant(probabilities.reshape(1, -1, CLASSES))
    variants = {}
    for implementation in ("tf", "custom_op"):
        variants[f"gaussian_{implementation}"] = (None, None, implementation)
        for form in ("separable", "general"):
            for radius in (1, 2):
                variants[f"{form}_r{radius}_{implementation}"] = (form, radius, implementation)

    def taps_of(form, radius, d):
        if form == "separable":
            return tf.constant(lattice_stencil.gaussian_separable_taps(d, radius))
        return tf.constant(lattice_stencil.gaussian_stencil(d, radius)[0])

    runners, neighbour_seconds, sizes = {}, {}, {}
    for name, (form, radius, implementation) in variants.items():
        operators = [prepare_filter(lattice, implementation) for lattice in lattices]
        if form is None:
            forward = tf.function(
                lambda v, ops=operators, i=implementation: [
                    filter_lattice(v, op, implementation=i) for op in ops
                ]
            )

            def backward(v, forward=forward):
                with tf.GradientTape() as tape:
                    tape.watch(v)
                    loss = tf.add_n([tf.reduce_sum(o * o) for o in forward(v)])
                return tape.gradient(loss, v)

        else:
            start = time.perf_counter()
            neighbors = [
                lattice_neighbors(f, lattice, radius, form)
                for f, lattice in zip(features, lattices)
            ]
            neighbour_seconds[name] = round(time.perf_counter() - start, 3)
            sizes[name] = [int(n.rows.shape[0]) for n in neighbors]
            taps = [tf.Variable(taps_of(form, radius, f.shape[-1])) for f in features]
            forward = tf.function(
                lambda v, ns=neighbors, ts=taps, i=implementation: [
                    lattice_convolve(v, n, t, implementation=i) for n, t in zip(ns, ts)
                ]
            )

            def backward(v, forward=forward, taps=taps):
                with tf.GradientTape() as tape:
                    tape.watch(v)
                    loss = tf.add_n([tf.reduce_sum(o * o) for o in forward(v)])
                return tape.gradient(loss, [v, *taps])

        backward = tf.function(backward)
        runners[f"{name}_forward"] = lambda f=forward: [x.numpy() for x in f(q)]
        runners[f"{name}_forward_backward"] = lambda b=backward: [
            tf.convert_to_tensor(x).numpy() for x in tf.nest.flatten(b(q))
        ]
    _, timings = interleaved(runners, runs)
    out = {
        name: {k: v for k, v in summary.items() if k.startswith("median")}
        for name, summary in timings.items()
    }
    ratios = {}
    for name, (form, _, implementation) in variants.items():
        if form is None:
            continue
        for kind in ("forward", "forward_backward"):
            for clock in ("wall", "cpu"):
                ratios[f"{name}_{kind}_over_gaussian_{clock}"] = _ratio(
                    timings[f"{name}_{kind}"],
                    timings[f"gaussian_{implementation}_{kind}"],
                    f"median_{clock}_ms",
                )
    lattice_points = [int(lattice.num_points[0]) for lattice in lattices]
    return {
        "timings": out,
        "ratios": ratios,
        "neighbour_search_seconds": neighbour_seconds,
        "taps_per_kernel": sizes,
        "lattice_points_spatial_bilateral": lattice_points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=0, help="TF intra/inter-op threads (0: TF's default)"
    )
    parser.add_argument("--no-components", action="store_true", help="skip the breakdown")
    parser.add_argument("--learned", action="store_true", help="add the learned filters")
    parser.add_argument(
        "--learned-only", action="store_true", help="only the learned filters vs the Gaussian"
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
    if args.learned_only:
        report = {"image": f"{WIDTH}x{HEIGHT}", "classes": CLASSES, "runs": args.runs}
        report["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
        report["learned_filters"] = learned_filter_timings(image, probabilities, args.runs)
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        report["environment"] = environment()
        print(json.dumps(report, indent=2))
        return
    runners = {
        "custom_op": lambda: dense_crf(
            probabilities,
            image,
            num_iterations=args.iterations,
            implementation="custom_op",
            **PARAMS,
        ),
        "custom_op_per_filter": lambda: per_filter_crf(probabilities, image, args.iterations),
        "tf": lambda: dense_crf(
            probabilities, image, num_iterations=args.iterations, implementation="tf", **PARAMS
        ),
    }
    report = {"image": f"{WIDTH}x{HEIGHT}", "classes": CLASSES, "iterations": args.iterations}
    report.update(params=PARAMS, runs=args.runs, threads=args.threads or "default")
    report["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    reference_version = None
    try:
        import pydensecrf.densecrf  # noqa: F401

        runners["reference"] = lambda: reference_crf(probabilities, image, args.iterations)
        reference_version = _distribution_version("pydensecrf2") or _distribution_version(
            "pydensecrf"
        )
    except ImportError as error:
        message = (
            f"pydensecrf is not installed ({error}): no reference timing. Install it with "
            "`pip install pydensecrf2` (the `bench` extra); see this script's docstring."
        )
        report["reference"] = {"missing": message}
        print(message, file=sys.stderr)

    results, timings = interleaved(runners, args.runs)
    unary_accuracy = round(float(np.mean(probabilities.argmax(-1) == labels)), 4)
    for name, summary in timings.items():
        summary["crf_accuracy"] = round(float(np.mean(results[name].argmax(-1) == labels)), 4)
        report[name] = summary
    report["unary_accuracy"] = unary_accuracy
    op, twin = timings["custom_op"], timings["tf"]
    per_filter = timings["custom_op_per_filter"]
    ratios = {
        "twin_over_op_wall": _ratio(twin, op, "median_wall_ms"),
        "twin_over_op_cpu": _ratio(twin, op, "median_cpu_ms"),
        "per_filter_over_fused_wall": _ratio(per_filter, op, "median_wall_ms"),
        "per_filter_over_fused_cpu": _ratio(per_filter, op, "median_cpu_ms"),
    }
    if "reference" in timings:
        reference = timings["reference"]
        ratios.update(
            reference_over_op_wall=_ratio(reference, op, "median_wall_ms"),
            reference_over_op_cpu=_ratio(reference, op, "median_cpu_ms"),
            reference_over_per_filter_wall=_ratio(reference, per_filter, "median_wall_ms"),
            reference_over_per_filter_cpu=_ratio(reference, per_filter, "median_cpu_ms"),
            reference_over_twin_wall=_ratio(reference, twin, "median_wall_ms"),
            reference_over_twin_cpu=_ratio(reference, twin, "median_cpu_ms"),
        )
        for name in ("custom_op", "custom_op_per_filter", "tf"):
            report[name]["argmax_agreement_with_reference"] = round(
                float(np.mean(results[name].argmax(-1) == results["reference"].argmax(-1))), 5
            )
            report[name]["max_abs_prob_diff_to_reference"] = float(
                np.abs(results[name] - results["reference"]).max()
            )
    report["ratios"] = ratios
    report["twin_vs_op_max_abs_diff"] = float(np.abs(results["tf"] - results["custom_op"]).max())
    report["per_filter_vs_fused_max_abs_diff"] = float(
        np.abs(results["custom_op_per_filter"] - results["custom_op"]).max()
    )
    if not args.no_components:
        report["components"] = component_timings(image, probabilities, args.runs)
    if args.learned:
        report["learned_filters"] = learned_filter_timings(image, probabilities, args.runs)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["environment"] = dict(environment(), pydensecrf=reference_version)
    print(json.dumps(report, indent=2))


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
