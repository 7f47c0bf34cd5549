"""CRF-as-RNN (Zheng et al., ICCV 2015): dense-CRF mean field as a trainable Keras layer.

`CrfRnn` refines segmentation logits with a fully connected CRF whose pairwise potentials are
two Gaussian kernels over the pixels (Krähenbühl & Koltun 2011): a spatial kernel
(`theta_gamma`) and a bilateral kernel (`theta_alpha` in pixels, `theta_beta` in colour
levels, on the raw 0-255 image). Mean field starts at Q = softmax(U), U the input logits, and
each iteration (an RNN step, `keras_dense.crf.mean_field`):

1. filters Q with each kernel (permutohedral lattice; one lattice per image and kernel, built
   once per call and reused by every iteration and by the backward pass);
2. divides each result by that kernel's filtering of an all-ones image;
3. mixes them with the trainable C x C kernel-weight matrices (initialised to
   `spatial_weight * I` and `bilateral_weight * I`): `sum_m filtered_m @ W_m^T`;
4. applies the trainable C x C compatibility matrix (initialised to Potts, 1 - I);
5. sets Q = softmax(U - pairwise).

The output is the final `U - pairwise` (logits). Gradients flow to the logits and to the three
matrices; the image gets none (the lattice is piecewise constant in it).

Iterations: `num_iterations` (default 5, as the paper trains) can be changed for inference,
e.g. to the paper's 10: call the layer with `num_iterations=10`, or set the attribute on a
built model with `set_crf_iterations(model, 10)` (which also drops the model's compiled
predict/evaluate functions so that the change takes effect).

Implementation: `"custom_op"` (C++ CPU kernels, `keras_dense.ops`), `"tf"` (stock TF ops only:
GPU, SavedModel, TF Serving) or `"auto"` (the op when it can be built, else "tf"). Before
exporting a SavedModel, switch every CrfRnn layer to "tf" with `use_portable_crf(model)`.

Learned pairwise filters (Jampani, Kiefel & Gehler 2016, "Learning Sparse High Dimensional
Filters", Table 2): `pairwise="learned"` replaces each kernel's Gaussian blur in step 1 by a
lattice convolution with trainable taps (`keras_dense.ops.lattice_convolution`; one scalar per
lattice neighbour, shared by the classes), initialised from the Gaussian: exactly with
`filter_form="separable"`; with the paper's `filter_form="general"`, the Gaussian's stencil
cut to the radius (`lattice_stencil.gaussian_stencil`: at radius 1 it keeps 72 % of the
spatial and 34 % of the bilateral blur's weight, so its pairwise term starts weaker). The
normalisation of step 2 stays the Gaussian's. `loose=True` gives every step its own kernel
weights, compatibility and (learned) taps, as the paper's "loose" mean field; the number of
steps is then fixed by `num_iterations`. `implementation` picks the lattice convolution's
compiled ops or its stock-TF twin as it does the lattice's; `use_portable_crf` switches both.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_dense.crf.mean_field import (
    build_kernels,
    iterate_mean_field,
    kernel_features,
    mean_field,
)
from keras_dense.layers.permutohedral_convolution import PermutohedralConvolution
from keras_dense.layers.walk import iter_layers, reset_compiled_functions
from keras_dense.ops import lattice_stencil
from keras_dense.ops.lattice_convolution import lattice_convolve, lattice_neighbors
from keras_dense.ops.permutohedral import (
    build_lattice,
    check_implementation,
    filter_lattice,
    prepare_filter,
    resolve_implementation,
)

PAIRWISE = ("gaussian", "learned")
KERNELS = ("spatial", "bilateral")


def _positive(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def _iterations(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"num_iterations must be a non-negative integer, got {value!r}")
    return int(value)


def _potts_initializer(shape, dtype=None):
    """1 - I, stacked over a leading step axis for loose layers ((S, C, C))."""
    eye = keras.ops.eye(shape[-1], dtype=dtype)
    return keras.ops.broadcast_to(keras.ops.ones(shape[-2:], dtype=dtype) - eye, shape)


def _identity_initializer(gain: float):
    """gain * I, stacked over a leading step axis for loose layers ((S, C, C))."""

    def initialize(shape, dtype=None):
        return keras.ops.broadcast_to(gain * keras.ops.eye(shape[-1], dtype=dtype), shape)

    return initialize


@keras.saving.register_keras_serializable(package="keras_dense")
class CrfRnn(keras.layers.Layer):
    """Dense-CRF mean-field inference as a trainable layer (CRF-as-RNN).

    Inputs: `[logits (B, H, W, C), image (B, H, W, K)]`, the image raw on the 0-255 scale
    (RGB, K = 3; any K works). Output: refined logits `(B, H, W, C)`.

    Args:
        num_classes: C, the number of classes.
        theta_alpha: Bilateral kernel spatial standard deviation, pixels.
        theta_beta: Bilateral kernel colour standard deviation, intensity levels.
        theta_gamma: Spatial kernel standard deviation, pixels.
        spatial_weight: Initial spatial kernel weight (the matrix starts at weight * I).
        bilateral_weight: Initial bilateral kernel weight.
        num_iterations: Mean-field iterations (5 to train, as in the paper; see the module
            docstring to change it for inference). With `loose=True`, the number of steps.
        implementation: `"auto"`, `"custom_op"` or `"tf"`.
        pairwise: `"gaussian"` (the fixed Gaussian filters) or `"learned"` (lattice
            convolutions with trainable taps, Gaussian-initialised).
        loose: One set of kernel weights, compatibility and taps per step.
        filter_form: Learned filters: `"general"` (one tap per lattice neighbour, the
            paper's) or `"separable"` (taps along each lattice direction).
        filter_radius: Learned filters: neighbourhood radius on the lattice, 1 or 2.
        **kwargs: Standard layer keyword arguments.
    """

    def __init__(
        self,
        num_classes: int,
        theta_alpha: float = 160.0,
        theta_beta: float = 3.0,
        theta_gamma: float = 3.0,
        spatial_weight: float = 3.0,
        bilateral_weight: float = 5.0,
        num_iterations: int = 5,
        implementation: str = "auto",
        pairwise: str = "gaussian",
        loose: bool = False,
        filter_form: str = "general",
        filter_radius: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, (int, np.integer))
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.theta_alpha = _positive("theta_alpha", theta_alpha)
        self.theta_beta = _positive("theta_beta", theta_beta)
        self.theta_gamma = _positive("theta_gamma", theta_gamma)
        self.spatial_weight = float(spatial_weight)
        self.bilateral_weight = float(bilateral_weight)
        self.num_iterations = _iterations(num_iterations)
        self.implementation = check_implementation(implementation)
        if pairwise not in PAIRWISE:
            raise ValueError(f"pairwise must be one of {PAIRWISE}, got {pairwise!r}")
        if not isinstance(loose, bool):
            raise ValueError(f"loose must be True or False, got {loose!r}")
        if loose and self.num_iterations < 1:
            raise ValueError("a loose CrfRnn needs num_iterations >= 1 (one set per step)")
        self.pairwise = pairwise
        self.loose = loose
        self.filter_form = lattice_stencil.check_form(filter_form)
        self.filter_radius = lattice_stencil.check_radius(filter_radius)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError("CrfRnn expects two inputs: [logits (B,H,W,C), image (B,H,W,3)]")
        logits_shape, image_shape = (tuple(s) for s in input_shape)
        if len(logits_shape) != 4 or len(image_shape) != 4:
            raise ValueError(
                f"CrfRnn inputs must be 4-D (B, H, W, channels), got {logits_shape} and "
                f"{image_shape}"
            )
        if logits_shape[-1] is not None and logits_shape[-1] != self.num_classes:
            raise ValueError(
                f"logits have {logits_shape[-1]} channels but num_classes={self.num_classes}"
            )
        if image_shape[-1] is None:
            raise ValueError("the image's number of channels must be known")
        for axis in (1, 2):
            a, b = logits_shape[axis], image_shape[axis]
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"logits {logits_shape} and image {image_shape} must have the same height "
                    "and width"
                )
        c = self.num_classes
        steps = (self.num_iterations,) if self.loose else ()
        self.spatial_kernel_weights = self.add_weight(
            name="spatial_kernel_weights",
            shape=steps + (c, c),
            initializer=_identity_initializer(self.spatial_weight),
        )
        self.bilateral_kernel_weights = self.add_weight(
            name="bilateral_kernel_weights",
            shape=steps + (c, c),
            initializer=_identity_initializer(self.bilateral_weight),
        )
        self.compatibility = self.add_weight(
            name="compatibility", shape=steps + (c, c), initializer=_potts_initializer
        )
        self.taps = []
        if self.pairwise == "learned":
            dimensions = {"spatial": 2, "bilateral": 2 + int(image_shape[-1])}
            for kernel in KERNELS:
                taps = self._gaussian_taps(dimensions[kernel])
                self.taps.append(
                    self.add_weight(
                        name=f"{kernel}_taps",
                        shape=steps + taps.shape,
                        initializer=keras.initializers.Constant(
                            np.broadcast_to(taps, steps + taps.shape)
                        ),
                        autocast=False,  # float32 taps: the Gaussian start is exact
                    )
                )

    def _gaussian_taps(self, d: int) -> np.ndarray:
        """The Gaussian's taps for a d-dimensional kernel in this layer's filter form."""
        if self.filter_form == "separable":
            return lattice_stencil.gaussian_separable_taps(d, self.filter_radius)
        return lattice_stencil.gaussian_stencil(d, self.filter_radius)[0]

    def _step(self, weight, step: int):
        """A weight's value for one mean-field step (the same for every step unless loose)."""
        return weight[step] if self.loose else weight

    def _pairwise(self, filtered: list[tf.Tensor], step: int = 0) -> tf.Tensor:
        # Steps 3 and 4 in one product per kernel: mu @ W_m applied to each pixel's vector.
        # Mean field runs in float32; under a mixed policy Keras hands the weights over in the
        # compute dtype (e.g. bfloat16), so they are cast back.
        compatibility = tf.cast(self._step(self.compatibility, step), tf.float32)
        terms = []
        for values, weights in zip(
            filtered, (self.spatial_kernel_weights, self.bilateral_kernel_weights)
        ):
            weights = tf.cast(self._step(weights, step), tf.float32)
            mixing = tf.matmul(compatibility, weights)
            terms.append(tf.einsum("bnc,dc->bnd", values, mixing))
        return tf.add_n(terms)

    def _filters(self, image: tf.Tensor, batch_points: tf.Tensor, implementation: str):
        """Per-kernel `(q, step) -> normalised filtered q` for `iterate_mean_field`."""
        features = kernel_features(image, self.theta_alpha, self.theta_beta, self.theta_gamma)
        ones = tf.ones(tf.concat([batch_points, [1]], 0), tf.float32)
        filters = []
        for index, kernel_features_ in enumerate(features):
            lattice = prepare_filter(build_lattice(kernel_features_, implementation), "tf")
            inverse = 1.0 / (filter_lattice(ones, lattice, implementation="tf") + 1e-20)
            if self.pairwise == "gaussian":

                def gaussian(q, step, lattice=lattice, inverse=inverse):
                    return filter_lattice(q, lattice, implementation="tf") * inverse

                filters.append(gaussian)
                continue
            neighbors = lattice_neighbors(
                kernel_features_, lattice, self.filter_radius, self.filter_form
            )

            def learned(q, step, neighbors=neighbors, inverse=inverse, index=index):
                taps = tf.cast(self._step(self.taps[index], step), tf.float32)
                return lattice_convolve(q, neighbors, taps, implementation) * inverse

            filters.append(learned)
        return filters

    def call(self, inputs, num_iterations: int | None = None):
        logits, image = inputs
        iterations = self.num_iterations if num_iterations is None else num_iterations
        iterations = _iterations(iterations)
        if self.loose and iterations != self.num_iterations:
            raise ValueError(
                f"a loose CrfRnn runs its {self.num_iterations} steps (one set of weights "
                f"each), not {iterations}"
            )
        implementation = resolve_implementation(self.implementation)
        input_dtype = logits.dtype
        logits = tf.cast(logits, tf.float32)
        shape = tf.shape(logits)
        unary = tf.reshape(logits, tf.stack([shape[0], shape[1] * shape[2], shape[3]]))
        if self.loose or self.pairwise == "learned":
            batch_points = tf.stack([shape[0], shape[1] * shape[2]])
            filters = self._filters(tf.cast(image, tf.float32), batch_points, implementation)
            refined = iterate_mean_field(unary, filters, self._pairwise, iterations)
            return tf.cast(tf.reshape(refined, shape), input_dtype)
        lattices = build_kernels(
            tf.cast(image, tf.float32),
            self.theta_alpha,
            self.theta_beta,
            self.theta_gamma,
            implementation,
        )
        refined = mean_field(unary, lattices, self._pairwise, iterations, implementation)
        return tf.cast(tf.reshape(refined, shape), input_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "theta_alpha": self.theta_alpha,
                "theta_beta": self.theta_beta,
                "theta_gamma": self.theta_gamma,
                "spatial_weight": self.spatial_weight,
                "bilateral_weight": self.bilateral_weight,
                "num_iterations": self.num_iterations,
                "implementation": self.implementation,
                "pairwise": self.pairwise,
                "loose": self.loose,
                "filter_form": self.filter_form,
                "filter_radius": self.filter_radius,
            }
        )
        return config


def is_crf_layer(layer) -> bool:
    """Whether `layer` is a CRF-as-RNN layer (a `CrfRnn`, subclasses included).

    Use this rather than matching "crf" in a class or layer name.
    """
    return isinstance(layer, CrfRnn)


def crf_layers(model: keras.Model) -> list[CrfRnn]:
    """Every `CrfRnn` layer of `model`, nested models included (`iter_layers`)."""
    return [layer for layer in iter_layers(model) if is_crf_layer(layer)]


def use_portable_crf(model: keras.Model) -> keras.Model:
    """Switches every CrfRnn and PermutohedralConvolution layer of `model` to the pure-TF
    implementation, in place.

    Do this before exporting a SavedModel for TF Serving (which cannot load custom ops), or to
    run on a GPU. Results are unchanged (the implementations agree to float rounding).

    Args:
        model: A Keras model, possibly with nested models.

    Returns:
        The same model.
    """
    for layer in iter_layers(model):
        if is_crf_layer(layer) or isinstance(layer, PermutohedralConvolution):
            layer.implementation = "tf"
    reset_compiled_functions(model)
    return model


def set_crf_iterations(model: keras.Model, num_iterations: int) -> keras.Model:
    """Sets the mean-field iterations of every CrfRnn layer of `model`, in place.

    The paper trains with 5 iterations and tests with 10.

    Args:
        model: A Keras model, possibly with nested models.
        num_iterations: Non-negative number of iterations.

    Returns:
        The same model.
    """
    iterations = _iterations(num_iterations)
    for layer in crf_layers(model):
        if layer.loose and iterations != layer.num_iterations:
            raise ValueError(
                f"CrfRnn layer {layer.name!r} is loose: it has weights for exactly "
                f"{layer.num_iterations} steps"
            )
        layer.num_iterations = iterations
    reset_compiled_functions(model)
    return model
