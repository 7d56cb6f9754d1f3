"""Specification of refdiff.schedules: schedules, timestep grids, respacing, sigma grids."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from refdiff import schedules as S
from support import schedule_strategy


@given(schedule=schedule_strategy(max_T=1000))
def test_betas_in_unit_interval_and_alpha_bar_strictly_decreasing(schedule):
    """0 < beta_t < 1 and 1 > alpha_bar_0 > alpha_bar_1 > ... > alpha_bar_{T-1} > 0."""
    assert np.all((schedule.betas > 0) & (schedule.betas < 1))
    ab = schedule.alpha_bar
    assert ab[0] < 1 and ab[-1] > 0 and np.all(np.diff(ab) < 0)


@given(schedule=schedule_strategy(max_T=1000, zero_terminal=True))
def test_derived_tables_follow_their_definitions(schedule):
    """alpha_bar = cumprod(1 - beta), alpha_bar_prev shifts it by one with 1 in front, the posterior
    variance is beta (1 - alpha_bar_prev) / (1 - alpha_bar) with its t = 0 log taken at t = 1."""
    b = schedule.betas
    np.testing.assert_allclose(schedule.alpha_bar, np.cumprod(1 - b), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(schedule.alpha_bar_prev[1:], schedule.alpha_bar[:-1])
    assert schedule.alpha_bar_prev[0] == 1.0 and schedule.posterior_variance[0] == 0.0
    pv = b * (1 - schedule.alpha_bar_prev) / (1 - schedule.alpha_bar)
    np.testing.assert_allclose(schedule.posterior_variance, pv, rtol=1e-14, atol=0)
    if schedule.T > 1:
        np.testing.assert_array_equal(schedule.posterior_log_variance_clipped[1:], np.log(pv[1:]))
        assert schedule.posterior_log_variance_clipped[0] == np.log(pv[1])
    np.testing.assert_array_equal(schedule.timestep_map, np.arange(schedule.T))


def test_schedule_tables_are_read_only():
    """A Schedule is frozen: its tables cannot be written in place."""
    schedule = S.cosine(10)
    with pytest.raises(ValueError):
        schedule.alpha_bar[0] = 0.5


@given(T=st.integers(21, 2000), rescale=st.booleans())
def test_linear_endpoints_are_exact(T, rescale):
    """linear(T): betas[0] == scale * 1e-4 and betas[-1] == scale * 0.02, scale = 1000 / T or 1."""
    scale = 1000.0 / T if rescale else 1.0
    schedule = S.linear(T, rescale=rescale)
    assert schedule.betas[0] == scale * 1e-4 and schedule.betas[-1] == scale * 0.02
    np.testing.assert_allclose(np.diff(schedule.betas), scale * (0.02 - 1e-4) / (T - 1), rtol=1e-9)


def test_linear_rescale_is_the_identity_at_T1000():
    """OpenAI's 1000 / T rescale changes nothing at T = 1000 (Ho et al.'s setting)."""
    np.testing.assert_array_equal(S.linear(1000).betas, S.linear(1000, rescale=False).betas)


@given(T=st.integers(1, 2000), s=st.sampled_from([0.0, 0.008, 0.05]), max_beta=st.sampled_from([0.5, 0.9, 0.999]))
def test_cosine_caps_only_betas_above_max_beta(T, s, max_beta):
    """cosine: beta_t = 1 - f(t+1)/f(t) where that is <= max_beta, and exactly max_beta elsewhere,
    with f(u) = cos((u/T + s) / (1 + s) * pi/2)^2 (Nichol & Dhariwal 2021, eq. 17)."""
    f = [math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2 for u in range(T + 1)]
    raw = np.array([1 - f[u + 1] / f[u] for u in range(T)])
    betas = S.cosine(T, s=s, max_beta=max_beta).betas
    capped = raw > max_beta
    # 1 - f(t+1)/f(t) cancels: both sides carry a few ulps of 1 in absolute error.
    np.testing.assert_allclose(betas[~capped], raw[~capped], rtol=1e-12, atol=1e-15)
    assert np.all(betas[capped] == max_beta)


def test_cosine_T1000_caps_only_the_last_step():
    """At T = 1000 with s = 0.008, only the final beta reaches the 0.999 cap."""
    betas = S.cosine(1000).betas
    assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999)


@given(T=st.integers(1, 1000), S_=st.integers(1, 1000), spacing=st.sampled_from(S.SPACINGS))
def test_every_grid_is_strictly_decreasing_with_S_distinct_steps_in_range(T, S_, spacing):
    """timesteps(T, S, spacing) has S distinct int64 entries in [0, T), strictly decreasing."""
    assume(S_ <= T)
    t = S.timesteps(T, S_, spacing)
    assert t.dtype == np.int64 and t.shape == (S_,)
    assert np.all(np.diff(t) < 0) and t[-1] >= 0 and t[0] < T


@given(T=st.integers(2, 1000), S_=st.integers(2, 1000))
def test_grid_endpoints_follow_their_spacing(T, S_):
    """leading and linspace end at 0; trailing and linspace start at T - 1."""
    assume(S_ <= T)
    assert S.timesteps(T, S_, "leading")[-1] == 0
    assert S.timesteps(T, S_, "trailing")[0] == T - 1
    linspace = S.timesteps(T, S_, "linspace")
    assert linspace[0] == T - 1 and linspace[-1] == 0


def test_known_grids_are_exact():
    """T = 1000, S = 10: the grids diffusers documents for its three spacings."""
    np.testing.assert_array_equal(S.timesteps(1000, 10, "leading"), np.arange(900, -1, -100))
    np.testing.assert_array_equal(S.timesteps(1000, 10, "trailing"), np.arange(999, 98, -100))
    np.testing.assert_array_equal(S.timesteps(1000, 10, "linspace"), np.arange(999, -1, -111))


def test_openai_section_strings_give_known_grids():
    """"ddim50" keeps range(0, 1000, 20); "10,10,3" on T = 100 splits [0, 100) into sections of
    34, 33, 33 steps and takes 10, 10, 3 from them at float strides 33/9, 32/9, 16 (worked by hand):
    0 4 7 11 15 18 22 26 29 33 | 34 38 41 45 48 52 55 59 62 66 | 67 83 99."""
    np.testing.assert_array_equal(S.timesteps(1000, spacing="ddim50"), np.arange(980, -1, -20))
    expected = [0, 4, 7, 11, 15, 18, 22, 26, 29, 33, 34, 38, 41, 45, 48, 52, 55, 59, 62, 66, 67, 83, 99]
    np.testing.assert_array_equal(S.timesteps(100, spacing="10,10,3"), expected[::-1])
    np.testing.assert_array_equal(S.timesteps(100, 23, "10,10,3"), expected[::-1])


@given(schedule=schedule_strategy(min_T=2, max_T=500, zero_terminal=True), data=st.data())
def test_respacing_keeps_alpha_bar_at_the_kept_steps(schedule, data):
    """respace(schedule, steps).alpha_bar == schedule.alpha_bar[sorted steps], and its timestep_map
    holds the original indices; respacing twice composes the maps."""
    steps = np.array(sorted(data.draw(st.sets(st.integers(0, schedule.T - 1), min_size=1))))
    respaced = S.respace(schedule, steps[::-1])
    np.testing.assert_allclose(respaced.alpha_bar, schedule.alpha_bar[steps], rtol=_roundtrip_rtol(respaced))
    np.testing.assert_array_equal(respaced.timestep_map, steps)
    inner = np.array(sorted(data.draw(st.sets(st.integers(0, respaced.T - 1), min_size=1))))
    twice = S.respace(respaced, inner)
    np.testing.assert_array_equal(twice.timestep_map, steps[inner])
    np.testing.assert_allclose(twice.alpha_bar, schedule.alpha_bar[steps[inner]],
                               rtol=_roundtrip_rtol(respaced) + _roundtrip_rtol(twice))


def _roundtrip_rtol(schedule):
    """Relative error bound of alpha_bar -> betas -> alpha_bar: each alpha_t = 1 - beta_t carries an
    absolute error of about one ulp of 1, i.e. a relative error of eps / alpha_t, and the cumulative
    product adds them up."""
    return 4 * np.finfo(np.float64).eps * np.sum(1.0 / schedule.alphas[schedule.alphas > 0])


def test_respacing_with_every_step_is_the_identity():
    """Keeping all T steps gives back the same betas."""
    schedule = S.cosine(100)
    np.testing.assert_allclose(S.respace(schedule, np.arange(100)).betas, schedule.betas, rtol=1e-12)


@given(schedule=schedule_strategy(min_T=2, max_T=1000))
def test_zero_terminal_snr_rescale_ends_at_zero_and_keeps_alpha_bar_0(schedule):
    """rescale_zero_terminal_snr: alpha_bar_{T-1} == 0 (the last beta is exactly 1), alpha_bar_0 is
    kept, and alpha_bar stays strictly decreasing (Lin et al. 2024, Alg. 1)."""
    z = S.rescale_zero_terminal_snr(schedule)
    assert z.alpha_bar[-1] == 0.0 and z.betas[-1] == 1.0
    np.testing.assert_allclose(z.alpha_bar[0], schedule.alpha_bar[0], rtol=1e-12)
    assert np.all(np.diff(z.alpha_bar) < 0) and np.all(z.betas[:-1] < 1)


@given(n=st.integers(2, 200), sigma_min=st.floats(1e-4, 1.0), ratio=st.floats(1.5, 1e5),
       rho=st.floats(1.0, 10.0))
def test_karras_sigmas_hit_both_ends_and_decrease(n, sigma_min, ratio, rho):
    """karras_sigmas: sigma_0 == sigma_max, sigma_{n-1} == sigma_min, strictly decreasing, and the
    rho-th roots are evenly spaced (Karras et al. 2022, eq. 5)."""
    sigma_max = sigma_min * ratio
    sigmas = S.karras_sigmas(n, sigma_min, sigma_max, rho)
    assert sigmas[0] == sigma_max and sigmas[-1] == sigma_min
    assert np.all(np.diff(sigmas) < 0)
    np.testing.assert_allclose(np.diff(sigmas ** (1 / rho)), (sigma_min ** (1 / rho) - sigma_max ** (1 / rho)) / (n - 1),
                               rtol=1e-7, atol=1e-12)


@given(schedule=schedule_strategy(max_T=1000))
def test_sigma_and_alpha_bar_convert_both_ways(schedule):
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) and alpha_bar = 1 / (1 + sigma^2) invert each other;
    snr = 1 / sigma^2."""
    sigma = schedule.sigmas
    np.testing.assert_allclose(S.alpha_bar_from_sigma(sigma), schedule.alpha_bar, rtol=1e-12)
    np.testing.assert_allclose(sigma**2 * schedule.snr, 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.linear(0), "T must be an integer >= 1"),
        (lambda: S.cosine(2.5), "T must be an integer >= 1"),
        (lambda: S.linear(10), "beta_end \\* 100 < 1"),
        (lambda: S.from_betas([0.1, 0.0, 0.2]), "betas must lie in \\(0, 1\\)"),
        (lambda: S.from_betas([0.1, 1.0, 0.2]), "betas must lie in \\(0, 1\\)"),
        (lambda: S.from_betas([0.1, np.nan]), "betas must lie in \\(0, 1\\)"),
        (lambda: S.from_betas([[0.1]]), "betas must be a non-empty 1-D array"),
        (lambda: S.from_alpha_bar([0.9, 0.95, 0.5]), "alpha_bar must be strictly decreasing"),
        (lambda: S.from_alpha_bar([1.0, 0.5]), "alpha_bar must be strictly decreasing"),
        (lambda: S.cosine(10, max_beta=1.0), "max_beta must lie in \\(0, 1\\)"),
        (lambda: S.by_name("quadratic", 10), "schedule must be one of"),
        (lambda: S.timesteps(100, 0), "S must be an integer in \\[1, 100\\]"),
        (lambda: S.timesteps(100, 101, "trailing"), "S must be an integer in \\[1, 100\\]"),
        (lambda: S.timesteps(100, 10, "uniform"), "spacing must be one of leading, trailing, linspace"),
        (lambda: S.timesteps(100, spacing="ddim30"), "no integer stride gives exactly 30"),
        (lambda: S.timesteps(100, spacing="10,x"), "'x' is not a positive integer"),
        (lambda: S.timesteps(10, spacing="9,9"), "section 0 has 5 steps, cannot take 9"),
        (lambda: S.timesteps(100, 5, "10,10"), "S must equal the 20 steps"),
        (lambda: S.respace(S.cosine(10), [3, 3]), "steps must be distinct integers in \\[0, 10\\)"),
        (lambda: S.respace(S.cosine(10), [10]), "steps must be distinct integers in \\[0, 10\\)"),
        (lambda: S.respace(S.cosine(10), [1.5]), "steps must be a non-empty 1-D integer array"),
        (lambda: S.karras_sigmas(1, 0.1, 10), "n must be an integer >= 2"),
        (lambda: S.karras_sigmas(5, 10, 0.1), "need 0 < sigma_min < sigma_max"),
        (lambda: S.rescale_zero_terminal_snr(S.cosine(1)), "T >= 2"),
    ],
)
def test_bad_arguments_raise_naming_the_argument_and_range(call, match):
    """Every invalid argument is refused with a ValueError that names it and what is allowed."""
    with pytest.raises(ValueError, match=match):
        call()
