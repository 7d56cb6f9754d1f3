"""Specification of refdiff.diffusion: forward process, posterior, parameterizations, reverse step."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff import diffusion as D
from refdiff import schedules as S
from refdiff.backend import Generator, get_backend, to_numpy
from support import (DTYPES, assert_close, assert_same_array_kind, host_data, no_float64_intermediates,
                     schedule_strategy)

image_shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))


def _t(backend, schedule, N, data):
    """Draw (N,) steps in [0, T) as a host array and as a backend array."""
    host = np.array(data.draw(st.lists(st.integers(0, schedule.T - 1), min_size=N, max_size=N)), dtype=np.int64)
    return host, backend.asarray(host)


@given(schedule=schedule_strategy(max_T=400))
def test_composed_q_steps_have_the_q_sample_marginal(schedule):
    """Composing x_t = a_t x_{t-1} + b_t noise from x0 gives mean coefficient prod a_s == sqrt(alpha_bar_t)
    and accumulated variance sum_s b_s^2 prod_{r > s} a_r^2 == 1 - alpha_bar_t, for every t (float64).
    The coefficients are read off q_step itself: a_t = q_step(1, t, 0), b_t = q_step(0, t, 1)."""
    T = schedule.T
    t = np.arange(T)
    ones, zeros = np.ones((T, 1)), np.zeros((T, 1))
    a = D.q_step(schedule, ones, t, zeros)[:, 0]
    b = D.q_step(schedule, zeros, t, ones)[:, 0]
    mean_coef, variance = 1.0, 0.0
    for s in range(T):
        mean_coef, variance = a[s] * mean_coef, a[s] ** 2 * variance + b[s] ** 2
        assert math.isclose(mean_coef, schedule.sqrt_alpha_bar[s], rel_tol=1e-12)
        assert math.isclose(variance, 1.0 - schedule.alpha_bar[s], rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("name, T, t", [("linear", 100, 7), ("cosine", 50, 49), ("sigmoid", 30, 15)])
def test_monte_carlo_chain_matches_q_sample(backend, name, T, t):
    """Running q_step t+1 times from a fixed x0 gives samples whose mean and variance match
    q(x_t | x0) = N(sqrt(alpha_bar_t) x0, 1 - alpha_bar_t), within 5 standard errors of n samples:
    se(mean) = sqrt(var / n), se(var) = var * sqrt(2 / (n - 1))."""
    schedule, n = S.by_name(name, T), 20000
    g = Generator(1234)
    x0 = backend.asarray(np.full((n, 1), 0.7))
    x = x0
    for s in range(t + 1):
        steps = backend.asarray(np.full(n, s))
        x = D.q_step(schedule, x, steps, g.normal(x.shape, like=x))
    samples = to_numpy(x)[:, 0]
    mean, var = math.sqrt(schedule.alpha_bar[t]) * 0.7, 1.0 - schedule.alpha_bar[t]
    assert abs(samples.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(samples.var(ddof=1) - var) < 5 * var * math.sqrt(2 / (n - 1))


def _condition_gaussian(mu, cov, observed, value):
    """Generic Gaussian conditioning: the law of the other coordinates given x[observed] = value.

    Math: mu_1|2 = mu_1 + S_12 S_22^-1 (value - mu_2),  S_1|2 = S_11 - S_12 S_22^-1 S_21
    """
    keep = [i for i in range(len(mu)) if i not in observed]
    S12 = cov[np.ix_(keep, observed)]
    gain = np.linalg.solve(cov[np.ix_(observed, observed)], S12.T).T
    return mu[keep] + gain @ (value - mu[observed]), cov[np.ix_(keep, keep)] - gain @ S12.T


@given(schedule=schedule_strategy(max_T=200), x0=st.floats(-2, 2), xt=st.floats(-3, 3), data=st.data())
def test_q_posterior_is_gaussian_conditioning_of_the_joint(schedule, x0, xt, data):
    """q(x_{t-1} | x_t, x0) equals conditioning the joint Gaussian of (x_{t-1}, x_t) given x0 on x_t:
    x_{t-1} ~ N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}), x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) n."""
    t = data.draw(st.integers(0, schedule.T - 1))
    ab_prev, alpha, beta = schedule.alpha_bar_prev[t], schedule.alphas[t], schedule.betas[t]
    # Joint of (x_{t-1}, x_t) given x0, written as a linear map of (x_{t-1}, n).
    A = np.array([[1.0, 0.0], [math.sqrt(alpha), math.sqrt(beta)]])
    mu = A @ np.array([math.sqrt(ab_prev) * x0, 0.0])
    cov = A @ np.diag([1.0 - ab_prev, 1.0]) @ A.T
    cond_mean, cond_var = _condition_gaussian(mu, cov, [1], np.array([xt]))
    mean, variance, log_variance = D.q_posterior(schedule, np.array([[x0]]), np.array([[xt]]), np.array([t]))
    assert math.isclose(mean[0, 0], cond_mean[0], rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(variance[0, 0], cond_var[0, 0], rel_tol=1e-9, abs_tol=1e-15)
    if t > 0:
        assert math.isclose(log_variance[0, 0], math.log(cond_var[0, 0]), rel_tol=1e-9)


@given(schedule=schedule_strategy(max_T=300), shape=image_shapes, dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16), data=st.data())
def test_parameterizations_invert_each_other(backend, schedule, shape, dtype, seed, data):
    """For x_t = q_sample(x0, t, eps) and v = predict_v(x0, t, eps): x0, eps and v are each recovered
    from x_t and either of the other two. Recovering x0 from eps divides by sqrt(alpha_bar_t), so its
    tolerance scales with 1 / sqrt(alpha_bar_t); eps from x0 with 1 / sqrt(1 - alpha_bar_t)."""
    t_host, t = _t(backend, schedule, shape[0], data)
    dt = backend.dtype(dtype)
    x0_h, eps_h = host_data(seed, shape), host_data(seed + 1, shape)
    x0, eps = backend.asarray(x0_h, dtype=dt), backend.asarray(eps_h, dtype=dt)
    xt = D.q_sample(schedule, x0, t, eps)
    v = D.predict_v(schedule, x0, t, eps)
    k_x0 = float(schedule.sqrt_recip_alpha_bar[t_host].max())
    k_eps = float(1.0 / schedule.sqrt_one_minus_alpha_bar[t_host].min())
    x0_ref, eps_ref = to_numpy(x0), to_numpy(eps)
    assert_close(D.predict_x0_from_eps(schedule, xt, t, eps), x0_ref, scale=10 * k_x0)
    assert_close(D.predict_eps_from_x0(schedule, xt, t, x0), eps_ref, scale=10 * k_eps)
    assert_close(D.predict_x0_from_v(schedule, xt, t, v), x0_ref, scale=10)
    assert_close(D.predict_eps_from_v(schedule, xt, t, v), eps_ref, scale=10)
    assert_close(D.predict_v_from_eps(schedule, xt, t, eps), to_numpy(v), scale=10 * k_x0)
    assert_close(D.predict_v_from_x0(schedule, xt, t, x0), to_numpy(v), scale=10 * k_eps)
    for out in (xt, v, D.predict_x0_from_eps(schedule, xt, t, eps)):
        assert_same_array_kind(out, x0)


@given(schedule=schedule_strategy(max_T=300), shape=image_shapes, seed=st.integers(0, 2**16), data=st.data())
def test_q_sample_is_the_closed_form(backend, schedule, shape, seed, data):
    """q_sample(x0, t, eps) == sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, and q_mean_variance
    gives that mean with variance 1 - alpha_bar_t (Ho et al. 2020, eq. 4), host float64 oracle."""
    t_host, t = _t(backend, schedule, shape[0], data)
    x0_h, eps_h = host_data(seed, shape), host_data(seed + 1, shape)
    ab = schedule.alpha_bar[t_host].reshape(-1, 1, 1, 1)
    x0 = backend.asarray(x0_h)
    assert_close(D.q_sample(schedule, x0, t, backend.asarray(eps_h)), np.sqrt(ab) * x0_h + np.sqrt(1 - ab) * eps_h)
    mean, variance, log_variance = D.q_mean_variance(schedule, x0, t)
    assert_close(mean, np.sqrt(ab) * x0_h)
    assert_close(variance, 1 - ab)
    assert_close(log_variance, np.log(1 - ab))


def _exact_outputs(schedule, x0, t, eps, prediction):
    """The output a perfect model of kind ``prediction`` would give at x_t = q_sample(x0, t, eps)."""
    return {"eps": eps, "x0": x0, "v": D.predict_v(schedule, x0, t, eps)}[prediction]


@given(schedule=schedule_strategy(min_T=2, max_T=300), shape=image_shapes, dtype=st.sampled_from(DTYPES),
       prediction=st.sampled_from(D.PREDICTIONS), seed=st.integers(0, 2**16), data=st.data())
def test_perfect_prediction_gives_the_true_posterior(backend, schedule, shape, dtype, prediction, seed, data):
    """With the exact eps / x0 / v as model output, p_mean_variance returns x0_hat == x0, eps == eps and
    mean == the posterior mean mu~_t(x0, x_t), for every parameterization."""
    t_host, t = _t(backend, schedule, shape[0], data)
    assume(schedule.alpha_bar[t_host].min() > 1e-6)  # x0 from eps is ill-conditioned beyond this
    dt = backend.dtype(dtype)
    x0, eps = backend.asarray(host_data(seed, shape), dtype=dt), backend.asarray(host_data(seed + 1, shape), dtype=dt)
    xt = D.q_sample(schedule, x0, t, eps)
    out = D.p_mean_variance(schedule, _exact_outputs(schedule, x0, t, eps, prediction), xt, t,
                            D.Parameterization(prediction))
    k = float(schedule.sqrt_recip_alpha_bar[t_host].max() / schedule.sqrt_one_minus_alpha_bar[t_host].min())
    assert_close(out.x0, to_numpy(x0), scale=10 * k)
    assert_close(out.eps, to_numpy(eps), scale=10 * k)
    assert_close(out.mean, to_numpy(D.q_posterior(schedule, x0, xt, t)[0]), scale=10 * k)
    for field in (out.mean, out.variance, out.log_variance, out.x0, out.eps):
        assert_same_array_kind(field, xt)


@given(schedule=schedule_strategy(min_T=2, max_T=300), dtype=st.sampled_from(DTYPES), data=st.data())
def test_fixed_variances_follow_each_convention(backend, schedule, dtype, data):
    """fixed_small is beta~_t and fixed_large is beta_t for t > 0 under both conventions; at t = 0 OpenAI
    logs beta~_1 for fixed_small and uses beta~_1 for fixed_large, diffusers floors beta~_0 at 1e-20 and
    keeps beta_0."""
    t_host, t = _t(backend, schedule, 4, data)
    xt = backend.asarray(np.zeros((4, 1, 2, 2)), dtype=backend.dtype(dtype))
    pv, b = schedule.posterior_variance[t_host], schedule.betas[t_host]
    pv1 = schedule.posterior_variance[1]
    expected = {
        ("fixed_small", "openai"): (pv, np.log(np.where(t_host == 0, pv1, pv))),
        ("fixed_small", "diffusers"): (np.maximum(pv, 1e-20), np.log(np.maximum(pv, 1e-20))),
        ("fixed_large", "openai"): (np.where(t_host == 0, pv1, b), np.log(np.where(t_host == 0, pv1, b))),
        ("fixed_large", "diffusers"): (b, np.log(b)),
    }
    for (variance, convention), (var, log_var) in expected.items():
        out = D.p_mean_variance(schedule, xt, xt, t, D.Parameterization(variance=variance, convention=convention))
        assert_close(out.variance, var.reshape(-1, 1, 1, 1))
        assert_close(out.log_variance, log_var.reshape(-1, 1, 1, 1))


@given(schedule=schedule_strategy(min_T=2, max_T=300), frac=st.floats(-1, 1), data=st.data())
def test_learned_range_interpolates_log_variance(backend, schedule, frac, data):
    """learned_range: log sigma^2 = f log beta_t + (1 - f) log beta~_t with f = (v + 1) / 2, so v = -1
    gives the clipped posterior log-variance and v = +1 gives log beta_t (Nichol & Dhariwal 2021,
    eq. 15); learned takes v as the log-variance itself. The first C channels still set the mean."""
    t_host, t = _t(backend, schedule, 3, data)
    xt = backend.asarray(host_data(0, (3, 2, 2, 2)))
    eps = backend.asarray(host_data(1, (3, 2, 2, 2)))
    v = backend.asarray(np.full((3, 2, 2, 2), frac))
    out = D.p_mean_variance(schedule, backend.xp.concat([eps, v], axis=1), xt, t,
                            D.Parameterization(variance="learned_range"))
    f = (frac + 1) / 2
    lo, hi = schedule.posterior_log_variance_clipped[t_host], np.log(schedule.betas[t_host])
    expected = (f * hi + (1 - f) * lo).reshape(-1, 1, 1, 1) * np.ones((3, 2, 2, 2))
    assert_close(out.log_variance, expected)
    assert_close(out.variance, np.exp(expected))
    assert_close(out.mean, to_numpy(D.p_mean_variance(schedule, eps, xt, t).mean))
    learned = D.p_mean_variance(schedule, backend.xp.concat([eps, v], axis=1), xt, t,
                                D.Parameterization(variance="learned"))
    assert_close(learned.log_variance, np.full((3, 2, 2, 2), frac))


@given(shape=image_shapes, scale=st.floats(0.1, 5.0), p=st.floats(0.5, 1.0), seed=st.integers(0, 2**16))
def test_dynamic_threshold_matches_numpy_quantile(backend, shape, scale, p, seed):
    """dynamic_threshold: s = max(np.quantile(|x0_n|, p), 1) per sample and x0_n -> clip(x0_n, -s, s) / s;
    the result lies in [-1, 1], and a sample already inside [-1, 1] is left unchanged."""
    x0_h = host_data(seed, shape, scale=scale)
    s = np.maximum(np.quantile(np.abs(x0_h).reshape(shape[0], -1), p, axis=1), 1.0).reshape(-1, 1, 1, 1)
    out = D.dynamic_threshold(backend.asarray(x0_h), p)
    assert_close(out, np.clip(x0_h, -s, s) / s)
    assert np.all(np.abs(to_numpy(out)) <= 1.0)
    inside = np.clip(x0_h, -1, 1)
    assert_close(D.dynamic_threshold(backend.asarray(inside), p), inside)


@given(schedule=schedule_strategy(min_T=2, max_T=300), prediction=st.sampled_from(D.PREDICTIONS), data=st.data())
def test_clipped_x0_sets_the_mean_and_leaves_eps_raw(backend, schedule, prediction, data):
    """clip_x0=c bounds x0_hat to [-c, c], the mean is mu~_t(clipped x0_hat, x_t), and eps is the one
    implied by the raw (unclipped) prediction."""
    t_host, t = _t(backend, schedule, 3, data)
    xt = backend.asarray(host_data(2, (3, 1, 3, 3), scale=3.0))
    raw = backend.asarray(host_data(3, (3, 1, 3, 3), scale=3.0))
    free = D.p_mean_variance(schedule, raw, xt, t, D.Parameterization(prediction))
    clipped = D.p_mean_variance(schedule, raw, xt, t, D.Parameterization(prediction), clip_x0=1.0)
    assert_close(clipped.x0, np.clip(to_numpy(free.x0), -1, 1))
    assert_close(clipped.mean, to_numpy(D.q_posterior(schedule, clipped.x0, xt, t)[0]))
    assert_close(clipped.eps, to_numpy(free.eps))


def test_float32_inputs_never_create_float64_arrays():
    """No silent upcast: every function called with float32 inputs creates no float64 array at all,
    intermediates included (docs/design.md rule 6), checked by a tripwire on array_api_strict."""
    backend = get_backend("array_api_strict")
    schedule, f32 = S.cosine(50), backend.dtype("float32")
    x = backend.asarray(host_data(0, (2, 2, 3, 3)), dtype=f32)
    t = backend.asarray(np.array([0, 49]))
    two = backend.xp.concat([x, x], axis=1)
    with no_float64_intermediates():
        outs = [D.q_sample(schedule, x, t, x), D.q_step(schedule, x, t, x), *D.q_mean_variance(schedule, x, t),
                *D.q_posterior(schedule, x, x, t), D.dynamic_threshold(x, 0.9),
                D.predict_v_from_eps(schedule, x, t, x), D.predict_v_from_x0(schedule, x, t, x)]
        for prediction, variance in zip(D.PREDICTIONS, D.VARIANCES[1:]):
            output = two if variance.startswith("learned") else x
            outs += D.p_mean_variance(schedule, output, x, t, D.Parameterization(prediction, variance), threshold=0.9)
    assert all(out.dtype == f32 for out in outs)


def test_float64_tripwire_fires_on_an_upcast():
    """The tripwire of the test above can fail: a float32 * float64 product trips it."""
    backend = get_backend("array_api_strict")
    x = backend.asarray(np.ones(3), dtype=backend.dtype("float32"))
    y = backend.asarray(np.ones(3), dtype=backend.dtype("float64"))
    with pytest.raises(AssertionError, match="float64 array"), no_float64_intermediates():
        x * y


def test_bad_inputs_raise_naming_the_argument(backend):
    """Steps out of range, non-integer or mis-shaped t, mismatched eps, unknown options and a model
    output with the wrong channel count are refused with the argument's name and what is allowed."""
    schedule = S.cosine(10)
    x = backend.asarray(np.zeros((2, 1, 2, 2)))
    ok = backend.asarray(np.array([0, 9]))
    cases = [
        (lambda: D.q_sample(schedule, x, backend.asarray(np.array([0, 10])), x), ValueError, r"t must lie in \[0, 10\)"),
        (lambda: D.q_sample(schedule, x, backend.asarray(np.array([-1, 0])), x), ValueError, r"t must lie in \[0, 10\)"),
        (lambda: D.q_sample(schedule, x, backend.asarray(np.array([0.0, 1.0])), x), TypeError, "t must be an integer"),
        (lambda: D.q_sample(schedule, x, backend.asarray(np.array([0])), x), ValueError, r"t must have shape \(2,\)"),
        (lambda: D.q_sample(schedule, x, ok, x[:1, ...]), ValueError, "eps must match x's shape"),
        (lambda: D.q_sample(schedule, backend.asarray(np.zeros((2, 1), dtype=np.int64)), ok, x), TypeError,
         "x0 must be a real floating array"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, D.Parameterization(prediction="score")), ValueError,
         "prediction must be one of"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, D.Parameterization(variance="large")), ValueError,
         "variance must be one of"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, D.Parameterization(convention="jax")), ValueError,
         "convention must be one of"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, clip_x0=0.0), ValueError, "clip_x0 must be None or a positive"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, threshold=1.5), ValueError, r"threshold must be None or a quantile"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, clip_x0=1.0, threshold=0.9), ValueError, "exclusive"),
        (lambda: D.p_mean_variance(schedule, x, x, ok, D.Parameterization(variance="learned")), ValueError,
         r"model_output must have shape \(2, 2, 2, 2\)"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


# --- the parameterization ----------------------------------------------------------------------

FIELDS = {"prediction": D.PREDICTIONS, "variance": D.VARIANCES, "convention": D.CONVENTIONS}
parameterizations = st.builds(D.Parameterization, *(st.sampled_from(allowed) for allowed in FIELDS.values()))


@given(field=st.sampled_from(sorted(FIELDS)), value=st.one_of(st.text(max_size=8), st.none(), st.integers()))
def test_parameterization_refuses_a_value_naming_its_field(field, value):
    """Parameterization(**{field: value}) with value outside the field's allowed strings raises ValueError
    "<field> must be one of <allowed>, got <value!r>"."""
    assume(value not in FIELDS[field])
    with pytest.raises(ValueError, match=f"^{field} must be one of {', '.join(FIELDS[field])}, got "):
        D.Parameterization(**{field: value})


@given(a=parameterizations, b=parameterizations)
def test_equal_parameterizations_hash_equal(a, b):
    """a == b exactly when prediction, variance and convention agree, and then hash(a) == hash(b);
    the value is frozen (its fields cannot be reassigned)."""
    same = (a.prediction, a.variance, a.convention) == (b.prediction, b.variance, b.convention)
    assert (a == b) == same
    assert not same or hash(a) == hash(b)
    assert D.Parameterization(a.prediction, a.variance, a.convention) == a
    with pytest.raises(AttributeError):
        a.prediction = b.prediction


@given(param=parameterizations, shape=image_shapes)
def test_learned_parameterizations_double_the_output_channels(param, shape):
    """learned is True exactly for the variances read from the output; output_shape((N, C, ...)) is
    (N, 2C, ...) for them and (N, C, ...) otherwise."""
    assert param.learned == param.variance.startswith("learned")
    N, C, *rest = shape
    assert param.output_shape(shape) == ((N, 2 * C, *rest) if param.learned else shape)


def test_p_mean_variance_refuses_anything_but_a_parameterization():
    """A string where the Parameterization goes (the pre-Parameterization positional prediction) raises
    TypeError naming param."""
    x, t = np.zeros((2, 1, 2, 2)), np.array([0, 1])
    with pytest.raises(TypeError, match="param must be a refdiff.diffusion.Parameterization, got 'v'"):
        D.p_mean_variance(S.cosine(10), x, x, t, "v")


# (prediction, variance, convention) -> weighted sums of (mean, variance, log_variance, x0, eps), recorded
# from the three-string API this value replaced (prediction=, variance=, convention=), on the same inputs.
P_MEAN_VARIANCE_RECORDED = {
    ("eps", "fixed_small", "openai"): (157.19837057897496, 0.5190728825246563, 45.31718057037092,
                                       5070.141779137188, 16.164139748149857),
    ("x0", "fixed_large", "openai"): (6.619928675603775, 0.5064300978614583, 47.88773526079538,
                                      8.039884710625715, -143.2760932503615),
    ("v", "learned_range", "diffusers"): (0.4153442065231019, 0.5093655295698819, 312.71447347816,
                                          -4.722780665446123, -2.003850851733182),
    ("eps", "learned", "openai"): (196.20923203740765, -31.94843248665233, -12.876331588096031,
                                   6317.985629376999, 13.011515041340019),
    ("v", "fixed_small", "diffusers"): (1.4738623454996016, 0.5190728825246563, 360.23140030855257,
                                        14.792315421075102, -11.242990216827199),
}


def test_p_mean_variance_with_a_parameterization_equals_the_three_string_call():
    """p_mean_variance(..., Parameterization(p, v, c)) gives the numbers the call with prediction=p,
    variance=v, convention=c gave, on fixed inputs (cosine T = 50, t in {0, 1, 25, 49}, float64):
    each field's sum weighted by a fixed normal draw, to rtol 1e-12."""
    schedule, rng = S.cosine(50), np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (4, 2, 3, 3))
    eps = rng.standard_normal(x0.shape)
    t = np.array([0, 1, 25, 49])
    xt = D.q_sample(schedule, x0, t, eps)
    w = rng.standard_normal(x0.shape)
    for (p, v, c), recorded in P_MEAN_VARIANCE_RECORDED.items():
        param = D.Parameterization(p, v, c)
        out = D.p_mean_variance(schedule, rng.standard_normal(param.output_shape(x0.shape)), xt, t, param)
        sums = [float(np.sum(np.broadcast_to(field, w.shape) * w)) for field in out]
        np.testing.assert_allclose(sums, recorded, rtol=1e-12, err_msg=str(param))
