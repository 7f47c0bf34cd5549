"""Converts a data set into keras_dense TFRecords: same as `keras-dense convert instances ...`."""

import sys

from keras_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "instances", *sys.argv[1:]]))
