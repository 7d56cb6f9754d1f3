"""Specification of refdiff.likelihood: Gaussian KL, normal CDFs, the discretized decoder, VLB terms.

Oracles are host float64 NumPy/SciPy: numerical integration (scipy.integrate.quad) for the KL,
scipy.stats.norm for the CDFs and bin probabilities, closed forms for the prior term, finite
differences (tests/gradcheck.py) for the decoder's gradient. The gradients of the KL and of the whole
VLB term are checked through the training loss in test_losses.py.
"""

import contextlib
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradcheck import assert_gradients_match
from refdiff.backend import to_numpy
from refdiff.diffusion import q_posterior
from refdiff.likelihood import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood_backward,
    normal_kl,
    prior_bpd,
    standard_normal_cdf,
    vlb_term_bpd,
)
from refdiff.schedules import by_name
from support import (
    DTYPES,
    TOLERANCE,
    assert_close,
    assert_same_array_kind,
    host_data,
    no_float64_intermediates,
    schedule_strategy,
)

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)
LN2 = math.log(2.0)
# Bin probabilities are floored at this value before their log (improved DDPM's floor); stated here,
# not imported, so the tests pin the documented constant.
MIN_PROB = 1e-12


def on(backend, host, dtype):
    """Host data ``host`` as a ``dtype`` array of ``backend``, and its rounded values back in float64."""
    x = backend.asarray(host, dtype=backend.dtype(dtype))
    return x, to_numpy(x).astype(np.float64)


def grid(levels: int) -> np.ndarray:
    """The ``levels`` data values x_k = -1 + 2k / (levels - 1), float64."""
    return -1.0 + 2.0 * np.arange(levels) / (levels - 1)


# --- normal_kl ---------------------------------------------------------------------------------


@given(shape=shapes, seed=seeds, dtype=dtypes, dm=st.floats(-2.0, 2.0), dlv=st.floats(-2.0, 2.0))
def test_normal_kl_is_nonnegative_and_zero_only_for_equal_gaussians(backend, shape, seed, dtype, dm, dlv):
    """KL(p || q) >= 0; KL(p || p) == 0; KL(p || q) > 0 for q = N(m + dm, exp(lv + dlv)), (dm, dlv) != 0.

    ">= 0" and "== 0" hold to the absolute rounding of dtype (TOLERANCE atol): the terms of the sum
    are O(1) and cancel. The perturbed pair has KL >= 1e-5 for |dm| or |dlv| >= 0.1 and |lv| <= 3,
    well above that rounding.
    """
    assume(max(abs(dm), abs(dlv)) >= 0.1)
    atol = TOLERANCE[dtype][1]
    m1, _ = on(backend, host_data(seed, shape), dtype)
    lv1, _ = on(backend, np.clip(host_data(seed + 1, shape), -3.0, 3.0), dtype)
    m2, _ = on(backend, host_data(seed + 2, shape, scale=2.0), dtype)
    lv2, _ = on(backend, np.clip(host_data(seed + 3, shape, scale=2.0), -3.0, 3.0), dtype)
    assert np.all(to_numpy(normal_kl(m1, lv1, m2, lv2)) >= -atol)
    assert_close(normal_kl(m1, lv1, m1, lv1), np.zeros(shape))
    assert np.all(to_numpy(normal_kl(m1, lv1, m1 + dm, lv1 + dlv)) > atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normal_kl_of_identical_gaussians_is_exactly_zero(backend, dtype):
    """KL(N(m, exp(lv)) || N(m, exp(lv))) == 0 exactly (every term cancels without rounding), so never < 0."""
    lv, _ = on(backend, np.linspace(-5.0, 5.0, 1001), dtype)
    m, _ = on(backend, np.linspace(-2.0, 2.0, 1001), dtype)
    np.testing.assert_array_equal(to_numpy(normal_kl(m, lv, m, lv)), 0.0)


def _kl_by_quadrature(m1: float, lv1: float, m2: float, lv2: float) -> tuple[float, float]:
    """Integral of p(x) log(p(x) / q(x)) over m1 +- 12 sd1 (the rest of p's mass is < 1e-32), with its error."""
    s1, s2 = math.exp(0.5 * lv1), math.exp(0.5 * lv2)

    def integrand(x):
        log_p = scipy.stats.norm.logpdf(x, m1, s1)
        return math.exp(log_p) * (log_p - scipy.stats.norm.logpdf(x, m2, s2))

    value, abserr = scipy.integrate.quad(integrand, m1 - 12 * s1, m1 + 12 * s1, points=[m1],
                                         epsabs=1e-13, epsrel=1e-11, limit=200)
    return value, abserr


@settings(max_examples=10)
@given(m1=st.floats(-2.0, 2.0), lv1=st.floats(-3.0, 3.0), m2=st.floats(-2.0, 2.0), lv2=st.floats(-3.0, 3.0))
def test_normal_kl_equals_the_integral_of_p_log_p_over_q(backend, m1, lv1, m2, lv2):
    """normal_kl(m1, lv1, m2, lv2) == integral p(x) log(p(x) / q(x)) dx, p = N(m1, e^lv1), q = N(m2, e^lv2).

    Host float64 quadrature; the tolerance is quad's own error estimate plus 1e-9 relative.
    """
    value, abserr = _kl_by_quadrature(m1, lv1, m2, lv2)
    args = [on(backend, np.array([v]), "float64")[0] for v in (m1, lv1, m2, lv2)]
    kl = normal_kl(*args)
    assert kl.shape == (1,)
    assert abs(float(to_numpy(kl)[0]) - value) <= 10 * abserr + 1e-9 * max(abs(value), 1e-3)


@given(shape=shapes, seed=seeds, dtype=dtypes)
def test_normal_kl_accepts_python_floats_for_any_argument(backend, shape, seed, dtype):
    """normal_kl(m, lv, 0.0, 0.0) == normal_kl(m, lv, zeros, zeros), and likewise with floats in front."""
    m, _ = on(backend, host_data(seed, shape), dtype)
    lv, _ = on(backend, np.clip(host_data(seed + 1, shape), -3.0, 3.0), dtype)
    zeros, _ = on(backend, np.zeros(shape), dtype)
    with_floats = normal_kl(m, lv, 0.0, 0.0)
    assert_same_array_kind(with_floats, m)
    assert_close(with_floats, to_numpy(normal_kl(m, lv, zeros, zeros)))
    in_front = normal_kl(0.0, 0.0, m, lv)
    assert_same_array_kind(in_front, m)
    assert_close(in_front, to_numpy(normal_kl(zeros, zeros, m, lv)))


# --- normal CDFs -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_approx_standard_normal_cdf_is_within_1e_3_of_phi(backend, dtype):
    """|approx_standard_normal_cdf(x) - Phi(x)| <= 1e-3 on 20001 points of [-10, 10] (Phi: scipy.stats.norm)."""
    x, host = on(backend, np.linspace(-10.0, 10.0, 20001), dtype)
    out = approx_standard_normal_cdf(x)
    assert_same_array_kind(out, x)
    np.testing.assert_allclose(to_numpy(out), scipy.stats.norm.cdf(host), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standard_normal_cdf_matches_phi(backend, dtype):
    """|standard_normal_cdf(x) - Phi(x)| <= 1e-12 (float64) / 1e-6 (float32) on 20001 points of [-10, 10].

    On array_api_strict this goes through backend.erf's series fallback.
    """
    x, host = on(backend, np.linspace(-10.0, 10.0, 20001), dtype)
    out = standard_normal_cdf(x)
    assert_same_array_kind(out, x)
    atol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(to_numpy(out), scipy.stats.norm.cdf(host), atol=atol, rtol=0)


# --- discretized Gaussian decoder --------------------------------------------------------------

decoder_params = st.lists(st.tuples(st.floats(-1.5, 1.5), st.floats(-5.0, 1.0)), min_size=1, max_size=3)


@given(params=decoder_params, levels=st.sampled_from([256, 17]), cdf=st.sampled_from(["approx", "exact"]),
       dtype=dtypes)
def test_discretized_gaussian_probabilities_sum_to_one(backend, params, levels, cdf, dtype):
    """sum_k exp(log p(x_k)) == 1 over the grid x_k = -1 + 2k / (levels - 1), for each (mean, log_scale).

    Tolerance: each of the ``levels`` probabilities is within atol (TOLERANCE) of its exact value, so
    the sum is within levels * atol of 1; bins below the floor MIN_PROB = 1e-12 are raised to it, which
    can add up to levels * 1e-12 more on the upper side.
    """
    atol = TOLERANCE[dtype][1]
    mean, _ = on(backend, np.array([[m] for m, _ in params]), dtype)                # (B, 1)
    log_scale, _ = on(backend, np.array([[s] for _, s in params]), dtype)           # (B, 1)
    x, _ = on(backend, np.tile(grid(levels), (len(params), 1)), dtype)              # (B, levels)
    log_p = discretized_gaussian_log_likelihood(x, mean, log_scale, levels=levels, cdf=cdf)
    assert log_p.shape == x.shape
    total = np.exp(to_numpy(log_p).astype(np.float64)).sum(axis=1)                   # (B,)
    assert np.all(total >= 1.0 - levels * atol), total
    assert np.all(total <= 1.0 + levels * (atol + MIN_PROB)), total


@given(params=decoder_params, levels=st.sampled_from([256, 17, 2]), dtype=dtypes)
def test_discretized_gaussian_bin_is_the_normal_mass_of_its_interval(backend, params, levels, dtype):
    """exp(log p(x_k)) == max(Phi((x_k + h - m) / s) - Phi((x_k - h - m) / s), 1e-12), h = 1 / (levels - 1),

    with x_0 - h = -inf and x_{levels-1} + h = +inf; cdf="exact", Phi from scipy.stats.norm on the
    host in float64, s = exp(log_scale). Condition number 1 + 1/s: phi <= 0.4 times |x - m| <= 2.5
    bounds how rounding x - m in dtype moves Phi, scaled by 1/s.
    """
    mean, m = on(backend, np.array([[m] for m, _ in params]), dtype)                 # (B, 1)
    log_scale, ls = on(backend, np.array([[s] for _, s in params]), dtype)           # (B, 1)
    x, xk = on(backend, np.tile(grid(levels), (len(params), 1)), dtype)              # (B, levels)
    h = 1.0 / (levels - 1)
    s = np.exp(ls)
    upper = np.where(np.arange(levels) == levels - 1, np.inf, (xk + h - m) / s)
    lower = np.where(np.arange(levels) == 0, -np.inf, (xk - h - m) / s)
    norm = scipy.stats.norm
    mass = np.where(lower > 0, norm.sf(lower) - norm.sf(upper), norm.cdf(upper) - norm.cdf(lower))
    log_p = discretized_gaussian_log_likelihood(x, mean, log_scale, levels=levels, cdf="exact")
    assert_same_array_kind(log_p, x)
    xp = backend.xp
    assert_close(xp.exp(log_p), np.maximum(mass, MIN_PROB), scale=1.0 + float(np.max(1.0 / s)))


@given(seed=seeds, levels=st.sampled_from([256, 17, 2]), cdf=st.sampled_from(["approx", "exact"]),
       log_scale=st.floats(-3.0, 0.5))
def test_decoder_gradient_matches_finite_differences(backend, seed, levels, cdf, log_scale):
    """(dmean, dlog_scale) of discretized_gaussian_log_likelihood_backward == the gradients of
    sum(discretized_gaussian_log_likelihood(x, mean, log_scale) * dy) (float64), over every bin kind
    (lowest, inner, highest); draws with a bin probability outside [1e-4, 1 - 1e-4] are discarded
    (see test_losses.well_conditioned)."""
    rng = np.random.default_rng(seed)
    x = -1.0 + 2.0 * rng.integers(0, levels, (2, 3)) / (levels - 1)
    x[0, 0], x[0, 1] = -1.0, 1.0                                      # both open-ended bins
    s = math.exp(log_scale)
    arrays = {"mean": x + 0.5 * s * rng.standard_normal(x.shape),
              "log_scale": log_scale + 0.1 * rng.standard_normal(x.shape)}
    prob = np.exp(discretized_gaussian_log_likelihood(x, arrays["mean"], arrays["log_scale"], levels, cdf))
    assume(np.all((prob >= 1e-4) & (prob <= 1.0 - 1e-4)))
    dy = rng.standard_normal(x.shape)
    A = backend.asarray

    def loss(a):
        log_p = discretized_gaussian_log_likelihood(A(x), A(a["mean"]), A(a["log_scale"]), levels, cdf)
        return float(to_numpy(backend.xp.sum(log_p * A(dy))))

    dmean, dlog_scale = discretized_gaussian_log_likelihood_backward(A(x), A(arrays["mean"]), A(arrays["log_scale"]),
                                                                     levels, cdf)
    grads = {"mean": to_numpy(dmean) * dy, "log_scale": to_numpy(dlog_scale) * dy}
    assert_gradients_match(loss, arrays, grads)


# --- prior and VLB terms -----------------------------------------------------------------------


@given(schedule=schedule_strategy(zero_terminal=True), shape=shapes, seed=seeds, dtype=dtypes)
def test_prior_bpd_is_the_closed_form_kl_to_the_standard_normal(backend, schedule, shape, seed, dtype):
    """prior_bpd == mean_{non-batch} 0.5 (-1 - log(1 - ab) + (1 - ab) + ab x0^2) / ln 2, ab = alpha_bar[T-1].

    That is KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)), computed on the host in float64.
    """
    x0, host = on(backend, host_data(seed, shape), dtype)
    ab = schedule.alpha_bar[-1]
    kl = 0.5 * (-1.0 - np.log1p(-ab) + (1.0 - ab) + ab * host**2)
    expected = kl.reshape(shape[0], -1).mean(axis=1) / LN2
    out = prior_bpd(schedule, x0)
    assert out.shape == (shape[0],)
    assert_same_array_kind(out, x0)
    assert_close(out, expected)


@st.composite
def mixed_timesteps(draw, T: int, N: int):
    """(N,) steps in [0, T) with t[0] == 0 and t[1] > 0, the rest anywhere (needs T >= 2, N >= 2)."""
    rest = draw(st.lists(st.integers(0, T - 1), min_size=N - 2, max_size=N - 2))
    return np.array([0, draw(st.integers(1, T - 1))] + rest, dtype=np.int64)


@given(schedule=schedule_strategy(min_T=2), N=st.integers(2, 5), inner=shapes, seed=seeds, dtype=dtypes,
       dm=st.floats(0.1, 1.0), dlv=st.floats(-1.0, 1.0), data=st.data())
def test_vlb_term_is_zero_for_the_true_posterior_and_the_decoder_nll_at_t0(backend, schedule, N, inner, seed,
                                                                          dtype, dm, dlv, data):
    """For t > 0: vlb_term_bpd == 0 when (mean, log_variance) == q_posterior's, > 0 when they differ.
    For t == 0: vlb_term_bpd == -mean_{non-batch}(discretized_gaussian_log_likelihood(x0, mean, lv / 2)) / ln 2.

    x0 on the 256-level grid; the batch mixes t == 0 and t > 0. "== 0" is to TOLERANCE atol / ln 2 (the
    KL sums O(1) terms that cancel); the perturbed model (mean + dm, lv + dlv) has KL >= 1e-3 nats.
    """
    shape = (N,) + inner
    t_host = data.draw(mixed_timesteps(schedule.T, N))
    t = backend.asarray(t_host)
    k = np.random.default_rng(seed).integers(0, 256, shape)
    x0, _ = on(backend, grid(256)[k], dtype)
    xt, _ = on(backend, host_data(seed, shape), dtype)
    mean, _, log_variance = q_posterior(schedule, x0, xt, t)
    t0, tpos = t_host == 0, t_host > 0
    for model_mean, model_lv in ((mean, log_variance), (mean + dm, log_variance + dlv)):
        out = vlb_term_bpd(schedule, x0, xt, t, model_mean, model_lv)
        assert out.shape == (N,)
        assert_same_array_kind(out, x0)
        vlb = to_numpy(out)
        log_p = to_numpy(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_lv)).astype(np.float64)
        assert_close(vlb[t0], -log_p[t0].reshape(int(t0.sum()), -1).mean(axis=1) / LN2)
        if model_mean is mean:
            assert_close(vlb[tpos], np.zeros(int(tpos.sum())))
        else:
            assert np.all(vlb[tpos] > 1e-3 / LN2)


# --- array kind and bad input ------------------------------------------------------------------


@given(schedule=schedule_strategy(min_T=2), shape=shapes, seed=seeds, dtype=dtypes, data=st.data())
def test_every_function_returns_the_input_library_device_and_dtype(backend, schedule, shape, seed, dtype, data):
    """Each public function of refdiff.likelihood returns an array of its input's library, device and dtype,
    and (on array_api_strict) creates no float64 intermediate from float32 inputs (docs/design.md rule 6)."""
    x, _ = on(backend, host_data(seed, shape), dtype)
    lv, _ = on(backend, np.clip(host_data(seed + 1, shape), -3.0, 3.0), dtype)
    t = backend.asarray(np.array(data.draw(st.lists(st.integers(0, schedule.T - 1), min_size=shape[0],
                                                        max_size=shape[0])), dtype=np.int64))
    x0, _ = on(backend, np.clip(np.round(host_data(seed + 2, shape) * 127.5) / 127.5, -1.0, 1.0), dtype)
    with no_float64_intermediates() if dtype == "float32" else contextlib.nullcontext():
        outputs = {
            "normal_kl": normal_kl(x, lv, x0, 0.0),
            "approx_standard_normal_cdf": approx_standard_normal_cdf(x),
            "standard_normal_cdf": standard_normal_cdf(x),
            "discretized_gaussian_log_likelihood(approx)": discretized_gaussian_log_likelihood(x0, x, lv),
            "discretized_gaussian_log_likelihood(exact)": discretized_gaussian_log_likelihood(x0, x, lv, cdf="exact"),
            "prior_bpd": prior_bpd(schedule, x0),
            "vlb_term_bpd": vlb_term_bpd(schedule, x0, x, t, x, lv),
        }
    for name, out in outputs.items():
        assert_same_array_kind(out, x)
        assert np.all(np.isfinite(to_numpy(out))), name


@pytest.mark.parametrize("levels", [1, 0, -3, 2.0, 256.0, True, "256", None])
def test_discretized_gaussian_rejects_levels_that_are_not_an_integer_of_at_least_2(backend, levels):
    """levels must be an int >= 2 (bool excluded): anything else raises ValueError naming 'levels'."""
    x, _ = on(backend, np.zeros((2, 3)), "float32")
    with pytest.raises(ValueError, match=r"levels must be an integer >= 2"):
        discretized_gaussian_log_likelihood(x, x, x, levels=levels)
    t = backend.asarray(np.array([0, 0], dtype=np.int64))
    with pytest.raises(ValueError, match=r"levels must be an integer >= 2"):
        vlb_term_bpd(by_name("cosine", 4), x, x, t, x, x, levels=levels)


@pytest.mark.parametrize("cdf", ["erf", "Exact", "", "tanh"])
def test_discretized_gaussian_rejects_an_unknown_cdf_name(backend, cdf):
    """cdf must be "approx" or "exact": anything else raises ValueError naming 'cdf' and the allowed names."""
    x, _ = on(backend, np.zeros((2, 3)), "float32")
    with pytest.raises(ValueError, match=r"cdf must be one of approx, exact, got"):
        discretized_gaussian_log_likelihood(x, x, x, cdf=cdf)
    t = backend.asarray(np.array([0, 1], dtype=np.int64))
    with pytest.raises(ValueError, match=r"cdf must be one of approx, exact"):
        vlb_term_bpd(by_name("cosine", 4), x, x, t, x, x, cdf=cdf)


@pytest.mark.parametrize("args", [(0.0, 0.0, 0.0, 0.0), (1, 0.5, -2, 3.0)])
def test_normal_kl_rejects_only_python_scalars(args):
    """normal_kl with no array argument raises TypeError saying it needs an array argument."""
    with pytest.raises(TypeError, match=r"normal_kl needs at least one array argument"):
        normal_kl(*args)
