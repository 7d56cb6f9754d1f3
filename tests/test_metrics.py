"""Specification of refdiff.metrics' image metrics: the Frechet distance between Gaussians (exact identities and
SciPy's sqrtm as oracles), the feature and class-fraction helpers, improved precision and recall and the
Inception Score on constructed data. The sliced Wasserstein and MMD checks are
in test_plot_metrics.py, the digit classifier's in test_digits_eval.py."""

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff.metrics import (class_fraction, features, frechet_distance, frechet_distance_of_samples,
                             gaussian_statistics, inception_score, knn_radii, precision_recall, psd_sqrt)
from support import host_data

seeds = st.integers(0, 2**16)
dims = st.integers(1, 8)
RTOL = 1e-9  # float64 eigendecompositions of well-conditioned matrices of size <= 8


def random_spd(seed, D, rank=None):
    """A random symmetric positive (semi-)definite D x D matrix A A^T / D with A (D, rank) standard normal."""
    A = host_data(seed, (D, rank or D))
    return A @ A.T / D + (1e-3 * np.eye(D) if rank is None else 0.0)


def random_gaussian(seed, D):
    return host_data(seed, (D,)), random_spd(seed + 1, D)


# ---------------------------------------------------------------------------------------------------------
# Frechet distance


@given(seed=seeds, D=dims)
def test_frechet_distance_of_a_gaussian_to_itself_is_zero(seed, D):
    """d^2(N(mu, S), N(mu, S)) == 0 (to rounding) for full-rank and rank-deficient S (fewer samples than
    dimensions gives such covariances); never negative."""
    mu, S = random_gaussian(seed, D)
    scale = np.trace(S)
    assert 0.0 <= frechet_distance(mu, S, mu, S) < 1e-10 * scale
    low_rank = random_spd(seed, D, rank=max(D // 2, 1))
    assert 0.0 <= frechet_distance(mu, low_rank, mu, low_rank) < 1e-7 * max(np.trace(low_rank), 1.0)


@given(seed=seeds, D=dims)
def test_frechet_distance_of_diagonal_covariances_is_the_closed_form(seed, D):
    """For S1 = diag(a), S2 = diag(b): d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    mu1, mu2 = host_data(seed, (D,)), host_data(seed + 1, (D,))
    a, b = np.exp(host_data(seed + 2, (D,))), np.exp(host_data(seed + 3, (D,)))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert math.isclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rel_tol=RTOL, abs_tol=1e-12)


@given(seed=seeds, D=dims)
def test_frechet_distance_of_commuting_covariances_is_the_closed_form(seed, D):
    """For S1 = V diag(a) V^T and S2 = V diag(b) V^T (same eigenvectors, so S1 S2 = S2 S1):
    d^2 = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2, whatever the rotation V."""
    V, _ = np.linalg.qr(host_data(seed, (D, D)))
    a, b = np.exp(host_data(seed + 2, (D,))), np.exp(host_data(seed + 3, (D,)))
    mu1, mu2 = host_data(seed + 4, (D,)), host_data(seed + 5, (D,))
    S1, S2 = (V * a) @ V.T, (V * b) @ V.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert math.isclose(frechet_distance(mu1, S1, mu2, S2), expected, rel_tol=1e-8, abs_tol=1e-10)


@given(seed=seeds, D=dims)
def test_frechet_distance_is_symmetric(seed, D):
    """d^2(P, Q) == d^2(Q, P): the formula is symmetric although the computation (S1^(1/2) S2 S1^(1/2)) is not."""
    g1, g2 = random_gaussian(seed, D), random_gaussian(seed + 7, D)
    assert math.isclose(frechet_distance(*g1, *g2), frechet_distance(*g2, *g1), rel_tol=RTOL, abs_tol=1e-12)


@given(seed=seeds, D=dims)
def test_frechet_distance_matches_scipy_sqrtm(seed, D):
    """d^2 == |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 Re tr(scipy.linalg.sqrtm(S1 S2)) on random SPD covariances
    (the FID reference computation)."""
    (mu1, S1), (mu2, S2) = random_gaussian(seed, D), random_gaussian(seed + 7, D)
    trace_sqrt = np.real(np.trace(scipy.linalg.sqrtm(S1 @ S2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(S1) + np.trace(S2) - 2 * trace_sqrt
    assert math.isclose(frechet_distance(mu1, S1, mu2, S2), expected, rel_tol=1e-7, abs_tol=1e-9)


@given(seed=seeds, D=dims, c=st.floats(0.1, 10.0))
def test_frechet_distance_scales_quadratically(seed, D, c):
    """d^2(N(c mu1, c^2 S1), N(c mu2, c^2 S2)) == c^2 d^2(N(mu1, S1), N(mu2, S2)): scaling the features by c
    scales the distance (a squared length) by c^2."""
    (mu1, S1), (mu2, S2) = random_gaussian(seed, D), random_gaussian(seed + 7, D)
    scaled = frechet_distance(c * mu1, c * c * S1, c * mu2, c * c * S2)
    assert math.isclose(scaled, c * c * frechet_distance(mu1, S1, mu2, S2), rel_tol=1e-8, abs_tol=1e-10)


@given(seed=seeds, D=dims)
def test_psd_sqrt_squares_back(seed, D):
    """psd_sqrt(S) is symmetric and psd_sqrt(S) @ psd_sqrt(S) == S."""
    S = random_spd(seed, D)
    R = psd_sqrt(S)
    np.testing.assert_allclose(R, R.T, atol=1e-12)
    np.testing.assert_allclose(R @ R, S, rtol=1e-9, atol=1e-12)


@given(n=st.integers(2, 40), D=dims, seed=seeds)
def test_gaussian_statistics_are_the_mean_and_unbiased_covariance(n, D, seed):
    """gaussian_statistics(f) == (mean over rows, sum (f - mean)^T (f - mean) / (n - 1)), D x D even for D = 1."""
    f = host_data(seed, (n, D))
    mu, S = gaussian_statistics(f)
    c = f - f.mean(axis=0)
    np.testing.assert_allclose(mu, f.mean(axis=0), rtol=1e-12)
    assert S.shape == (D, D)
    np.testing.assert_allclose(S, c.T @ c / (n - 1), rtol=1e-10, atol=1e-14)


@given(n=st.integers(3, 50), D=dims, seed=seeds, shift=st.floats(-3.0, 3.0))
def test_frechet_distance_of_samples_of_a_shift_is_the_squared_shift(n, D, seed, shift):
    """With the identity as feature map: FD(a, a) == 0, and FD(a, a + c) == |c|^2 (same covariance, means c
    apart), batch by batch (batch_size 7) as in one piece. Full-rank covariances only (n > D): at a zero
    eigenvalue the square root turns rounding of 1e-16 into 1e-8 per eigenvalue, an error of the data,
    not of the formula."""
    assume(n > D)
    a = host_data(seed, (n, D))
    c = np.full(D, shift)
    assert frechet_distance_of_samples(lambda x: x, a, a, batch_size=7) < 1e-9 * max(np.sum(a**2), 1.0)
    assert math.isclose(frechet_distance_of_samples(lambda x: x, a, a + c, batch_size=7), D * shift**2,
                        rel_tol=1e-7, abs_tol=1e-8)


def test_class_fraction_counts_the_samples_given_their_label():
    """class_fraction(c, x, y) == mean(c(x) == y), batch by batch."""
    x = np.arange(10)
    assert class_fraction(lambda b: b % 3, x, np.arange(10) % 3, batch_size=4) == 1.0
    assert class_fraction(lambda b: b % 3, x, np.zeros(10, np.int64), batch_size=4) == 0.4


# ---------------------------------------------------------------------------------------------------------
# Improved precision and recall, Inception Score


def clusters(seed, n_per_mode, modes, D, spread=0.1):
    """n_per_mode points around each of the given mode indices: centres 10 e_m (m < D), isotropic noise ``spread``."""
    centres = 10.0 * np.eye(D)[list(modes)]                                  # (len(modes), D)
    noise = host_data(seed, (len(modes), n_per_mode, D), scale=spread)      # (modes, n, D)
    return (centres[:, None, :] + noise).reshape(-1, D)                      # (modes * n, D)


@given(n=st.integers(4, 40), D=dims, seed=seeds, k=st.integers(1, 3))
def test_precision_and_recall_of_a_sample_against_itself_are_one(n, D, seed, k):
    """precision_recall(f, f) == (1, 1) for any k < N: every point lies in its own k-NN ball (radius >= 0)."""
    f = host_data(seed, (n, D))
    assert precision_recall(f, f, k=k) == (1.0, 1.0)


@given(n=st.integers(4, 30), D=dims, seed=seeds, k=st.integers(1, 3))
def test_knn_radius_is_the_kth_smallest_distance_to_another_point(n, D, seed, k):
    """knn_radii(f, k)[i] == the k-th smallest of |f_i - f_j| over j != i (a double loop as the oracle)."""
    f = host_data(seed, (n, D))
    expected = [sorted(np.linalg.norm(f[i] - f[j]) for j in range(n) if j != i)[k - 1] for i in range(n)]
    np.testing.assert_allclose(knn_radii(f, k), expected, rtol=1e-9, atol=1e-12)


@given(seed=seeds, kept=st.integers(1, 3))
def test_recall_falls_when_modes_are_dropped_and_precision_stays(seed, kept):
    """Data on 4 clusters 10 apart (k-NN balls below 1), samples that reproduce only ``kept`` of them: every sample
    is on the data manifold (precision 1) and recall is the fraction of the data in the kept modes, kept / 4.
    Fresh draws from the kept modes never reach the dropped ones: recall <= kept / 4."""
    real = clusters(seed, 25, range(4), D=4)
    assert precision_recall(real, real[: 25 * kept], k=3) == (1.0, kept / 4)
    assert precision_recall(real, clusters(seed + 1, 25, range(kept), D=4), k=3)[1] <= kept / 4


@given(seed=seeds, off=st.integers(1, 30))
def test_precision_falls_when_samples_leave_the_data_manifold(seed, off):
    """Samples equal to the data (2 clusters, 80 points) but for ``off`` of them moved far away: precision is the
    fraction left on the manifold, 1 - off / 80; for fresh draws from the data's clusters with ``off`` moved,
    precision <= 1 - off / 80 (a moved sample is in no data point's ball)."""
    real = clusters(seed, 40, range(2), D=3)
    moved = real.copy()
    moved[:off] += 100.0  # far from every data point
    assert precision_recall(real, moved, k=3)[0] == 1 - off / 80
    fresh = clusters(seed + 1, 40, range(2), D=3)
    fresh[:off] += 100.0
    assert precision_recall(real, fresh, k=3)[0] <= 1 - off / 80


@given(n=st.integers(1, 30), K=st.integers(1, 12), seed=seeds)
def test_inception_score_is_one_when_every_posterior_is_the_same(n, K, seed):
    """IS = 1 when all samples share one posterior: a single confident class, or any common distribution
    (KL(p || p) = 0)."""
    one_class = np.zeros((n, K))
    one_class[:, seed % K] = 1.0
    common = np.exp(host_data(seed, (K,)))
    assert inception_score(one_class) == 1.0
    assert math.isclose(inception_score(np.tile(common / common.sum(), (n, 1))), 1.0, rel_tol=1e-12)


@given(K=st.integers(1, 12), per_class=st.integers(1, 10), seed=seeds)
def test_inception_score_is_K_for_K_equally_used_confident_classes(K, per_class, seed):
    """K classes used equally, each sample's posterior one-hot on its class: p(y) uniform, every KL = log K, so
    IS = K exactly (to rounding), in any order of the samples."""
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(K), per_class))
    assert math.isclose(inception_score(np.eye(K)[labels]), K, rel_tol=1e-12)


@given(n=st.integers(2, 30), K=st.integers(2, 12), seed=seeds)
def test_inception_score_lies_between_one_and_K(n, K, seed):
    """1 <= IS <= K for any posteriors (KL(p(y|x) || p(y)) averages to the mutual information, in [0, log K])."""
    logits = host_data(seed, (n, K), scale=3.0)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert 1.0 - 1e-12 <= inception_score(p) <= K * (1 + 1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: knn_radii(np.zeros((3, 2)), k=3), r"k must be an integer in \[1, N - 1\] = \[1, 2\]"),
    (lambda: precision_recall(np.zeros((5, 2)), np.zeros((5, 3))), "the same dimension D, got 2 and 3"),
    (lambda: inception_score(np.array([[0.5, 0.6]])), "probs must hold probability rows"),
    (lambda: inception_score(np.array([[1.5, -0.5]])), "probs must hold probability rows"),

    (lambda: frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)), r"sigma1 must be a finite \(2, 2\)"),
    (lambda: frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)), "the same dimension D, got 2 and 3"),
    (lambda: frechet_distance(np.zeros((2, 1)), np.eye(2), np.zeros(2), np.eye(2)), r"mu1 must be a finite \(D,\)"),
    (lambda: frechet_distance(np.zeros(2), np.eye(2), np.array([0, np.nan]), np.eye(2)), "mu2 must be a finite"),
    (lambda: frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1, 1], [0, 1.0]])),
     "sigma2 must be symmetric"),
    (lambda: gaussian_statistics(np.zeros((1, 3))), "f needs at least 2 rows"),
    (lambda: features(lambda b: b, np.zeros((0, 2))), r"x must hold at least one sample"),
    (lambda: features(lambda b: b, np.zeros((3, 2)), batch_size=0), "batch_size must be an integer >= 1"),
    (lambda: features(lambda b: b[:1], np.zeros((3, 2))), r"feature_fn must return \(n, D\) features"),
    (lambda: class_fraction(lambda b: b, np.zeros(3), np.zeros(2, np.int64)), r"labels must be an \(3,\) integer"),
])
def test_bad_inputs_raise(call, message):
    """Mismatched or non-finite means and covariances, a non-symmetric covariance, too few rows, an empty
    input, a bad batch size, a feature map of the wrong output and labels of the wrong length raise ValueError."""
    with pytest.raises(ValueError, match=message):
        call()
