"""Dense CRFs: mean-field inference with Gaussian edge potentials, and DeepLab's CRF step."""

from keras_dense.crf.dense_crf import dense_crf

__all__ = ["dense_crf"]
