"""A NumPy permutohedral lattice convolution written from the papers, for tests.

Adams, Baek & Davis (2010), "Fast High-Dimensional Filtering Using the Permutohedral
Lattice", section 3: elevate the scaled position onto the hyperplane H_d, find the
remainder-0 point nearest to it, sort the differential to find the enclosing simplex, and
take its vertices and barycentric coordinates. Jampani, Kiefel & Gehler (2016), section 3:
splat to the vertices, convolve each lattice point with taps at the neighbours
`sum_j k_j s_j` (`s_j = (d+1) e_j - 1`, min(k) = 0, max(k) <= r), slice back.

Point by point, with a Python dict as the hash table and float64 arithmetic: slow and plain,
independent of the TensorFlow code it checks.
"""

from __future__ import annotations

import itertools

import numpy as np


def elevate(position: np.ndarray) -> np.ndarray:
    """Scaled position (d,) -> (d+1,) point of the hyperplane sum(x) = 0.

    The scale makes the [1, 2, 1] / 2 blur along the lattice directions a unit Gaussian
    (Adams et al., section 3.1: sigma = sqrt(2/3) (d+1) per axis of the basis E).
    """
    d = position.shape[0]
    scale = np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt(np.arange(1, d + 1) * np.arange(2, d + 2))
    p = position.astype(np.float64) * scale
    # Basis E: column i (1-based) has i ones, then -i, then zeros (up to a normalisation that
    # the scale above includes): x = E p.
    x = np.zeros(d + 1)
    for i in range(1, d + 1):
        x[:i] += p[i - 1]
        x[i] -= i * p[i - 1]
    return x


def enclosing_simplex(x: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The d+1 vertices (full (d+1,) integer coordinates) and barycentric weights around x."""
    d = x.shape[0] - 1
    nearest = np.round(x / (d + 1)) * (d + 1)
    excess = int(round(nearest.sum() / (d + 1)))
    # Order the coordinates by decreasing differential (ties by index: a stable sort).
    order = np.argsort(-(x - nearest), kind="stable")
    rank = np.empty(d + 1, np.int64)
    rank[order] = np.arange(d + 1)
    # Move the nearest point back onto the plane sum = 0 (section 3.1, "rank" adjustment).
    rank = rank + excess
    nearest = nearest - (d + 1) * (rank // (d + 1))
    rank = rank % (d + 1)
    # Barycentric coordinates from the sorted differential.
    delta = (x - nearest) / (d + 1)
    bary = np.zeros(d + 2)
    for i in range(d + 1):
        value = delta[i]
        bary[d - rank[i]] += value
        bary[d + 1 - rank[i]] -= value
    bary[0] += 1.0 + bary[d + 1]
    # Vertex k (the remainder-k point of the simplex): +k on the coordinates of rank <= d-k,
    # k - (d+1) on the others.
    vertices = []
    for k in range(d + 1):
        vertex = np.where(rank <= d - k, nearest + k, nearest + k - (d + 1))
        vertices.append(tuple(int(v) for v in vertex))
    return vertices, bary[: d + 1]


def neighbourhood(d: int, radius: int) -> list[np.ndarray]:
    """Full-coordinate offsets of the radius-r stencil, centre first then lexicographic."""
    steps = (d + 1) * np.eye(d + 1, dtype=np.int64) - 1
    return [
        np.array(k) @ steps
        for k in itertools.product(range(radius + 1), repeat=d + 1)
        if min(k) == 0
    ]


def build(features: np.ndarray):
    """Lattice of one image: keys in first-occurrence order, per-point vertices and weights."""
    table: dict[tuple[int, ...], int] = {}
    vertices, weights = [], []
    for position in features:
        verts, bary = enclosing_simplex(elevate(position))
        vertices.append([table.setdefault(v, len(table)) for v in verts])
        weights.append(bary)
    return table, np.array(vertices), np.array(weights)


def splat(vertices: np.ndarray, weights: np.ndarray, values: np.ndarray, size: int):
    """(size, C) lattice values: each point's values spread over its vertices by weight."""
    lattice = np.zeros((size, values.shape[1]))
    for n in range(len(values)):
        for k in range(vertices.shape[1]):
            lattice[vertices[n, k]] += weights[n, k] * values[n]
    return lattice


def slice_back(vertices: np.ndarray, weights: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """(N, C) values read back from the lattice at each point's vertices, by weight."""
    out = np.zeros((len(vertices), lattice.shape[1]))
    for n in range(len(vertices)):
        for k in range(vertices.shape[1]):
            out[n] += weights[n, k] * lattice[vertices[n, k]]
    return out


def convolve(features: np.ndarray, values: np.ndarray, taps: np.ndarray, radius: int):
    """General lattice convolution of one image's (N, C_in) values with (T, C_in, C_out) taps.

    Returns:
        (N, C_out) output, and the (M, T) neighbour table (-1 where missing).
    """
    d = features.shape[1]
    table, vertices, weights = build(features)
    keys = list(table)
    lattice = splat(vertices, weights, values, len(keys))
    offsets = neighbourhood(d, radius)
    neighbours = np.full((len(keys), len(offsets)), -1)
    out = np.zeros((len(keys), taps.shape[2]))
    for m, key in enumerate(keys):
        for t, offset in enumerate(offsets):
            j = table.get(tuple(int(a) for a in np.array(key) + offset), -1)
            neighbours[m, t] = j
            if j >= 0:
                out[m] += lattice[j] @ taps[t]
    return slice_back(vertices, weights, out), neighbours


def separable(features: np.ndarray, values: np.ndarray, taps: np.ndarray):
    """Separable lattice convolution: along each direction j, 2r+1 taps `taps[j]`."""
    d = features.shape[1]
    radius = (taps.shape[1] - 1) // 2
    table, vertices, weights = build(features)
    keys = list(table)
    lattice = splat(vertices, weights, values, len(keys))
    steps = (d + 1) * np.eye(d + 1, dtype=np.int64) - 1
    for j in range(d + 1):
        passed = np.zeros_like(lattice)
        for m, key in enumerate(keys):
            for i, k in enumerate(range(-radius, radius + 1)):
                n = table.get(tuple(int(a) for a in np.array(key) + k * steps[j]), -1)
                if n >= 0:
                    passed[m] += taps[j, i] * lattice[n]
        lattice = passed
    return slice_back(vertices, weights, lattice)
