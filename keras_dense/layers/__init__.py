"""Custom Keras layers, all registered under the package name "keras_dense"."""

from keras_dense.layers.aspp import ASPP
from keras_dense.layers.chunked_time_distributed import ChunkedTimeDistributed
from keras_dense.layers.context_warp import ContextWarp, context_warp
from keras_dense.layers.crf_rnn import CrfRnn, set_crf_iterations, use_portable_crf
from keras_dense.layers.denormalization import Denormalization
from keras_dense.layers.detection_layer import DetectionLayer
from keras_dense.layers.dilated_convolution import DilatedConv2D
from keras_dense.layers.feature_pyramid import FeaturePyramid
from keras_dense.layers.mask_head import ClassMasks, MaskHead
from keras_dense.layers.multilevel_roi_pooling import MultiLevelRoIPooling, fpn_levels
from keras_dense.layers.permutohedral_convolution import PermutohedralConvolution
from keras_dense.layers.pooling_switches import MaxPoolingWithArgmax2D, MaxUnpooling2D
from keras_dense.layers.proposal_layer import ProposalLayer, propose
from keras_dense.layers.pyramid_proposal_layer import PyramidProposalLayer
from keras_dense.layers.resizing import CropToMatch, ResizeToMatch
from keras_dense.layers.roi_pooling import RoIPooling
from keras_dense.layers.rpn_head import RPNHead, flatten_rpn_outputs
from keras_dense.layers.upsampling import BilinearUpsamplingInitializer, bilinear_upsampling
from keras_dense.layers.wsl_pooling import ClassWisePooling2D, GlobalLSEPooling2D, WeldonPooling2D

__all__ = [
    "ASPP",
    "BilinearUpsamplingInitializer",
    "ChunkedTimeDistributed",
    "ClassMasks",
    "ClassWisePooling2D",
    "ContextWarp",
    "CropToMatch",
    "CrfRnn",
    "Denormalization",
    "DetectionLayer",
    "DilatedConv2D",
    "FeaturePyramid",
    "GlobalLSEPooling2D",
    "MaskHead",
    "MaxPoolingWithArgmax2D",
    "MaxUnpooling2D",
    "MultiLevelRoIPooling",
    "PermutohedralConvolution",
    "ProposalLayer",
    "PyramidProposalLayer",
    "RPNHead",
    "ResizeToMatch",
    "RoIPooling",
    "WeldonPooling2D",
    "bilinear_upsampling",
    "context_warp",
    "flatten_rpn_outputs",
    "fpn_levels",
    "propose",
    "set_crf_iterations",
    "use_portable_crf",
]
