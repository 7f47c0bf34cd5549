"""The compiled lattice convolution: `lattice_convolution_ops.cc` behind Python functions.

A lattice convolution is three ops, each differentiable through the others:

- `splat(values, indices, weights, rows)`: (B, N, C) point values onto (B*M, C) lattice rows;
- `slice_lattice(lattice, indices, weights)`: back to the points, the splat's transpose;
- `stencil(lattice, rows, taps, opposite)`: learned taps over each row's neighbours.

Registered gradients:
- splat and slice are each other's transpose, so each one's gradient with respect to its
  values is the other; with respect to the barycentric weights (when the features carry a
  gradient) it is a gathered dot product, computed only when asked for;
- the stencil's transpose is the stencil with the opposite offsets' taps, transposed;
  the taps' gradient is `KerasDenseLatticeStencilTapGradient`.

`keras_dense.ops.lattice_convolution.lattice_convolve(..., implementation="custom_op")`
is the entry point; this module only wraps the ops.
"""

from __future__ import annotations

import tensorflow as tf

from keras_dense.ops import loader

SPLAT_OP = "KerasDenseLatticeSplat"
SLICE_OP = "KerasDenseLatticeSlice"
STENCIL_OP = "KerasDenseLatticeStencil"
TAP_GRADIENT_OP = "KerasDenseLatticeStencilTapGradient"


def splat(values: tf.Tensor, indices: tf.Tensor, weights: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """(B, N, C) values splatted onto (B*rows, C) lattice rows (row b*rows + m)."""
    return loader.load_library().keras_dense_lattice_splat(values, indices, weights, rows)


def slice_lattice(lattice: tf.Tensor, indices: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """(B*M, C) lattice rows interpolated at the (B, N) points: (B, N, C)."""
    return loader.load_library().keras_dense_lattice_slice(lattice, indices, weights)


def stencil(lattice: tf.Tensor, rows: tf.Tensor, taps: tf.Tensor, opposite: tf.Tensor) -> tf.Tensor:
    """(L, C_out): each row's neighbours `rows` (T, L) weighted by `taps` and summed."""
    return loader.load_library().keras_dense_lattice_stencil(lattice, rows, taps, opposite)


def _skipped(op) -> tuple[int, ...]:
    """The inputs whose gradient nobody asked for (eager tapes say so; graphs prune)."""
    return tuple(getattr(op, "skip_input_indices", None) or ())


def _weights_gradient(point_values, lattice, indices, op) -> tf.Tensor | None:
    """d/d weights[b, n, k] of a splat or slice: point_values[b, n] . lattice[b*M + index]."""
    if 2 in _skipped(op):
        return None
    batch = tf.shape(indices)[0]
    rows = tf.shape(lattice)[0] // tf.maximum(batch, 1)
    flat = indices + tf.range(batch)[:, None, None] * rows
    gathered = tf.gather(lattice, flat)  # (B, N, d+1, C)
    return tf.cast(tf.einsum("bnc,bnkc->bnk", point_values, gathered), tf.float32)


@tf.RegisterGradient(SPLAT_OP)
def _splat_gradient(op, grad):
    values, indices, weights, _ = op.inputs
    d_values = slice_lattice(grad, indices, weights)
    return [d_values, None, _weights_gradient(values, grad, indices, op), None]


@tf.RegisterGradient(SLICE_OP)
def _slice_gradient(op, grad):
    lattice, indices, weights = op.inputs
    rows = tf.shape(lattice)[0] // tf.maximum(tf.shape(indices)[0], 1)
    d_lattice = splat(grad, indices, weights, rows)
    return [d_lattice, None, _weights_gradient(grad, lattice, indices, op)]


@tf.RegisterGradient(STENCIL_OP)
def _stencil_gradient(op, grad):
    lattice, rows, taps, opposite = op.inputs
    skipped = _skipped(op)
    d_lattice = d_taps = None
    if 0 not in skipped:
        flipped = tf.gather(taps, opposite)
        if taps.shape.rank == 3:
            flipped = tf.transpose(flipped, [0, 2, 1])
        d_lattice = stencil(grad, rows, flipped, opposite)
    if 2 not in skipped:
        library = loader.load_library()
        d_taps = library.keras_dense_lattice_stencil_tap_gradient(lattice, grad, rows, taps)
    return [d_lattice, None, d_taps, None]


tf.no_gradient(TAP_GRADIENT_OP)
