"""Specification of the sigma-space samplers (Euler, Heun, Euler-ancestral, DPM-Solver++(2M)), checked against
exact optimal denoisers, against DDIM, and against diffusers' published scheduler-test numbers."""

import contextlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import GaussianMixtureDenoiser
from refdiff import schedules as S
from refdiff.backend import Generator, to_numpy
from refdiff.diffusion import Parameterization, predict_x0_from_eps, predict_x0_from_v
from refdiff.samplers import ddim_loop, final
from refdiff.samplers.karras import (ancestral_sigmas, churn_gamma, dpmpp_2m_loop, dpmpp_2m_step,
                                     euler_ancestral_loop, euler_ancestral_step, euler_loop, euler_step, heun_loop,
                                     heun_step)
from refdiff.samplers.sigmas import (karras_denoiser, karras_grid, model_timesteps, schedule_grid, sigma_to_t,
                                     t_to_sigma, to_sigma_scale, to_xt_scale, x0_from_output)
from support import assert_close, assert_same_array_kind, no_float64_intermediates, schedule_strategy
from oracles import GAUSSIAN, MIXTURE, diffusers_dummy_model, diffusers_dummy_sample
from support import assert_moments_match

N_SAMPLES = 4000
LINEAR = S.linear(1000)  # sigma from 0.01 to 157


def _prior(backend, sigma_max: float, n: int = N_SAMPLES, seed: int = 0, dims: int = 2):
    """x at sigma_max in the sigma scale, x = sqrt(1 + sigma_max^2) x_T with x_T ~ N(0, I) (float64), and the
    generator that drew it."""
    generator = Generator(seed)
    x_T = generator.normal((n, dims), like=backend.asarray(np.zeros(1)))
    return to_sigma_scale(x_T, sigma_max), generator


# ---------------------------------------------------------------------------------------------------------
# Noise levels and timesteps


@given(schedule=schedule_strategy(min_T=2, max_T=300), data=st.data())
def test_sigma_to_t_recovers_integer_steps_and_t_to_sigma_the_schedule_sigmas(schedule, data):
    """sigma_to_t(sigma_k) == k exactly and t_to_sigma(k) == sigma_k on the schedule's grid; between grid points
    sigma_to_t lands between the neighbouring steps, and levels beyond the ends clamp to 0 and T - 1."""
    k = np.arange(schedule.T)
    np.testing.assert_array_equal(sigma_to_t(schedule, schedule.sigmas), k)
    np.testing.assert_array_equal(t_to_sigma(schedule, k.astype(float)), schedule.sigmas)
    i = data.draw(st.integers(0, schedule.T - 2))
    w = data.draw(st.floats(0.0, 1.0))
    between = math.exp((1 - w) * math.log(schedule.sigmas[i]) + w * math.log(schedule.sigmas[i + 1]))
    assert abs(float(sigma_to_t(schedule, between)) - (i + w)) < 1e-9
    assert sigma_to_t(schedule, schedule.sigmas[0] / 2) == 0
    assert sigma_to_t(schedule, schedule.sigmas[-1] * 2) == schedule.T - 1


@given(schedule=schedule_strategy(min_T=2, max_T=300), steps=st.integers(1, 60), rho=st.floats(1.0, 10.0))
def test_karras_grid_runs_from_the_schedule_sigma_max_to_sigma_min(schedule, steps, rho):
    """karras_grid(schedule, n) is decreasing from sigma_{T-1} to sigma_0 (one step: [sigma_{T-1}]); the schedule's
    own grid maps back to its integer timesteps exactly, so the model is fed int64 steps there."""
    grid = karras_grid(schedule, steps, rho)
    assert grid.shape == (steps,) and grid[0] == schedule.sigmas[-1] and np.all(np.diff(grid) < 0)
    assert steps == 1 or grid[-1] == schedule.sigmas[0]
    S_ = min(steps, schedule.T)
    np.testing.assert_array_equal(sigma_to_t(schedule, schedule_grid(schedule, S_, "trailing")),
                                  S.timesteps(schedule.T, S_, "trailing"))


@given(schedule=schedule_strategy(min_T=2, max_T=300), data=st.data())
def test_x0_from_output_is_refdiff_diffusion_conversion_at_the_schedule_steps(backend, schedule, data):
    """At sigma = sigma_k, x0_from_output(out, x, sigma) with x = x_t sqrt(1 + sigma^2) equals refdiff.diffusion's
    predict_x0_from_eps / predict_x0_from_v(schedule, x_t, k, out) (and out itself for x0 prediction)."""
    k = data.draw(st.integers(0, schedule.T - 1))
    prediction = data.draw(st.sampled_from(["eps", "x0", "v"]))
    sigma = float(schedule.sigmas[k])
    xt = Generator(k).normal((5, 2), like=backend.asarray(np.zeros(1)))
    out = Generator(k + 1).normal((5, 2), like=xt)
    t = backend.asarray(np.full(5, k))
    convert = {"eps": predict_x0_from_eps, "v": predict_x0_from_v}.get(prediction, lambda *args: out)
    expected = convert(schedule, xt, t, out)
    # condition number: x0 is a difference of terms of size sqrt(1 + sigma^2) |x_t| and sigma |out|
    assert_close(x0_from_output(out, to_sigma_scale(xt, sigma), sigma, Parameterization(prediction)),
                 to_numpy(expected), scale=10 * (1 + sigma))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_of_the_exact_model_is_the_exact_denoiser(backend, prediction):
    """karras_denoiser(model, schedule) feeds the model x_t = x / sqrt(1 + sigma^2) at the step of sigma (int64 on
    the schedule's grid, float between steps) and turns its eps / x0 / v into x0: with the exact model it equals
    the exact D(x; sigma) = E[x0 | x0 + sigma eps = x] at grid and Karras sigmas."""
    oracle = GaussianMixtureDenoiser(LINEAR, **MIXTURE, prediction=prediction)
    fed = []

    def model(xt, t, y=None):
        fed.append(t)
        return oracle.continuous_t(xt, t, y)

    denoiser = karras_denoiser(model, LINEAR, param=Parameterization(prediction))
    x, _ = _prior(backend, 3.0, n=64)
    for sigma in list(LINEAR.sigmas[[0, 1, 500, 999]]) + list(karras_grid(LINEAR, 7)[1:-1]):
        on_grid = sigma in LINEAR.sigmas
        assert_close(denoiser(x, sigma), to_numpy(oracle.denoise(x, sigma)), scale=10 * (1 + sigma))
        assert backend.xp.isdtype(fed[-1].dtype, "integral") == on_grid


# ---------------------------------------------------------------------------------------------------------
# Samples have the data's distribution


def _sample(sampler: str, model, x, generator):
    """Run one sampler on the Karras grid of LINEAR with enough steps for 4000 samples: the largest bias of any
    checked statistic, measured with n = 100000 and expressed in standard errors of n = 4000, is 1.3 for Euler
    (200 steps), 0.9 Heun (50), 0.7 Heun with churn (100), 1.7 Euler-ancestral (400), 1.2 DPM-Solver++(2M) (50)."""
    if sampler == "euler":
        return final(euler_loop(model, LINEAR, x, karras_grid(LINEAR, 250)))
    if sampler == "heun":
        return final(heun_loop(model, LINEAR, x, karras_grid(LINEAR, 50)))
    if sampler == "heun_churn":
        return final(heun_loop(model, LINEAR, x, karras_grid(LINEAR, 100), s_churn=10.0, s_tmin=0.05, s_tmax=50.0,
                               generator=generator))
    if sampler == "euler_ancestral":
        return final(euler_ancestral_loop(model, LINEAR, x, karras_grid(LINEAR, 400), generator))
    return final(dpmpp_2m_loop(model, LINEAR, x, karras_grid(LINEAR, 50)))


SAMPLERS = ["euler", "heun", "heun_churn", "euler_ancestral", "dpmpp_2m"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_have_the_gaussian_data_moments(backend, sampler):
    """Each sampler on a Karras grid (rho = 7, sigma 157 -> 0.01 -> 0) with the exact denoiser of N(mu, diag(s^2))
    data (fed fractional t) gives the data's mean, std and correlation within 5 standard errors (n = 4000)."""
    x, generator = _prior(backend, float(LINEAR.sigmas[-1]))
    model = GaussianMixtureDenoiser(LINEAR, **GAUSSIAN).continuous_t
    samples = to_numpy(_sample(sampler, model, x, generator))
    assert_moments_match(samples, GAUSSIAN["means"][0], GAUSSIAN["stds"][0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_have_the_mixture_weights_and_component_moments(backend, sampler):
    """On a two-component mixture, the fraction of samples nearest each component matches its weight (5 binomial
    standard errors) and each component's samples have its mean, std and zero correlation."""
    x, generator = _prior(backend, float(LINEAR.sigmas[-1]), seed=1)
    model = GaussianMixtureDenoiser(LINEAR, **MIXTURE).continuous_t
    samples = to_numpy(_sample(sampler, model, x, generator))
    side = samples[:, 0] > 0  # components sit at x = -2 and x = +2, 4 to 6 stds apart
    w = MIXTURE["weights"][1]
    assert abs(side.mean() - w) < 5 * math.sqrt(w * (1 - w) / side.size)
    for k, members in enumerate([samples[~side], samples[side]]):
        assert_moments_match(members, MIXTURE["means"][k], MIXTURE["stds"][k])


# Measured ratios error(n) / error(2n) at n = 16 -> 32 -> 64 (x at sigma_min against the exact solution):
# euler 1.97, 1.99; heun 4.59, 4.28; dpmpp_2m 4.41, 4.44.
@pytest.mark.parametrize("sampler, low, high", [("euler", 1.8, 2.2), ("heun", 3.6, 5.0), ("dpmpp_2m", 3.6, 5.0)])
def test_heun_and_dpmpp_2m_converge_at_second_order_and_euler_at_first(backend, sampler, low, high):
    """For Gaussian data the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma has the exact solution
    x(sigma) = mu + (x(sigma_max) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) (the limit of any fine
    reference solver). On Karras grids of 16, 32, 64 steps the error at sigma_min shrinks ~4x per doubling for
    deterministic Heun and DPM-Solver++(2M) (second order) and ~2x for Euler (first order)."""
    mu, s = np.asarray(GAUSSIAN["means"][0]), np.asarray(GAUSSIAN["stds"][0])
    model = GaussianMixtureDenoiser(LINEAR, **GAUSSIAN).continuous_t
    x, _ = _prior(backend, float(LINEAR.sigmas[-1]), n=256)
    loop = {"euler": euler_loop, "heun": heun_loop, "dpmpp_2m": dpmpp_2m_loop}[sampler]
    errors = []
    for steps in (16, 32, 64):
        grid = karras_grid(LINEAR, steps)
        at_sigma_min = next(step.x for step in loop(model, LINEAR, x, grid) if step.k == 1)
        exact = mu + (to_numpy(x) - mu) * np.sqrt(s**2 + grid[-1] ** 2) / np.sqrt(s**2 + grid[0] ** 2)
        errors.append(np.max(np.abs(to_numpy(at_sigma_min) - exact)))
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(low < r < high for r in ratios), (errors, ratios)


# ---------------------------------------------------------------------------------------------------------
# Agreement with DDIM


def _ddim_and_sigma_runs(backend, schedule, steps, spacing, prediction, sigma_loop):
    """DDIM (eta = 0) on respace(schedule, grid) from x_T, and ``sigma_loop`` on the same grid's sigmas from
    x = x_T sqrt(1 + sigma_max^2), with the exact model of the mixture; the DDIM steps are returned in the sigma
    scale of the level each lands on (sigma = 0 after the last). Also returns the comparison's condition number
    10 (1 + sigma_max): x0 from eps cancels terms of size sqrt(1 + sigma^2) |x_t| (measured worst 0.63 (1 + sigma_max)
    over 300 random draws)."""
    grid = S.timesteps(schedule.T, steps, spacing)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE, prediction=prediction)
    x_T = Generator(0).normal((16, 2), like=backend.asarray(np.zeros(1)))
    ddim = list(ddim_loop(model, S.respace(schedule, grid), x_T, param=Parameterization(prediction)))
    landing = np.append(schedule.sigmas[grid[1:]], 0.0)
    ddim_x = [to_sigma_scale(to_numpy(step.x), float(sigma)) for step, sigma in zip(ddim, landing)]
    sigmas = schedule_grid(schedule, steps, spacing)
    ours = list(sigma_loop(model, schedule, to_sigma_scale(x_T, float(sigmas[0])), sigmas,
                           param=Parameterization(prediction)))
    return ddim, ddim_x, ours, 10 * (1 + float(sigmas[0]))


@settings(max_examples=20)
@given(schedule=schedule_strategy(min_T=2, max_T=200), data=st.data())
def test_euler_on_the_schedule_grid_equals_ddim_eta0(backend, schedule, data):
    """The DDIM update x_{k-1} = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat divided by
    sqrt(alpha_bar_prev) is x0_hat + sigma_prev eps_hat, the Euler step of the probability-flow ODE in sigma
    space: on the same grid Euler (no churn) and DDIM agree at every step to rounding, for eps / x0 / v models."""
    steps = data.draw(st.integers(1, min(schedule.T, 30)))
    spacing = data.draw(st.sampled_from(["leading", "trailing", "linspace"]))
    prediction = data.draw(st.sampled_from(["eps", "x0", "v"]))
    ddim, ddim_x, euler, scale = _ddim_and_sigma_runs(backend, schedule, steps, spacing, prediction, euler_loop)
    assert len(euler) == len(ddim)
    for ours, theirs, expected in zip(euler, ddim, ddim_x):
        assert ours.k == theirs.k
        np.testing.assert_array_equal(to_numpy(ours.t), to_numpy(theirs.t))
        assert_close(ours.x, expected, scale=scale)
        assert_close(ours.x0, to_numpy(theirs.x0), scale=scale)


@settings(max_examples=20)
@given(schedule=schedule_strategy(min_T=2, max_T=200), data=st.data())
def test_dpmpp_2m_first_step_equals_ddim_first_step(backend, schedule, data):
    """DPM-Solver++(2M) has no previous x0 at its first step, where it is first order: x_1 = (sigma_1 / sigma_0)
    x_0 + (1 - sigma_1 / sigma_0) x0_hat, DDIM's update in the sigma scale."""
    steps = data.draw(st.integers(1, min(schedule.T, 30)))
    spacing = data.draw(st.sampled_from(["leading", "trailing", "linspace"]))
    prediction = data.draw(st.sampled_from(["eps", "x0", "v"]))
    _, ddim_x, dpm, scale = _ddim_and_sigma_runs(backend, schedule, steps, spacing, prediction, dpmpp_2m_loop)
    assert_close(dpm[0].x, ddim_x[0], scale=scale)


# ---------------------------------------------------------------------------------------------------------
# diffusers' published numbers


def _diffusers_linear(T: int) -> S.Schedule:
    """diffusers' linear schedule (1e-4..0.02, no rescaling) with its alphas_cumprod computed in float32, as
    torch does: the Karras grids are sensitive to it (124.5178 from float64 tables against 124.5229)."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float32)
    return S.from_alpha_bar(np.cumprod(1.0 - betas, dtype=np.float32).astype(np.float64))


def _diffusers_euler_test_loop(schedule, sigmas, t, prediction, backend, dtype):
    """diffusers' EulerDiscreteScheduler full-loop test: sample = dummy * sigma_max, then for each step
    ``sample = scale_model_input(sample, t)`` (sample / sqrt(1 + sigma^2)) and ``step(model(sample, t), t, sample)``:
    step receives the *scaled* sample, so each update is an Euler step from x_i / sqrt(1 + sigma_i^2), with the
    model fed that same scaled sample and x0_hat formed from it as if it were in the sigma scale."""
    x = diffusers_dummy_sample(backend, dtype) * float(sigmas[0])
    levels = [float(v) for v in sigmas] + [0.0]
    for i in range(len(levels) - 1):
        sigma = levels[i]
        scaled = to_xt_scale(x, sigma)
        out = diffusers_dummy_model(scaled, model_timesteps(schedule, t[i], scaled))
        if prediction == "eps":
            x0 = scaled - sigma * out
        else:  # diffusers' v: x0 = -sigma / sqrt(1 + sigma^2) v + sample / (1 + sigma^2)
            x0 = out * (-sigma / math.sqrt(1 + sigma**2)) + scaled / (1 + sigma**2)
        x, _ = euler_step(lambda z, s, t_, x0=x0: x0, scaled, sigma, levels[i + 1], t[i])
    return np.abs(to_numpy(x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("grid, prediction, abs_sum, abs_mean", [
    ("linspace", "eps", 10.0807, 0.0131), ("linspace", "v", 0.0002, 2.2676e-06),
    ("karras", "eps", 124.52299499511719, 0.16213932633399963)])
def test_euler_reproduces_diffusers_published_numbers(backend, dtype, grid, prediction, abs_sum, abs_mean):
    """Euler configured as diffusers' EulerDiscreteScheduler test (T = 1100 linear betas, 10 steps; "linspace":
    fractional timesteps linspace(0, 1099, 10) reversed with sigma interpolated linearly at them; "karras": Karras
    sigmas between the grid's ends with t = sigma_to_t; the dummy model and sample; the test's scale_model_input
    feeding) gives the published sum and mean of |x| (diffusers tests/schedulers/test_scheduler_euler.py)."""
    schedule = _diffusers_linear(1100)
    if grid == "linspace":
        t = np.linspace(0, 1099, 10)[::-1]
        sigmas = t_to_sigma(schedule, t)
    else:
        sigmas = karras_grid(schedule, 10)
        t = sigma_to_t(schedule, sigmas)
    result = _diffusers_euler_test_loop(schedule, sigmas, t, prediction, backend, dtype)
    assert abs(result.sum() - abs_sum) < 1e-3 and abs(result.mean() - abs_mean) < 1e-4, (result.sum(), result.mean())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("grid, prediction, abs_mean", [
    ("linspace", "eps", 0.3301), ("linspace", "v", 0.2251), ("karras_rounded", "v", 0.2096)])
def test_dpmpp_2m_reproduces_diffusers_published_numbers(backend, dtype, grid, prediction, abs_mean):
    """DPM-Solver++(2M) configured as diffusers' DPMSolverMultistepScheduler test (T = 1000 linear betas, 10 steps
    at round(linspace(0, 999, 11))[::-1][:-1] = [999, 899, ..., 100], midpoint, lower_order_final=False, the last
    step landing on sigma_0 ("sigma_min"), the model fed x_t and integer t) gives the published mean of |x_t|.
    "karras_rounded": the steps round(sigma_to_t(Karras sigmas)) with the schedule's own sigmas there, which is
    what diffusers computed when it published 0.2096 (its later code keeps the Karras sigmas: 0.2092)."""
    schedule = _diffusers_linear(1000)
    if grid == "linspace":
        sigmas = schedule.sigmas[S.timesteps(1000, 11, "linspace")[:-1]]
    else:
        steps = np.round(sigma_to_t(schedule, karras_grid(schedule, 10))).astype(np.int64)[:-1]
        sigmas = schedule.sigmas[steps]
    x = to_sigma_scale(diffusers_dummy_sample(backend, dtype), float(sigmas[0]))
    sigma_last = float(schedule.sigmas[0])
    x = final(dpmpp_2m_loop(diffusers_dummy_model, schedule, x, sigmas, final_sigma=sigma_last, lower_order_final=False,
                            param=Parameterization(prediction)))
    result = np.abs(to_numpy(to_xt_scale(x, sigma_last)))
    assert abs(result.mean() - abs_mean) < 1e-4, result.mean()


# ---------------------------------------------------------------------------------------------------------
# Arrays, dtypes and arguments


@given(seed=st.integers(0, 1000), sigma=st.floats(0.05, 50.0), ratio=st.one_of(st.just(0.0), st.floats(0.01, 0.9)),
       gamma=st.sampled_from([0.0, 0.3]))
def test_steps_keep_the_input_library_device_and_dtype(backend, seed, sigma, ratio, gamma):
    """euler_step, heun_step (with churn), euler_ancestral_step and dpmpp_2m_step keep x's library, device and
    dtype: float32 stays float32, with no float64 intermediate on array_api_strict (fractional t included)."""
    x = Generator(seed).normal((3, 2), like=backend.asarray(np.zeros(1), dtype=backend.dtype("float32")))
    noise = Generator(seed + 1).normal((3, 2), like=x)
    denoiser = karras_denoiser(GaussianMixtureDenoiser(LINEAR, **MIXTURE, prediction="v").continuous_t, LINEAR,
                               param=Parameterization("v"), clip_x0=3.0)
    sigma_next = ratio * sigma
    with no_float64_intermediates() if backend.name == "array_api_strict" else contextlib.nullcontext():
        outputs = [*euler_step(denoiser, x, sigma, sigma_next, gamma=gamma, noise=noise),
                   *heun_step(denoiser, x, sigma, sigma_next, gamma=gamma, noise=noise),
                   *euler_ancestral_step(denoiser, x, sigma, sigma_next, noise=noise),
                   *dpmpp_2m_step(denoiser, x, sigma, sigma_next, x0_prev=x, sigma_prev=2 * sigma)]
    for out in outputs:
        assert_same_array_kind(out, x)
        assert np.all(np.isfinite(to_numpy(out)))


@given(sigma=st.floats(1e-3, 1e3), n=st.integers(1, 500), s_churn=st.floats(0.0, 100.0),
       s_tmin=st.floats(0.0, 10.0), width=st.floats(0.0, 100.0))
def test_churn_gamma_is_edm_s_churn_over_n_capped_inside_the_band(sigma, n, s_churn, s_tmin, width):
    """gamma_i = min(S_churn / n, sqrt(2) - 1) for S_tmin <= sigma_i <= S_tmax, else 0 (Karras et al. 2022,
    Alg. 2): the cap keeps the added noise below the noise already present (sigma_hat^2 - sigma^2 <= sigma^2)."""
    gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmin + width)
    inside = s_tmin <= sigma <= s_tmin + width
    assert gamma == (min(s_churn / n, math.sqrt(2) - 1) if inside else 0.0)
    assert ((1 + gamma) * sigma) ** 2 - sigma**2 <= sigma**2 * (1 + 1e-12)


@given(sigma=st.floats(1e-3, 1e3), ratio=st.floats(0.0, 1.0, exclude_max=True))
def test_ancestral_step_lands_on_sigma_next(sigma, ratio):
    """sigma_down^2 + sigma_up^2 == sigma_next^2: the deterministic move to sigma_down plus fresh noise of std
    sigma_up gives exactly the noise level sigma_next, and sigma_down <= sigma_next <= sigma."""
    sigma_next = ratio * sigma
    down, up = ancestral_sigmas(sigma, sigma_next)
    assert math.isclose(down**2 + up**2, sigma_next**2, rel_tol=1e-12, abs_tol=1e-300)
    assert 0 <= down <= sigma_next <= sigma


def test_bad_arguments_raise_naming_the_argument(backend):
    """Step counts below 1, negative or non-finite churn parameters, s_tmax < s_tmin, churn without a generator,
    grids that are not decreasing positive levels, a final_sigma not below them, mismatched timesteps, zero
    terminal SNR, unknown options and a 1-D sample are refused with the argument's name and range, when the loop
    is created (before any model call)."""
    def model(xt, t, y=None):
        raise AssertionError("arguments must be checked before the model is called")

    x, _ = _prior(backend, 100.0, n=4)
    grid = karras_grid(LINEAR, 5)
    zero_snr = S.rescale_zero_terminal_snr(S.linear(50))
    cases = [
        (lambda: karras_grid(LINEAR, 0), "steps must be an integer >= 1"),
        (lambda: schedule_grid(LINEAR, 1001), r"steps must be an integer in \[1, 1000\]"),
        (lambda: euler_loop(model, LINEAR, x, grid, s_churn=-1.0), "s_churn must be a finite number >= 0"),
        (lambda: heun_loop(model, LINEAR, x, grid, s_churn=math.nan), "s_churn must be a finite number"),
        (lambda: heun_loop(model, LINEAR, x, grid, s_noise=math.inf), "s_noise must be a finite number"),
        (lambda: euler_loop(model, LINEAR, x, grid, s_tmin=-0.5), "s_tmin must be a finite number >= 0"),
        (lambda: euler_loop(model, LINEAR, x, grid, s_tmin=2.0, s_tmax=1.0), "s_tmax must be a number >= s_tmin"),
        (lambda: heun_loop(model, LINEAR, x, grid, s_churn=5.0), "generator is required when s_churn > 0"),
        (lambda: euler_ancestral_loop(model, LINEAR, x, grid, None), "generator is required for ancestral"),
        (lambda: euler_loop(model, LINEAR, x, grid[::-1]), "sigmas must be a non-empty 1-D array"),
        (lambda: dpmpp_2m_loop(model, LINEAR, x, np.append(grid, 0.0)), "sigmas must be a non-empty 1-D array"),
        (lambda: dpmpp_2m_loop(model, LINEAR, x, []), "sigmas must be a non-empty 1-D array"),
        (lambda: euler_loop(model, LINEAR, x, grid, final_sigma=grid[-1]), "final_sigma must lie in"),
        (lambda: euler_loop(model, LINEAR, x, grid, final_sigma=-1.0), "final_sigma must be a finite number >= 0"),
        (lambda: heun_loop(model, LINEAR, x, grid, timesteps=[999.0]), "timesteps must be None or 5 steps"),
        (lambda: dpmpp_2m_loop(model, LINEAR, x, grid, lower_order_final=1), "lower_order_final must be a bool"),
        (lambda: euler_loop(model, zero_snr, x, grid), "schedule must have finite sigmas"),
        (lambda: euler_loop(model, LINEAR, x, grid, param=Parameterization(prediction="score")),
         "prediction must be one of"),
        (lambda: euler_loop(model, LINEAR, x[:, 0], grid), r"x must be a real floating \(N, C, ...\)"),
        (lambda: euler_step(model, x, 1.0, 0.5, gamma=0.2), "noise is required when gamma > 0"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    exact = GaussianMixtureDenoiser(LINEAR, **GAUSSIAN).continuous_t  # C channels where learned wants 2C
    with pytest.raises(ValueError, match=r"model_output must have shape \(4, 4\)"):
        final(heun_loop(exact, LINEAR, x, grid, param=Parameterization(variance="learned")))
