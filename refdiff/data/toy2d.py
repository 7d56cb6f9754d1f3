"""Two-dimensional toy distributions for diffusion on points, each scaled to roughly unit size.

Every set is drawn from np.random.default_rng(seed), in float64, then cast; u ~ U(0, 1), theta
~ U(0, 2 pi) and eps ~ N(0, I_2) are independent draws, and sigma is the `noise` argument (None
takes the set's default in ``DEFAULT_NOISE``). Per-coordinate spreads are for sigma = 0.

    swiss_roll    t = 3 pi / 2 * (1 + 2u),  x = (t cos t, t sin t) / 7 + sigma eps
                  a spiral of 1.5 turns with radius |x| = t / 7 in [0.67, 2.02]; std ~ (0.95, 0.99),
                  mean ~ (0.28, 0.03).
                  Unlabelled (y is None).
    two_moons     upper moon (y = 0): x = (cos a - 1/2, sin a - 1/4) + sigma eps,  a ~ U(0, pi)
                  lower moon (y = 1): x = (1/2 - cos a, 1/4 - sin a) + sigma eps
                  two unit half circles centred at (-1/2, -1/4) and (1/2, 1/4), the point reflection of
                  each other through the origin; x in [-1.5, 1.5] x [-0.75, 0.75], std ~ (0.86, 0.50).
    8gaussians    y = k in 0..7,  x = sqrt(2) (cos(k pi / 4), sin(k pi / 4)) + sigma eps
                  eight clusters on the circle of radius sqrt(2): exactly unit rms per coordinate.
    checkerboard  the 8 black cells of a 4 x 4 board on [-2, 2]^2 (cells with floor(x1) + floor(x2)
                  even); y = cell index in [0, 8) (CHECKER_CELLS, row by row from the bottom),
                  uniform inside the cell, + sigma eps; std 2 / sqrt(3) ~ 1.15 per coordinate.
    rings         y = k in 0..3,  x = RING_RADII[k] (cos theta, sin theta) + sigma eps,
                  RING_RADII = (0.5, 1, 1.5, 2); rms sqrt(15/16) ~ 0.97 per coordinate.

Labelled sets draw their labels as a shuffled arange(n) % K, so class counts differ by at most one.
"""

import math
from numbers import Integral, Real

import numpy as np

from refdiff.data.digits import _check_dtype

TOY2D = ("swiss_roll", "two_moons", "8gaussians", "checkerboard", "rings")
DEFAULT_NOISE = {"swiss_roll": 0.05, "two_moons": 0.05, "8gaussians": 0.1, "checkerboard": 0.0, "rings": 0.05}
SWISS_ROLL_SCALE = 7.0  # divides (t cos t, t sin t), whose rms radius is ~ 9.8
GAUSSIAN_CENTRES = math.sqrt(2) * np.stack(
    [np.cos(np.arange(8) * math.pi / 4), np.sin(np.arange(8) * math.pi / 4)], axis=1
)  # (8, 2)
RING_RADII = (0.5, 1.0, 1.5, 2.0)
# Lower-left corners of the 8 black cells of the board, row-major: floor(x1) + floor(x2) even.
CHECKER_CELLS = np.array([(i, j) for j in range(-2, 2) for i in range(-2, 2) if (i + j) % 2 == 0], dtype=float)


def _balanced_labels(rng, n, k):
    """(n,) int64 labels in [0, k): arange(n) % k shuffled, so every count is n // k or n // k + 1."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _swiss_roll(rng, n):
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))  # (n,) angle = radius before scaling
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / SWISS_ROLL_SCALE, None


def _two_moons(rng, n):
    y = _balanced_labels(rng, n, 2)
    a = rng.uniform(0, math.pi, size=n)
    upper = np.stack([np.cos(a) - 0.5, np.sin(a) - 0.25], axis=1)  # (n, 2)
    sign = np.where(y == 0, 1.0, -1.0)[:, None]  # the lower moon is the upper one reflected through 0
    return sign * upper, y


def _eight_gaussians(rng, n):
    y = _balanced_labels(rng, n, 8)
    return GAUSSIAN_CENTRES[y], y


def _checkerboard(rng, n):
    y = _balanced_labels(rng, n, len(CHECKER_CELLS))
    return CHECKER_CELLS[y] + rng.uniform(size=(n, 2)), y


def _rings(rng, n):
    y = _balanced_labels(rng, n, len(RING_RADII))
    theta = rng.uniform(0, 2 * math.pi, size=n)
    r = np.asarray(RING_RADII)[y][:, None]  # (n, 1)
    return r * np.stack([np.cos(theta), np.sin(theta)], axis=1), y


_MAKERS = {
    "swiss_roll": _swiss_roll,
    "two_moons": _two_moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
}


def load_toy2d(name, n, seed=0, noise=None, dtype=np.float32):
    """Draw n points of the 2-D toy distribution `name` (formulas and scales in the module docstring).

    Math: x = clean(name, u, theta) + sigma * eps, eps ~ N(0, I_2), sigma = noise.

    name: one of TOY2D; n: int >= 1; seed: int >= 0; noise: std sigma >= 0 of the added Gaussian,
    None for DEFAULT_NOISE[name]; dtype: np.float32 or np.float64 (drawn in float64, then cast).
    Returns x: (n, 2) NumPy array of `dtype`; y: (n,) int64 component labels, or None (swiss_roll).
    """
    if name not in _MAKERS:
        raise ValueError(f"name must be one of {TOY2D}, got {name!r}")
    _check_dtype(dtype)
    for arg, value in (("n", n), ("seed", seed)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < (1 if arg == "n" else 0):
            raise ValueError(f"{arg} must be an integer >= {1 if arg == 'n' else 0}, got {value!r}")
    sigma = DEFAULT_NOISE[name] if noise is None else noise
    if not isinstance(sigma, Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise must be a finite number >= 0 or None, got {noise!r}")
    rng = np.random.default_rng(seed)
    x, y = _MAKERS[name](rng, n)  # (n, 2) float64, (n,) int64 or None
    if sigma > 0:  # no draw at sigma = 0, so the clean set is the noisy one's mean given the same seed
        x = x + sigma * rng.standard_normal((n, 2))
    return x.astype(np.dtype(dtype)), y
