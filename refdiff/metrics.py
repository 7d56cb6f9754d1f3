"""Distances between two samples of points: sliced Wasserstein-2 and the kernel MMD.

Both take host NumPy (N, D) and (M, D) arrays (call ``refdiff.backend.to_numpy`` first) and compute in float64.
They are what the 2-D examples report: a sampler's output against held-out data, next to the distance between
two independent data samples of the same sizes (the floor that finite samples set).
"""

from __future__ import annotations

import math

import numpy as np


def _points(name: str, x) -> np.ndarray:
    """x as a finite float64 (N, D) host array, N >= 1, or a clear error."""
    if not isinstance(x, (np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a host NumPy array (call refdiff.backend.to_numpy first), "
                        f"got {type(x).__module__}.{type(x).__name__}")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be an (N, D) array with N, D >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(a)))} NaN or inf values")
    return a


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _points("x", x), _points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension D, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def projection_directions(D: int, projections: int = 128, seed: int = 0) -> np.ndarray:
    """(projections, D) unit vectors uniform on the sphere S^{D-1}: normalized standard normal draws (PCG64)."""
    for name, value in (("D", D), ("projections", projections)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    theta = np.random.default_rng(seed).standard_normal((projections, D))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """W2 between the empirical distributions of u (P, N) and v (P, M), row by row: (P,).

    Math: W2^2 = int_0^1 (F_u^-1(q) - F_v^-1(q))^2 dq, with F^-1 the empirical quantile functions: step
          functions that jump at q = i / N and j / M. Between consecutive breakpoints of the merged grid
          {i / N} u {j / M} both are constant, so the integral is an exact finite sum; for N = M it is
          mean_i (u_(i) - v_(i))^2 over the sorted values.
    """
    u, v = np.sort(u, axis=1), np.sort(v, axis=1)
    N, M = u.shape[1], v.shape[1]
    if N == M:
        return np.sqrt(np.mean((u - v) ** 2, axis=1))
    q = np.union1d(np.arange(1, N + 1) / N, np.arange(1, M + 1) / M)       # breakpoints, ending at 1
    dq = np.diff(q, prepend=0.0)                                          # interval lengths, sum to 1
    mid = q - 0.5 * dq                                                    # inside each interval
    i = np.minimum((mid * N).astype(np.int64), N - 1)                     # quantile index of u there
    j = np.minimum((mid * M).astype(np.int64), M - 1)
    return np.sqrt(np.sum(dq * (u[:, i] - v[:, j]) ** 2, axis=1))


def sliced_wasserstein(x, y, projections: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between the samples x (N, D) and y (M, D).

    Math: SW2(x, y)^2 = E_theta[ W2(theta . x, theta . y)^2 ],  theta uniform on the unit sphere
          (Rabin et al. 2011; Bonneel et al. 2015), estimated with ``projections`` directions drawn from
          ``seed`` (``projection_directions``): SW2 = sqrt(mean_j W2(theta_j . x, theta_j . y)^2), each 1-D W2
          exact between the empirical distributions (``wasserstein_1d``: sorted projections).

    Exact identities of this estimator: SW2(x, x) = 0; it is symmetric; for a shift y = x + c,
    SW2 = sqrt(mean_j (theta_j . c)^2) (= |c| in 1-D, |c| / sqrt(D) in expectation over theta); it scales
    as SW2(s x, s y) = |s| SW2(x, y). The same seed gives the same directions, so values compare across calls.
    Cost O(projections (N log N + M log M)).
    """
    x, y = _pair(x, y)
    theta = projection_directions(x.shape[1], projections, seed)            # (P, D)
    w = wasserstein_1d(theta @ x.T, theta @ y.T)                           # (P,) from (P, N) and (P, M)
    return float(np.sqrt(np.mean(w**2)))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) squared Euclidean distances |a_i - b_j|^2, clamped at 0 against rounding."""
    d2 = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def median_bandwidth(x, y) -> float:
    """The median heuristic: the median of the pairwise distances |z_i - z_j|, i < j, of the pooled sample z."""
    x, y = _pair(x, y)
    z = np.concatenate([x, y])
    d2 = _sq_distances(z, z)[np.triu_indices(z.shape[0], k=1)]
    h = float(np.sqrt(np.median(d2)))
    if not h > 0:
        raise ValueError("the median heuristic needs distinct points: the median pairwise distance is 0; "
                         "pass bandwidth")
    return h


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
    """The unbiased estimate of MMD^2 between the distributions of x (N, D) and y (M, D), Gaussian kernel.

    Math: k(a, b) = exp(-|a - b|^2 / (2 h^2)),  h = bandwidth, or the median heuristic when None;
          MMD_u^2 = sum_{i != i'} k(x_i, x_i') / (N (N - 1)) + sum_{j != j'} k(y_j, y_j') / (M (M - 1))
                    - 2 sum_{i, j} k(x_i, y_j) / (N M)                           (Gretton et al. 2012, eq. 3)
    Unbiased, so it can be slightly negative when the distributions are equal; MMD^2 >= 0 in expectation, and
    = 0 only for equal distributions (the Gaussian kernel is characteristic). For the same sample on both sides,
    MMD_u^2(x, x) = -2 (1 - mean_{i != i'} k(x_i, x_i')) / N exactly. Needs N, M >= 2; cost O((N + M)^2 D).
    """
    x, y = _pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"x and y need at least 2 points each for the unbiased MMD, got {x.shape[0]} and {y.shape[0]}")
    if bandwidth is None:
        h = median_bandwidth(x, y)
    elif isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not 0 < bandwidth < math.inf:
        raise ValueError(f"bandwidth must be a finite number > 0 or None, got {bandwidth!r}")
    else:
        h = float(bandwidth)
    N, M = x.shape[0], y.shape[0]
    k_xx = np.exp(-_sq_distances(x, x) / (2 * h * h))
    k_yy = np.exp(-_sq_distances(y, y) / (2 * h * h))
    k_xy = np.exp(-_sq_distances(x, y) / (2 * h * h))
    # The within-sample sums leave out i = i' (the unbiased U-statistic): subtract the diagonal.
    xx = (np.sum(k_xx) - np.trace(k_xx)) / (N * (N - 1))
    yy = (np.sum(k_yy) - np.trace(k_yy)) / (M * (M - 1))
    return float(xx + yy - 2.0 * np.mean(k_xy))
