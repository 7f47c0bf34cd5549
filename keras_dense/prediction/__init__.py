"""Inference on image files: colour masks, overlays and drawn detections."""

from keras_dense.prediction.palette import PALETTE, colorize, draw_boxes, overlay, voc_palette

__all__ = ["PALETTE", "colorize", "draw_boxes", "overlay", "voc_palette"]
