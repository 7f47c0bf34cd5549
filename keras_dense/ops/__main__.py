"""`python -m keras_dense.ops [--build | --force]`: build the custom op library."""

import sys

from keras_dense.ops.loader import main

sys.exit(main())
