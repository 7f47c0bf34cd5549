"""Independent NumPy references for the dense-CRF tests: exact (brute-force) Gaussian kernels
and the mean-field updates written from Krähenbühl & Koltun (2011) / Zheng et al. (2015), and a
synthetic segmentation problem with a sharp-edged ground truth."""

from __future__ import annotations

import cv2
import numpy as np


def exact_kernel(features: np.ndarray) -> np.ndarray:
    """(N, N) matrix exp(-|f_i - f_j|^2 / 2) of (N, d) features."""
    squared = (features**2).sum(1)
    distances = squared[:, None] + squared[None, :] - 2.0 * features @ features.T
    return np.exp(-0.5 * np.maximum(distances, 0.0))


def crf_features(image: np.ndarray, theta_alpha, theta_beta, theta_gamma):
    """Spatial and bilateral features of an (H, W, K) image, x = column and y = row."""
    height, width = image.shape[:2]
    rows, columns = np.mgrid[0:height, 0:width]
    positions = np.stack([columns, rows], -1).reshape(-1, 2).astype(np.float64)
    colours = image.reshape(height * width, -1).astype(np.float64)
    spatial = positions / theta_gamma
    bilateral = np.concatenate([positions / theta_alpha, colours / theta_beta], 1)
    return spatial, bilateral


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mean_field(
    unary: np.ndarray,
    image: np.ndarray,
    theta_alpha: float,
    theta_beta: float,
    theta_gamma: float,
    spatial_matrix: np.ndarray,
    bilateral_matrix: np.ndarray,
    compatibility: np.ndarray,
    num_iterations: int,
) -> np.ndarray:
    """Mean field with exact kernels; returns the final logits U - pairwise, (N, C)."""
    kernels = [exact_kernel(f) for f in crf_features(image, theta_alpha, theta_beta, theta_gamma)]
    logits = unary
    for _ in range(num_iterations):
        q = softmax(logits)
        message = 0.0
        for kernel, matrix in zip(kernels, (spatial_matrix, bilateral_matrix)):
            filtered = kernel @ q / kernel.sum(1, keepdims=True)
            message = message + filtered @ matrix.T
        logits = unary - message @ compatibility.T
    return logits


def synthetic_problem(size: int = 48, seed: int = 0, colour_noise: float = 6.0):
    """A 3-class image with sharp edges and unaries from a blurred, noisy copy of the truth.

    Returns:
        (image uint8 (H, W, 3), truth (H, W) int, probabilities (H, W, 3) float32).
    """
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size]
    truth = np.zeros((size, size), np.int64)
    truth[size // 6 : size // 2, size // 8 : size * 5 // 8] = 1
    disc = (rows - size * 0.68) ** 2 + (columns - size * 0.62) ** 2 < (size * 0.22) ** 2
    truth[disc] = 2
    palette = np.array([[40, 160, 60], [200, 60, 50], [60, 80, 210]], np.float64)
    image = palette[truth] + rng.normal(0, colour_noise, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    one_hot = np.eye(3)[truth].astype(np.float32)
    blurred = cv2.GaussianBlur(one_hot, (0, 0), size / 12)
    noisy = np.clip(blurred + rng.normal(0, 0.15, blurred.shape), 0.02, None)
    probabilities = (noisy / noisy.sum(-1, keepdims=True)).astype(np.float32)
    return image, truth, probabilities


def mean_iou(prediction: np.ndarray, truth: np.ndarray, num_classes: int = 3) -> float:
    """Mean intersection-over-union over the classes."""
    ious = []
    for c in range(num_classes):
        union = np.sum((prediction == c) | (truth == c))
        ious.append(np.sum((prediction == c) & (truth == c)) / max(union, 1))
    return float(np.mean(ious))
