"""A dilated convolution's training step: `DilatedConv2D` (shifted taps) vs `keras.layers.Conv2D`.

Forward and backward (input and kernel gradients) of one dilated 3x3 convolution, each inside a
`tf.function`, on the same random input and weights; the baseline, Keras' `Conv2D` with the same
`dilation_rate`, is measured in the same run. Default: DeepLab v1's `fc6` (512 -> 1024, dilation
12) on the 20 x 20 maps of a 160 px crop, batch 4, as `benchmarks/results.py`'s Pets row trains
it, plus ASPP-L's rates and a 2-dilation `conv5` layer. With `--model`, also one whole
`deeplab_v1` training step at that crop, with `fc6` as each layer.

    .venv/bin/python benchmarks/dilated_convolution.py [--batch 4] [--size 20] [--runs 5] [--model]

Prints JSON: per configuration the median seconds of each (after a warm-up), the ratio
baseline / new (`ratio`), the largest output difference, versions, machine and load average.

Measured 2026-12-06 (`--runs 3 --model`, 2-core AMD EPYC family 25 model 1 with AVX2, TF 2.21,
load average 0.6-1.9), batch 4 on 20 x 20 maps, forward + backward:

| layer | Conv2D | DilatedConv2D | ratio |
|---|---|---|---|
| fc6 LargeFOV (512 -> 1024, dilation 12) | 13.1 s (3.5 GFLOP/s) | 0.51 s (89 GFLOP/s) | 25.7 |
| ASPP-L fc6, rate 24 (only the centre tap meets the map) | 46.0 s | 0.067 s | 687 |
| ASPP-L fc6, rate 6 | 1.77 s | 0.39 s | 4.6 |
| conv5, dilation 2 | 0.197 s | 0.194 s | 1.0 |
| whole `deeplab_v1` training step, 160 px crops | 15.9 s | 2.74 s | 5.8 |

Largest output difference 9e-7. The Pets row of `benchmarks/results.py` trained at 16.8 s a
step before (record `results_runs/pets/pretrained-seed0.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import environment, median_time  # noqa: E402

from keras_dense.layers import DilatedConv2D  # noqa: E402

# (name, in channels, filters, dilation)
LAYERS = [
    ("fc6 LargeFOV", 512, 1024, 12),
    ("fc6 ASPP-L rate 24", 512, 1024, 24),
    ("fc6 ASPP-L rate 6", 512, 1024, 6),
    ("conv5 dilation 2", 512, 512, 2),
]


def train_step(layer: keras.layers.Layer, x: tf.Tensor):
    """A compiled forward + backward of `layer` on `x` (gradients for `x` and the weights)."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_mean(tf.square(y))
        return y, tape.gradient(loss, [x, *layer.trainable_weights])

    return step


def compare_layer(in_channels, filters, rate, batch, size, runs) -> dict:
    x = tf.random.stateless_normal([batch, size, size, in_channels], seed=[0, rate])
    timings, outputs = {}, {}
    layers = {
        "conv2d": keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=rate),
        "dilated_conv2d": DilatedConv2D(
            filters, 3, padding="same", dilation_rate=rate, implementation="shifted_taps"
        ),
    }
    for layer in layers.values():
        layer.build(x.shape)
    layers["dilated_conv2d"].set_weights(layers["conv2d"].get_weights())
    for name, layer in layers.items():
        step = train_step(layer, x)
        outputs[name] = step()[0].numpy()
        timings[name] = median_time(step, runs=runs, warmup=1)
    # A dense 3x3 layer's forward + 2 gradients: taps left out (only padding) still count.
    flops = 3 * 2 * batch * size * size * 9 * in_channels * filters
    return {
        "conv2d_s": round(timings["conv2d"][0], 4),
        "dilated_conv2d_s": round(timings["dilated_conv2d"][0], 4),
        "ratio": round(timings["conv2d"][0] / timings["dilated_conv2d"][0], 2),
        "nominal_gflops_per_s": {k: round(flops / v[0] / 1e9, 1) for k, v in timings.items()},
        "max_abs_difference": float(np.abs(outputs["conv2d"] - outputs["dilated_conv2d"]).max()),
        "runs": {k: [round(t, 4) for t in v[1]] for k, v in timings.items()},
    }


def compare_model(batch: int, crop: int, runs: int) -> dict:
    """One `deeplab_v1` training step with `fc6` on `Conv2D`'s kernels and on shifted taps."""
    from keras_dense.apps import deeplab_v1

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    labels = rng.integers(0, 2, (batch, crop, crop)).astype("int32")
    result = {}
    for name, implementation in (("conv2d", "conv2d"), ("dilated_conv2d", "shifted_taps")):
        model = deeplab_v1(2, input_shape=(crop, crop, 3))
        dilated = [layer for layer in model.layers if isinstance(layer, DilatedConv2D)]
        assert dilated, "deeplab_v1 has no DilatedConv2D layer to compare"
        for layer in dilated:  # set before the first call traces the step
            layer.implementation = implementation
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        median, times = median_time(lambda m=model: m.train_on_batch(images, labels), runs=runs)
        result[f"{name}_s"] = round(median, 3)
        result[f"{name}_runs"] = [round(t, 3) for t in times]
    result["ratio"] = round(result["conv2d_s"] / result["dilated_conv2d_s"], 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=20, help="feature map side (crop / 8)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", action="store_true", help="also a whole deeplab_v1 step")
    args = parser.parse_args(argv)
    load_start = list(os.getloadavg())
    report = {
        "settings": vars(args),
        "statistic": "median seconds of a forward + backward step after 1 warm-up",
        "layers": {
            name: compare_layer(cin, cout, rate, args.batch, args.size, args.runs)
            for name, cin, cout, rate in LAYERS
        },
    }
    if args.model:
        report["deeplab_v1_train_step"] = compare_model(
            args.batch, args.size * 8, max(3, args.runs // 2)
        )
    report["environment"] = environment()
    report["load_average"] = {"start": load_start, "end": list(os.getloadavg())}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
