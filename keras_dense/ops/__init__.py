"""TensorFlow ops: the permutohedral lattice (custom C++ op and its pure-TF twin); the same
library holds the RoI max-pooling kernels used by `keras_dense.layers.RoIPooling`."""

from keras_dense.ops.lattice import Lattice
from keras_dense.ops.loader import OpBuildError
from keras_dense.ops.permutohedral import (
    build_lattice,
    filter_lattice,
    prepare_filter,
    resolve_implementation,
)
from keras_dense.ops.permutohedral_tf import LatticeOperator

__all__ = [
    "Lattice",
    "LatticeOperator",
    "OpBuildError",
    "build_lattice",
    "filter_lattice",
    "prepare_filter",
    "resolve_implementation",
]
