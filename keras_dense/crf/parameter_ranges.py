"""The valid range of each dense-CRF parameter, shared by the tuner's grid and model cards.

Standard deviations (pixels, colour levels): below 0.1 a kernel reaches no neighbour
(exp(-1 / (2 * 0.1^2)) = 2e-22), and the lattice's features (position or colour over the
deviation) would pass the op's limit of about 2.8e5 on large images; above 1e4 the kernel is
flat over any image and the whole 0-255 colour range. Weights: below 1e-3 a kernel changes
nothing next to the unary term (-log p, at most 18.4 with probabilities clipped at 1e-8); above
1e3 it drowns the unary term and every pixel takes one label.
"""

from __future__ import annotations

# `dense_crf` keyword argument -> (lowest, highest) valid value, both included.
PARAMETER_RANGES = {
    "theta_alpha": (0.1, 1e4),
    "theta_beta": (0.1, 1e4),
    "theta_gamma": (0.1, 1e4),
    "bilateral_weight": (1e-3, 1e3),
    "spatial_weight": (1e-3, 1e3),
}
