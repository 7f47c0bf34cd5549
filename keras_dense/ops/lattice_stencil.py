"""Neighbourhoods on the permutohedral lattice, and their Gaussian initialisations.

A learned lattice filter (Jampani, Kiefel & Gehler, CVPR 2016, "Learning Sparse High
Dimensional Filters") replaces the blur of `permutohedral.filter_lattice` by taps over the
lattice neighbours of each lattice point. Lattice points are the integer vectors of the
hyperplane `sum(x) = 0` in d+1 dimensions whose coordinates are all congruent modulo d+1. The
lattice direction j moves a point by `s_j = (d+1) e_j - 1` (all ones subtracted), and the d+1
directions sum to zero, so every point reachable from the origin is `sum_j k_j s_j` with a
vector k of integers that is unique up to adding a constant: k with `min(k) = 0`.

- **General stencil, radius r:** the points with `min(k) = 0` and `max(k) <= r`, that is
  `(r+1)^(d+1) - r^(d+1)` taps (the paper's neighbourhood: 2^(d+1) - 1 at r = 1).
- **Separable taps, radius r:** along each direction j the 2r+1 points `k s_j`, |k| <= r; the
  filter is then d+1 one-dimensional passes, as the Gaussian blur (r = 1, taps [1, 2, 1] / 2).

Points are stored by their *key*, the first d of their d+1 coordinates (the last one is minus
their sum), as `permutohedral_tf` does; offsets here are keys too.
"""

from __future__ import annotations

import itertools

import numpy as np

FORMS = ("general", "separable")


def check_radius(radius) -> int:
    """Returns `radius` as an int, or raises ValueError unless it is 1 or 2."""
    if isinstance(radius, bool) or radius not in (1, 2):
        raise ValueError(f"radius must be 1 or 2, got {radius!r}")
    return int(radius)


def check_form(form: str) -> str:
    """Returns `form`, or raises ValueError unless it is one of `FORMS`."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return form


def direction_steps(d: int) -> np.ndarray:
    """(d+1, d) int64: the key of each lattice direction `s_j = (d+1) e_j - 1`."""
    return (d + 1) * np.eye(d + 1, d, dtype=np.int64) - 1


def stencil_multipliers(d: int, radius: int) -> np.ndarray:
    """(T, d+1) int64: the multipliers k of each general-stencil tap, centre first.

    The taps are every k with `min(k) = 0` and `max(k) <= radius`, in lexicographic order
    after the centre (k = 0): `(radius+1)^(d+1) - radius^(d+1)` of them.

    Args:
        d: Feature dimension.
        radius: 1 or 2.
    """
    radius = check_radius(radius)
    rows = [k for k in itertools.product(range(radius + 1), repeat=d + 1) if min(k) == 0]
    return np.array(rows, np.int64).reshape(-1, d + 1)


def stencil_offsets(d: int, radius: int) -> np.ndarray:
    """(T, d) int32: the key offset of each general-stencil tap (`stencil_multipliers` order)."""
    return (stencil_multipliers(d, radius) @ direction_steps(d)).astype(np.int32)


def opposite_taps(d: int, radius: int) -> np.ndarray:
    """(T,) int: the tap with the opposite offset of each general-stencil tap.

    The neighbourhood is symmetric: -k, shifted to `min = 0`, is `max(k) - k`.
    """
    multipliers = stencil_multipliers(d, radius)
    index = {tuple(k): t for t, k in enumerate(multipliers.tolist())}
    return np.array([index[tuple((k.max() - k).tolist())] for k in multipliers], np.int64)


def separable_offsets(d: int, radius: int) -> np.ndarray:
    """(d+1, 2r+1, d) int32: the key offset `k s_j` of tap k = -r..r along each direction j."""
    radius = check_radius(radius)
    k = np.arange(-radius, radius + 1, dtype=np.int64)
    return (k[None, :, None] * direction_steps(d)[:, None, :]).astype(np.int32)


def lattice_alpha(d: int) -> float:
    """The slice factor `1 / (1 + 2^-d)` of the permutohedral Gaussian filter."""
    return 1.0 / (1.0 + 2.0**-d)


def gaussian_separable_taps(d: int, radius: int) -> np.ndarray:
    """(d+1, 2r+1) float32 taps that reproduce `filter_lattice` exactly.

    Each direction gets the blur's [1, 2, 1] / 2 (zero beyond distance 1 at radius 2), and the
    slice factor `lattice_alpha(d)` is folded into direction 0, as the Gaussian operator does.
    """
    radius = check_radius(radius)
    taps = np.zeros((d + 1, 2 * radius + 1), np.float64)
    taps[:, radius - 1 : radius + 2] = (0.5, 1.0, 0.5)
    taps[0] *= lattice_alpha(d)
    return taps.astype(np.float32)


def composed_blur(d: int) -> dict[tuple[int, ...], float]:
    """The d+1 blur passes as one stencil: multiplier k (`min(k) = 0`) -> weight, alpha included.

    The product over j of `(1 + (shift(s_j) + shift(-s_j)) / 2)` reaches every k in
    {0, 1, 2}^(d+1) with `min(k) = 0`, so it is a radius-2 stencil. On a lattice where every
    neighbour exists it equals the separable blur; where the sparse lattice lacks an
    intermediate point, the passes lose that path and the stencil does not.
    """
    weights = {(0,) * (d + 1): 1.0}
    for j in range(d + 1):
        step = np.zeros(d + 1, np.int64)
        step[j] = 1
        updated: dict[tuple[int, ...], float] = {}
        for k, w in weights.items():
            for move, factor in ((0, 1.0), (1, 0.5), (-1, 0.5)):
                moved = np.array(k) + move * step
                moved = tuple((moved - moved.min()).tolist())
                updated[moved] = updated.get(moved, 0.0) + w * factor
        weights = updated
    alpha = lattice_alpha(d)
    return {k: w * alpha for k, w in weights.items()}


def gaussian_stencil(d: int, radius: int) -> tuple[np.ndarray, float]:
    """(T,) float32 general-stencil taps closest to the Gaussian blur, and what they miss.

    The taps are the composed blur's weights on the stencil's offsets (`composed_blur`). At
    radius 2 that is all of it; at radius 1 the weights of the offsets beyond the
    neighbourhood are dropped: the closest stencil in the least-squares sense of the weights.

    Returns:
        The taps, and the dropped share of the blur's total weight (0 at radius 2).
    """
    blur = composed_blur(d)
    multipliers = stencil_multipliers(d, radius)
    taps = np.array([blur.get(tuple(k), 0.0) for k in multipliers.tolist()], np.float64)
    dropped = 1.0 - taps.sum() / sum(blur.values())
    return taps.astype(np.float32), float(dropped)
