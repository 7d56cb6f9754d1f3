"""Distances between two samples of points, and the feature statistics the image metrics use.

- Sliced Wasserstein-2 and the kernel MMD: what the 2-D examples report.
- The Frechet distance between Gaussians fitted to features (Heusel et al. 2017's FID recipe, with
  refdiff's own feature network): ``frechet_distance``, ``gaussian_statistics``, ``features``,
  ``frechet_distance_of_samples``; and ``class_fraction``, the fraction of samples a classifier assigns
  to their label. refdiff.digits_eval applies them to 8x8 digit samples with its digit classifier.
- ADM's other two numbers (Dhariwal & Nichol 2021, Sec. 2.3 and Table 4): improved precision and recall on
  features (Kynkaanniemi et al. 2019, k-NN balls, ``precision_recall``) and the Inception Score of class
  posteriors (Salimans et al. 2016, ``inception_score``).

Distances take host NumPy (N, D) and (M, D) arrays (call ``refdiff.backend.to_numpy`` first) and compute in
float64. Each is reported against held-out data, next to the distance between two independent data samples
(the floor that finite samples set). docs/metrics.md has the formulas.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from refdiff.backend import to_numpy


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


# ---------------------------------------------------------------------------------------------------------
# Frechet distance between Gaussians fitted to features


def gaussian_statistics(f) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of the rows of f (N, D), N >= 2, in float64."""
    f = _points("f", f)
    if f.shape[0] < 2:
        raise ValueError(f"f needs at least 2 rows for a covariance, got {f.shape[0]}")
    return np.mean(f, axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def psd_sqrt(S: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite S: V diag(sqrt(max(lambda, 0))) V^T
    from S = V diag(lambda) V^T (eigenvalues that rounding pushed below 0 are set to 0)."""
    lam, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.maximum(lam, 0.0))) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet (Wasserstein-2) distance, squared, between N(mu1, sigma1) and N(mu2, sigma2).

    Math: d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))     (Dowson & Landau 1982; the FID
          of Heusel et al. 2017 is this d^2 on Inception features)
          S1 S2 is similar to the symmetric M = S1^(1/2) S2 S1^(1/2) (S1 S2 = S1^(1/2) M S1^(-1/2)), so
          tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(M)) with real lambda_i(M) >= 0: two symmetric
          eigendecompositions instead of the general sqrtm of the non-symmetric S1 S2, whose rounding
          gives complex parts and fails for singular covariances (more features than samples).

    mu1, mu2: (D,); sigma1, sigma2: (D, D) symmetric positive semi-definite. Returns d^2 >= 0 as a float
    (clipped at 0 against rounding). Cost O(D^3).
    """
    mu1, sigma1 = _gaussian("mu1", "sigma1", mu1, sigma1)
    mu2, sigma2 = _gaussian("mu2", "sigma2", mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians must have the same dimension D, got {mu1.shape[0]} and {mu2.shape[0]}")
    root1 = psd_sqrt(sigma1)
    M = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh((M + M.T) / 2)  # symmetrised against rounding
    trace_sqrt = float(np.sum(np.sqrt(np.maximum(lam, 0.0))))
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(d2, 0.0)


def _gaussian(mu_name: str, sigma_name: str, mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) as finite float64 host arrays, sigma symmetric, or a clear error."""
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or mu.shape[0] < 1 or not np.all(np.isfinite(mu)):
        raise ValueError(f"{mu_name} must be a finite (D,) mean vector, got shape {mu.shape}")
    D = mu.shape[0]
    if sigma.shape != (D, D) or not np.all(np.isfinite(sigma)):
        raise ValueError(f"{sigma_name} must be a finite ({D}, {D}) covariance to match {mu_name}, "
                         f"got shape {sigma.shape}")
    if not np.allclose(sigma, sigma.T, rtol=1e-8, atol=1e-12 * max(float(np.max(np.abs(sigma))), 1.0)):
        raise ValueError(f"{sigma_name} must be symmetric (a covariance matrix)")
    return mu, sigma


def _batched(fn: Callable, x, batch_size: int) -> np.ndarray:
    """fn applied to x (N, ...) batch by batch, the host results concatenated along axis 0."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must hold at least one sample (N, ...), got shape {x.shape}")
    return np.concatenate([to_numpy(fn(x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def features(feature_fn: Callable, x, batch_size: int = 500) -> np.ndarray:
    """feature_fn applied to x (N, ...) in batches: an (N, D) float64 host array.

    feature_fn: maps a host batch (n, ...) to (n, D) features on any backend (to_numpy brings them back).
    """
    f = _batched(feature_fn, x, batch_size).astype(np.float64)
    if f.ndim != 2 or f.shape[0] != np.shape(x)[0]:
        raise ValueError(f"feature_fn must return (n, D) features for n inputs, got shape {f.shape} "
                         f"for {np.shape(x)[0]} inputs")
    return f


def frechet_distance_of_samples(feature_fn: Callable, a, b, batch_size: int = 500) -> float:
    """The Frechet distance between Gaussians fitted to the features of samples a (N, ...) and b (M, ...).

    Math: d^2(N(mu_a, S_a), N(mu_b, S_b)) with mu, S = gaussian_statistics(feature_fn(.)) (frechet_distance).
    Finite samples bias it upward (about tr(S) (1/N + 1/M) from the means alone), so report it next to the
    distance between two samples of real data (refdiff.digits_eval.digit_sample_report's floor).
    """
    fa, fb = features(feature_fn, a, batch_size), features(feature_fn, b, batch_size)
    return frechet_distance(*gaussian_statistics(fa), *gaussian_statistics(fb))


def class_fraction(classify_fn: Callable, x, labels, batch_size: int = 500) -> float:
    """The fraction of samples x (N, ...) that classify_fn assigns to their label: mean_n [c(x_n) == y_n].

    classify_fn: maps a host batch (n, ...) to (n,) predicted integer labels; labels: (N,) integers.
    """
    labels = np.asarray(labels)
    if labels.shape != (np.shape(x)[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an ({np.shape(x)[0]},) integer array (one per sample), got shape "
                         f"{labels.shape}, dtype {labels.dtype}")
    return float(np.mean(_batched(classify_fn, x, batch_size) == labels))


# ---------------------------------------------------------------------------------------------------------
# Improved precision and recall (k-NN manifolds) and the Inception Score


def knn_radii(f, k: int = 3) -> np.ndarray:
    """The distance of each row of f (N, D) to its k-th nearest other row: (N,) radii, N > k.

    Math: r_i = |f_i - NN_k(f_i)|, NN_k the k-th nearest neighbour among the rows j != i
          (Kynkaanniemi et al. 2019, Sec. 2: the radius of the ball around f_i)
    """
    f = _points("f", f)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < f.shape[0]:
        raise ValueError(f"k must be an integer in [1, N - 1] = [1, {f.shape[0] - 1}] (f has N = {f.shape[0]} "
                         f"rows), got {k!r}")
    d2 = np.sort(_sq_distances(f, f), axis=1)  # (N, N), column 0 is the row itself (distance 0)
    return np.sqrt(d2[:, k])


def manifold_coverage(reference, queries, k: int = 3) -> float:
    """The fraction of queries inside the k-NN manifold of ``reference``.

    Math: f(q, Phi) = 1 if |q - phi| <= r_k(phi) for some phi in Phi, else 0; coverage = mean_q f(q, Phi)
          (Kynkaanniemi et al. 2019, eq. 1), r_k = knn_radii(Phi, k)

    reference: (N, D), N > k; queries: (M, D). Cost O(N M D) time, O(N M) memory.
    """
    reference, queries = _pair(reference, queries)
    radii = knn_radii(reference, k)                                     # (N,)
    d2 = _sq_distances(queries, reference)                              # (M, N)
    return float(np.mean(np.any(d2 <= radii[None, :] ** 2, axis=1)))


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of the samples ``fake`` against the data ``real``, on features.

    Math: precision = mean_{g in fake} f(g, real): the fraction of samples that fall on the data manifold
          recall    = mean_{r in real} f(r, fake): the fraction of the data that the samples' manifold covers
          with f(., Phi) the k-NN manifold test of ``manifold_coverage``   (Kynkaanniemi et al. 2019, eqs. 1-3;
          ADM reports them with k = 3, Dhariwal & Nichol 2021, Sec. 2.3)

    Identities: a sample against itself has precision = recall = 1 (every point lies in its own ball);
    samples that miss modes of the data lower recall; samples off the data manifold lower precision.
    real: (N, D), fake: (M, D) host features, N, M > k. Returns (precision, recall) in [0, 1].
    """
    real, fake = _pair(real, fake)
    return manifold_coverage(real, fake, k), manifold_coverage(fake, real, k)


def inception_score(probs) -> float:
    """The Inception Score of class posteriors p(y | x) of N samples (with refdiff's own classifier).

    Math: IS = exp( mean_n KL(p(y | x_n) || p(y)) ),  p(y) = mean_n p(y | x_n)   (Salimans et al. 2016)
          KL(p || q) = sum_y p_y (log p_y - log q_y), with 0 log 0 = 0

    1 <= IS <= K: IS = 1 when every sample has the same posterior (one class, or no confident class at all),
    and IS = K when the K classes are used equally, each with a posterior of 1 on its class.
    probs: (N, K) host array, rows of nonnegative numbers that sum to 1. Returns IS as a float.
    """
    p = _points("probs", probs)
    if np.any(p < 0) or not np.allclose(np.sum(p, axis=1), 1.0, rtol=0, atol=1e-6):
        raise ValueError("probs must hold probability rows (nonnegative, each summing to 1 within 1e-6)")
    p_y = np.mean(p, axis=0)                                           # (K,) the marginal
    safe = np.where(p > 0, p, 1.0)                                     # log 1 = 0 where p = 0: 0 log 0 = 0
    kl = np.sum(p * (np.log(safe) - np.log(np.where(p > 0, p_y, 1.0))), axis=1)  # (N,); p_y > 0 where p > 0
    return float(np.exp(np.mean(kl)))
