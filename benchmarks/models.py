"""Forward and training-step throughput of the keras_dense segmentation builders on this machine.

Every builder that exists in `keras_dense.apps` (fcn8s, deeplab, deconvnet, unet) is built with
random weights at a common input size and timed:

- forward: `model.predict_on_batch(x)` (compiled inference step),
- training: `model.train_on_batch(x, y)` (SGD, sparse cross-entropy on logits),

as the median over `--runs` timed runs after `--warmup` untimed ones. The timed runs go round
robin over the models so that load from other processes affects all of them alike. If `keras_hub` is
installed, its DeepLabV3 (ResNet50 v1 image encoder, DeepLabV3+ decoder, built from a config with
random weights: no download) runs on the same input and the ratios ours/theirs are printed,
for our DeepLabv3+ at output stride 16 and, for equal work, at output stride 32 (keras-hub's
ResNet has no dilation, so its ASPP sees the stride-32 features).

Run: `python benchmarks/models.py [--size 128] [--batch 2] [--runs 7]`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import cpu  # noqa: E402

import keras_dense  # noqa: E402

# Name -> (builder function of keras_dense.apps, keyword arguments given `size`).
BUILDERS: dict[str, tuple[str, Callable[[int], dict]]] = {
    "fcn8s": ("fcn8s", lambda s: {"input_shape": (s, s, 3)}),
    "deeplab_resnet50_os16": (
        "deeplab",
        lambda s: {"backbone": "resnet50", "output_stride": 16, "input_shape": (s, s, 3)},
    ),
    # The paper's 7x7 "valid" fc6 needs inputs of at least 193 px; "same" runs at any size.
    "deconvnet": ("deconvnet", lambda s: {"input_shape": (s, s, 3), "fc_padding": "same"}),
    "unet": ("unet", lambda s: {"input_shape": (s, s, 3), "padding": "same"}),
}
COMPARED_WITH_KERAS_HUB = ("deeplab_resnet50_os16", "deeplab_resnet50_os32")


def deeplab_os32(num_classes: int, size: int) -> keras.Model:
    """Benchmark-only: our DeepLabv3+ head on the undilated ResNet50 (output stride 32).

    This is the configuration keras-hub's DeepLabV3 runs (its ResNet has no dilation), so
    the two can be compared at equal work; `deeplab()` itself offers output stride 16 or 8.
    """
    from keras_dense.apps.deeplab_model import deeplab_decoder
    from keras_dense.backbones import get_backbone
    from keras_dense.layers import ASPP, ResizeToMatch

    inputs = keras.Input((size, size, 3))
    features = get_backbone("resnet50").apply(inputs, output_stride=32)
    x = deeplab_decoder(ASPP(atrous_rates=(6, 12, 18), name="aspp")(features[32]), features[4])
    x = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    outputs = ResizeToMatch(name="upsample_logits")([x, inputs])
    return keras.Model(inputs, outputs, name="deeplabv3plus_resnet50_os32")


def keras_hub_deeplab(num_classes: int, size: int) -> keras.Model:
    """keras-hub's DeepLabV3+ with a ResNet50 (v1) encoder, random weights, no download."""
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=(size, size, 3),
    )
    # The configuration of the "deeplab_v3_plus_resnet50_pascalvoc" preset: ASPP on the
    # stride-32 P5 features (keras-hub's ResNet has no dilation), decoder on P2.
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        low_level_feature_key="P2",
        projection_filters=48,
        image_shape=(size, size, 3),
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes)


def forward_gflops(model: keras.Model, size: int) -> float | None:
    """Floating-point operations of one forward pass of one image (TF profiler), in GFLOPs."""
    try:
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        spec = tf.TensorSpec((1, size, size, 3), tf.float32)
        function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        graph = convert_variables_to_constants_v2(function).graph
        builder = tf.compat.v1.profiler.ProfileOptionBuilder
        options = builder(builder.float_operation()).with_empty_output().build()
        flops = tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
        return flops / 1e9
    except Exception:  # noqa: BLE001 - the FLOP count is informative only
        return None


class TimedModel:
    """A model compiled for timing, with its random batch and the measured step times."""

    def __init__(self, model: keras.Model, batch: int, size: int, num_classes: int):
        rng = np.random.default_rng(0)
        self.model = model
        self.batch = batch
        self.x = rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype(np.float32)
        self.y = rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)
        self.output_shape = list(model.predict_on_batch(self.x).shape)
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[],  # an empty list also drops metrics a model was compiled with
            jit_compile=False,
        )
        self.times: dict[str, list[float]] = {"forward": [], "train": []}

    def step(self, kind: str, record: bool = True) -> None:
        """Runs one forward (`predict_on_batch`) or training (`train_on_batch`) step."""
        start = time.perf_counter()
        if kind == "forward":
            self.model.predict_on_batch(self.x)
        else:
            self.model.train_on_batch(self.x, self.y)
        if record:
            self.times[kind].append(time.perf_counter() - start)

    def summary(self) -> dict:
        forward, train = self.times["forward"], self.times["train"]
        return {
            "params": int(self.model.count_params()),
            "output_shape": self.output_shape,
            "forward_images_per_s": self.batch / statistics.median(forward),
            "train_images_per_s": self.batch / statistics.median(train),
            # The fastest run: less sensitive to other processes on a shared machine.
            "forward_images_per_s_best": self.batch / min(forward),
            "train_images_per_s_best": self.batch / min(train),
            "forward_seconds": [round(t, 4) for t in forward],
            "train_seconds": [round(t, 4) for t in train],
        }


def machine_info() -> dict:
    processor = cpu()
    return {
        "platform": platform.platform(),
        "cpu": processor["name"],
        "cpu_family_model": processor["family_model"],
        "cpu_vector_extensions": processor["vector"],
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict:
    import keras_dense

    info = {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "keras_dense": keras_dense.__version__,
    }
    try:
        import keras_hub

        info["keras_hub"] = keras_hub.__version__
    except ImportError:
        info["keras_hub"] = None
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--models",
        nargs="*",
        default=[*BUILDERS, "deeplab_resnet50_os32", "keras_hub_deeplabv3plus"],
    )
    args = parser.parse_args(argv)

    report = {
        "settings": {
            "input": [args.batch, args.size, args.size, 3],
            "num_classes": args.num_classes,
            "warmup": args.warmup,
            "runs": args.runs,
            "statistic": "median",
            "dtype": keras.config.floatx(),
        },
        "versions": versions(),
        "machine": machine_info(),
        "models": {},
        "missing": [],
    }
    timed: dict[str, TimedModel] = {}
    for name in args.models:
        if name == "deeplab_resnet50_os32":
            factory = lambda: deeplab_os32(args.num_classes, args.size)  # noqa: E731
        elif name == "keras_hub_deeplabv3plus":
            if report["versions"]["keras_hub"] is None:
                report["missing"].append(name)
                print(
                    "benchmarks/models.py: keras-hub is not installed, so the keras-hub "
                    "comparison is left out; install the bench extra (make bench, or "
                    "pip install -e '.[bench]')",
                    file=sys.stderr,
                )
                continue
            factory = lambda: keras_hub_deeplab(args.num_classes, args.size)  # noqa: E731
        else:
            function, kwargs = BUILDERS[name]
            builder = getattr(keras_dense.apps, function)
            factory = lambda b=builder, k=kwargs: b(  # noqa: E731
                num_classes=args.num_classes, **k(args.size)
            )
        try:
            start = time.perf_counter()
            model = factory()
            build_seconds = time.perf_counter() - start
            timed[name] = TimedModel(model, args.batch, args.size, args.num_classes)
            for _ in range(args.warmup):
                timed[name].step("forward", record=False)
                timed[name].step("train", record=False)
            report["models"][name] = {
                "build_seconds": round(build_seconds, 2),
                "forward_gflops_per_image": forward_gflops(model, args.size),
            }
        except Exception as error:  # noqa: BLE001 - report and go on with the next model
            report["models"][name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"# built {name}: {report['models'][name]}", file=sys.stderr)

    # Round robin over the models, so that load from other processes spreads over all of them.
    for _ in range(args.runs):
        for model in timed.values():
            model.step("forward")
            model.step("train")
    for name, model in timed.items():
        report["models"][name].update(model.summary())

    theirs = report["models"].get("keras_hub_deeplabv3plus", {})
    for name in COMPARED_WITH_KERAS_HUB:
        ours = report["models"].get(name, {})
        if "forward_images_per_s" in ours and "forward_images_per_s" in theirs:
            report.setdefault("ours_over_keras_hub", {})[name] = {
                key: ours[key] / theirs[key]
                for key in (
                    "forward_images_per_s",
                    "train_images_per_s",
                    "forward_images_per_s_best",
                    "train_images_per_s_best",
                    "forward_gflops_per_image",
                )
                if ours.get(key) and theirs.get(key)
            }
    if "ours_over_keras_hub" in report:
        report["ours_over_keras_hub"]["note"] = (
            "keras-hub DeepLabV3+ (ResNet50 v1, random weights) runs ASPP on the stride-32 "
            "features (no atrous ResNet) and its decoder is one 1x1 conv instead of the "
            "paper's two 3x3 convs: see forward_gflops_per_image for the work each model does"
        )
    report["machine"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
