"""TensorFlow ops: the permutohedral lattice (custom C++ op and its pure-TF twin), learned
filters on it, and the fused Potts mean field built on it; the same library holds the RoI
max-pooling kernels used by `keras_dense.layers.RoIPooling`."""

from keras_dense.ops.lattice import Lattice
from keras_dense.ops.lattice_convolution import (
    LatticeNeighbors,
    lattice_convolve,
    lattice_neighbors,
)
from keras_dense.ops.loader import OpBuildError
from keras_dense.ops.permutohedral import (
    build_lattice,
    filter_lattice,
    prepare_filter,
    resolve_implementation,
)
from keras_dense.ops.permutohedral_tf import LatticeOperator
from keras_dense.ops.potts_mean_field import potts_mean_field

__all__ = [
    "Lattice",
    "LatticeNeighbors",
    "LatticeOperator",
    "OpBuildError",
    "build_lattice",
    "filter_lattice",
    "lattice_convolve",
    "lattice_neighbors",
    "potts_mean_field",
    "prepare_filter",
    "resolve_implementation",
]
