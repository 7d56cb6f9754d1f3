"""Specification of refdiff.models.gaussian_mixture beyond what the sampler tests use: the matrix-product path
of a shared std equals the general closed form, the outputs obey Tweedie's identity, ``from_data`` is the
denoiser of the blurred empirical distribution and takes image shapes, and bad mixtures raise."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff import schedules as S
from refdiff.backend import Generator, gather, to_numpy
from refdiff.models.gaussian_mixture import GaussianMixtureDenoiser
from support import assert_close, assert_same_array_kind, no_float64_intermediates

LINEAR = S.linear(1000)
steps = st.integers(0, 999)
seeds = st.integers(0, 2**16)


def _isotropic_mixture(seed: int, K: int = 5, D: int = 3, prediction: str = "eps"):
    """K random means in D dims, one shared std, and the same mixture forced onto the general (N, K, D) path."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.1, 1.0, K)
    args = (LINEAR, w / w.sum(), rng.standard_normal((K, D)), np.full((K, D), rng.uniform(0.1, 1.0)), prediction)
    fast, general = GaussianMixtureDenoiser(*args), GaussianMixtureDenoiser(*args)
    general.isotropic = False
    return fast, general


@given(t=steps, seed=seeds, prediction=st.sampled_from(["eps", "x0", "v"]), label=st.integers(0, 5))
def test_shared_std_matrix_path_equals_the_general_closed_form(backend, t, seed, prediction, label):
    """With one std for every component and dimension, the matrix-product path (logits a x.mu / v - a^2 |mu|^2 / 2v,
    x0 = b^2 / v sum_k r_k mu_k + a s^2 / v x) gives the general per-component formula's outputs, scores and
    classifier gradients, for every label (5 = the null label)."""
    fast, general = _isotropic_mixture(seed, prediction=prediction)
    xt = Generator(seed).normal((7, 3), like=backend.asarray(np.zeros(1)))
    t_batch = backend.asarray(np.full(7, t))
    y = backend.asarray(np.full(7, label))
    # the outputs divide by b (eps) and sum K terms: cancellation scales with 1 / b and the data's size
    scale = 100 / float(LINEAR.sqrt_one_minus_alpha_bar[t])
    assert_close(fast(xt, t_batch, y), to_numpy(general(xt, t_batch, y)), scale=scale)
    if label < 5:
        assert_close(fast.classifier_grad(xt, t_batch, y), to_numpy(general.classifier_grad(xt, t_batch, y)),
                     scale=scale)


@given(t=steps, seed=seeds, isotropic=st.booleans())
def test_optimal_eps_is_minus_b_times_the_score(backend, t, seed, isotropic):
    """Tweedie: eps*(x_t) = -sqrt(1 - alpha_bar_t) grad_x log p(x_t), for both computation paths."""
    model = _isotropic_mixture(seed)[0 if isotropic else 1]
    xt = Generator(seed).normal((6, 3), like=backend.asarray(np.zeros(1)))
    t_batch = backend.asarray(np.full(6, t))
    b = float(LINEAR.sqrt_one_minus_alpha_bar[t])
    score = model.score(xt, gather(LINEAR.alpha_bar, t_batch, xt))
    assert_close(model(xt, t_batch), to_numpy(-b * score), scale=100 / b)


def test_from_data_is_the_blurred_empirical_distribution_and_takes_images(backend):
    """from_data(x0, std) has one equal-weight component N(x_i, std^2 I) per data point; it takes and returns
    (N, C, H, W) arrays of the input's kind, samples (n, C, H, W) on the host, and its log density is the kernel
    density estimate log mean_i N(x; x_i, std^2 I)."""
    x0 = np.random.default_rng(0).uniform(-1, 1, (20, 1, 4, 4))
    model = GaussianMixtureDenoiser.from_data(x0, 0.1, LINEAR)
    assert (model.K, model.D, model.event_shape, model.isotropic) == (20, 16, (1, 4, 4), True)
    np.testing.assert_array_equal(model.weights, np.full(20, 1 / 20))
    xt = Generator(1).normal((3, 1, 4, 4), like=backend.asarray(np.zeros(1), dtype=backend.dtype("float32")))
    out = model(xt, backend.asarray(np.array([0, 500, 999])))
    assert out.shape == (3, 1, 4, 4)
    assert_same_array_kind(out, xt)
    assert model.sample(5, seed=2).shape == (5, 1, 4, 4)
    x = x0[:2] + 0.05
    d2 = ((x.reshape(2, 1, 16) - x0.reshape(1, 20, 16)) ** 2).sum(axis=2)
    expected = np.log(np.mean(np.exp(-d2 / (2 * 0.01)), axis=1)) - 8 * math.log(2 * math.pi * 0.01)
    np.testing.assert_allclose(model.log_prob(x), expected, rtol=1e-12)


@given(seed=seeds, index=st.integers(0, 19))
def test_from_data_denoiser_at_low_noise_returns_the_nearest_data_point(seed, index):
    """At t = 0 (b = 0.01) with std = 0.01 and distinct data points, x_t = a x_i + b eps is denoised to x_i:
    the posterior puts almost all weight on component i and its mean x_i + a s^2 / v (x_t - a x_i) lies within
    a few b of x_i."""
    x0 = np.random.default_rng(seed).uniform(-1, 1, (20, 2, 3))
    model = GaussianMixtureDenoiser.from_data(x0, 0.01, LINEAR, prediction="x0")
    a, b = float(LINEAR.sqrt_alpha_bar[0]), float(LINEAR.sqrt_one_minus_alpha_bar[0])
    xt = a * x0[index:index + 1] + b * np.random.default_rng(seed + 1).standard_normal((1, 2, 3))
    gaps = np.sqrt(((x0 - x0[index]) ** 2).sum(axis=(1, 2)))
    assume(np.sort(gaps)[1] > 0.3)  # no other data point within 30 b, where the posterior could split
    np.testing.assert_allclose(model(xt, np.zeros(1, dtype=np.int64))[0], x0[index], atol=6 * b)


def test_float32_shared_std_path_makes_no_float64_intermediates():
    """The matrix-product path on float32 strict arrays stays float32 (docs/design.md rule 6)."""
    pytest.importorskip("array_api_strict")
    from refdiff.backend import get_backend

    backend = get_backend("array_api_strict")
    model = GaussianMixtureDenoiser.from_data(np.random.default_rng(0).uniform(-1, 1, (10, 1, 2, 2)), 0.1, LINEAR)
    xt = Generator(0).normal((4, 1, 2, 2), like=backend.asarray(np.zeros(1), dtype=backend.dtype("float32")))
    with no_float64_intermediates():
        out = model(xt, backend.asarray(np.array([0, 10, 500, 999])))
        model.continuous_t(xt, backend.asarray(np.array([0.5, 10.2, 500.0, 998.9]), dtype=backend.dtype("float32")))
    assert_same_array_kind(out, xt)


def test_bad_mixtures_and_inputs_raise():
    """Mismatched shapes, weights not summing to 1, non-positive stds, an unknown prediction, a bad std or data
    for from_data and an input of the wrong size raise ValueError naming the argument."""
    ok = dict(weights=[0.5, 0.5], means=[[0.0, 0.0], [1.0, 1.0]], stds=[[1.0, 1.0], [1.0, 1.0]])
    cases = [
        (dict(ok, weights=[1.0]), "weights must have shape"),
        (dict(ok, weights=[0.7, 0.7]), "weights must be >= 0 and sum to 1"),
        (dict(ok, stds=[[1.0, 0.0], [1.0, 1.0]]), "stds finite and > 0"),
        (dict(ok, means=[0.0, 1.0]), "means must be a \\(K, D\\) array"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            GaussianMixtureDenoiser(LINEAR, **kwargs)
    with pytest.raises(ValueError, match="prediction must be one of"):
        GaussianMixtureDenoiser(LINEAR, **ok, prediction="score")
    with pytest.raises(ValueError, match="std must be a finite number > 0"):
        GaussianMixtureDenoiser.from_data(np.zeros((3, 2)), 0.0, LINEAR)
    with pytest.raises(ValueError, match="x0 must be a finite"):
        GaussianMixtureDenoiser.from_data(np.array([[np.nan, 0.0]]), 0.1, LINEAR)
    with pytest.raises(ValueError, match="x must have shape"):
        GaussianMixtureDenoiser(LINEAR, **ok)(np.zeros((2, 3)), np.zeros(2, dtype=np.int64))
