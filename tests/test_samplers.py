"""Specification of the DDPM and DDIM samplers, checked against exact optimal denoisers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import GAUSSIAN, MIXTURE, GaussianMixtureDenoiser, diffusers_dummy_model, diffusers_dummy_sample
from refdiff import schedules as S
from refdiff.diffusion import Parameterization
from refdiff.backend import Generator, to_numpy
from refdiff.samplers import (ddim_alpha_bar_prev, ddim_invert_loop, ddim_loop, ddim_step, ddpm_loop, ddpm_step,
                              final)
from refdiff.samplers.common import model_t
from support import assert_close, assert_moments_match, assert_same_array_kind

N_SAMPLES = 4000


def _start(backend, n=N_SAMPLES, seed=0, dims=2):
    """x_T ~ N(0, I) of shape (n, dims) on the backend, float64, and the generator that drew it."""
    generator = Generator(seed)
    return generator.normal((n, dims), like=backend.asarray(np.zeros(1))), generator


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_samples_have_the_gaussian_data_moments(backend, variance):
    """DDPM ancestral sampling with the exact denoiser of N(mu, diag(s^2)) data, T = 1000 cosine steps,
    gives samples whose mean, std and correlation match the data (5 standard errors, n = 4000)."""
    schedule = S.cosine(1000)
    x, generator = _start(backend)
    model = GaussianMixtureDenoiser(schedule, **GAUSSIAN)
    samples = to_numpy(final(ddpm_loop(model, schedule, x, generator, param=Parameterization(variance=variance))))
    assert_moments_match(samples, GAUSSIAN["means"][0], GAUSSIAN["stds"][0])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_samples_have_the_gaussian_data_moments(backend, prediction):
    """DDIM (eta = 0, 200 leading steps of T = 1000) with the exact eps / x0 / v model of Gaussian data
    gives the data's mean, std and correlation (5 standard errors, n = 4000)."""
    schedule = S.respace(S.cosine(1000), S.timesteps(1000, 200, "leading"))
    x, _ = _start(backend)
    model = GaussianMixtureDenoiser(S.cosine(1000), **GAUSSIAN, prediction=prediction)
    samples = to_numpy(final(ddim_loop(model, schedule, x, param=Parameterization(prediction))))
    assert_moments_match(samples, GAUSSIAN["means"][0], GAUSSIAN["stds"][0])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1"])
def test_mixture_samples_have_the_mixture_weights_and_component_moments(backend, sampler):
    """On a two-component mixture, the fraction of samples nearest each component matches its weight
    (5 binomial standard errors) and each component's samples have its mean and std."""
    full = S.cosine(1000)
    x, generator = _start(backend, seed=1)
    model = GaussianMixtureDenoiser(full, **MIXTURE)
    if sampler == "ddpm":
        samples = to_numpy(final(ddpm_loop(model, full, x, generator)))
    else:
        schedule = S.respace(full, S.timesteps(1000, 250, "leading"))
        samples = to_numpy(final(ddim_loop(model, schedule, x, eta=1.0, generator=generator)))
    side = samples[:, 0] > 0  # components sit at x = -2 and x = +2, 4 to 6 stds apart
    w = MIXTURE["weights"][1]
    assert abs(side.mean() - w) < 5 * math.sqrt(w * (1 - w) / side.size)
    for k, members in enumerate([samples[~side], samples[side]]):
        assert_moments_match(members, MIXTURE["means"][k], MIXTURE["stds"][k])


def test_ddpm_fixed_small_equals_ddim_eta1_on_the_full_grid(backend):
    """DDIM with eta = 1 on every step is DDPM with the posterior variance beta~_t (Song et al. 2021,
    Sec. 4.1): fed the same noise, the two chains give the same samples to rounding."""
    schedule = S.linear(200)
    model = GaussianMixtureDenoiser(schedule, **MIXTURE)
    x, _ = _start(backend, n=64)
    ddpm = final(ddpm_loop(model, schedule, x, Generator(7), param=Parameterization(variance="fixed_small")))
    ddim = final(ddim_loop(model, schedule, x, eta=1.0, generator=Generator(7)))
    assert_close(ddim, to_numpy(ddpm), scale=100)


def test_ddim_with_eta0_is_deterministic(backend):
    """DDIM with eta = 0 draws no noise: two runs from the same x_T are identical, generator or not."""
    schedule = S.respace(S.linear(1000), S.timesteps(1000, 20, "trailing"))
    model = GaussianMixtureDenoiser(S.linear(1000), **MIXTURE)
    x, _ = _start(backend, n=32)
    first = final(ddim_loop(model, schedule, x))
    second = final(ddim_loop(model, schedule, x, generator=Generator(3)))
    np.testing.assert_array_equal(to_numpy(first), to_numpy(second))


def test_ddim_inversion_then_sampling_reconstructs_x0_converging_at_first_order(backend):
    """Inverting data with DDIM and sampling back reconstructs it; both are (at least) first-order ODE
    steps, so doubling the number of steps cuts the reconstruction error by a factor <= 0.65 (first
    order gives 0.5), down to below 0.02 at 400 steps."""
    full = S.cosine(1000)
    model = GaussianMixtureDenoiser(full, **GAUSSIAN)
    x0 = backend.asarray(model.sample(256, seed=5))
    errors = []
    for steps in (100, 200, 400):
        schedule = S.respace(full, S.timesteps(1000, steps, "leading"))
        xT = final(ddim_invert_loop(model, schedule, x0))
        errors.append(float(np.max(np.abs(to_numpy(final(ddim_loop(model, schedule, xT))) - to_numpy(x0)))))
    ratios = [errors[i + 1] / errors[i] for i in range(2)]
    assert errors[-1] < 0.02 and all(r < 0.65 for r in ratios), (errors, ratios)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "prediction, beta_start, set_alpha_to_one, abs_sum, abs_mean",
    [("eps", 1e-4, True, 172.0067, 0.223967), ("v", 1e-4, True, 52.5302, 0.0684),
     ("eps", 0.01, True, 149.8295, 0.1951), ("eps", 0.01, False, 149.0784, 0.1941)],
)
def test_ddim_reproduces_diffusers_published_numbers(backend, dtype, prediction, beta_start, set_alpha_to_one,
                                                     abs_sum, abs_mean):
    """DDIM configured as diffusers' DDIMScheduler test (T = 1000 linear betas beta_start..0.02 without
    rescaling, 10 leading steps, eta = 0, x0 clipped to [-1, 1], the model's own eps, the dummy model
    and sample) gives the published sum and mean of |x| (diffusers tests/schedulers, DDIM full loop)."""
    full = S.linear(1000, beta_start=beta_start, beta_end=0.02, rescale=False)
    schedule = S.respace(full, S.timesteps(1000, 10, "leading"))
    final_alpha_bar = 1.0 if set_alpha_to_one else float(full.alpha_bar[0])
    x = final(ddim_loop(diffusers_dummy_model, schedule, diffusers_dummy_sample(backend, dtype),
                        param=Parameterization(prediction), clip_x0=1.0, rederive_eps=False,
                        final_alpha_bar=final_alpha_bar))
    result = np.abs(to_numpy(x))
    assert abs(result.sum() - abs_sum) < 1e-3 and abs(result.mean() - abs_mean) < 1e-4


@settings(max_examples=10)
@given(k=st.integers(0, 49), seed=st.integers(0, 1000))
def test_steps_return_the_input_library_device_and_dtype(backend, k, seed):
    """ddpm_step and ddim_step keep x's library, device and dtype, and add no noise at k = 0."""
    schedule = S.cosine(50)
    x = Generator(seed).normal((3, 2), like=backend.asarray(np.zeros(1), dtype=backend.dtype("float32")))
    noise = Generator(seed + 1).normal((3, 2), like=x)
    for step in (ddpm_step(schedule, x, x, k, noise), ddim_step(schedule, x, x, k, noise, eta=0.5)):
        for out in step:
            assert_same_array_kind(out, x)
    if k == 0:
        nan = noise * float("nan")
        assert np.all(np.isfinite(to_numpy(ddpm_step(schedule, x, x, 0, nan)[0])))


def test_bad_arguments_raise_naming_the_argument(backend):
    """Negative or non-finite eta, eta > 0 without a generator, a start outside [0, T), a model output of
    the wrong shape and a 1-D sample are refused with the argument's name."""
    schedule = S.cosine(10)
    model = GaussianMixtureDenoiser(schedule, **GAUSSIAN)
    x, generator = _start(backend, n=4)
    cases = [
        (lambda: ddim_loop(model, schedule, x, eta=-0.1), "eta must be a finite number >= 0"),
        (lambda: ddim_loop(model, schedule, x, eta=float("nan")), "eta must be a finite number"),
        (lambda: ddim_loop(model, schedule, x, eta=0.5), "generator is required when eta > 0"),
        (lambda: ddpm_loop(model, schedule, x, generator, start=10), r"start must be an integer in \[0, 10\)"),
        (lambda: ddim_loop(model, schedule, x, param=Parameterization(variance="learned_range")),
         "model_output must have shape"),
        (lambda: ddpm_loop(model, schedule, x[:, 0], generator), r"x must be a real floating \(N, C, ...\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            final(call())


class CountingGenerator(Generator):
    """A Generator that counts its normal draws."""

    def __init__(self, seed):
        super().__init__(seed)
        self.draws = 0

    def normal(self, shape, like=None, dtype=None):
        self.draws += 1
        return super().normal(shape, like=like, dtype=dtype)


def _ddim_by_hand(model, schedule, x, alpha_bar_prev, eta, generator):
    """DDIM step by step with alpha_bar_prev[k] passed by hand and noise drawn at every step (its last
    draw, at k = 0, is unused when sigma_0 = 0): the recipe that the loop's switches replace."""
    for k in range(schedule.T - 1, -1, -1):
        noise = generator.normal(x.shape, like=x)
        output = model(x, model_t(schedule, k, x))
        x, _ = ddim_step(schedule, output, x, k, noise, eta, alpha_bar_prev=alpha_bar_prev[k])
    return x


@pytest.mark.parametrize("spacing, draws", [("trailing", 10), ("leading", 9)])
def test_ddim_with_eta_draws_noise_at_the_last_step_exactly_when_its_sigma_is_positive(backend, spacing, draws):
    """With eta > 0 the loop draws noise at exactly the steps whose sigma > 0. Landing on final_alpha_bar =
    alpha_bar_0 < 1 (diffusers' set_alpha_to_one=False), a trailing grid's last step starts at t = 99,
    so sigma_0 > 0 and all S = 10 steps draw; a leading grid's starts at t = 0 and lands where it starts
    (sigma_0 = 0, 9 draws); landing on 1, sigma_0 = 0 (9 draws). The samples equal DDIM run by hand
    with alpha_bar_prev passed at every step."""
    full = S.linear(1000, rescale=False)
    schedule = S.respace(full, S.timesteps(1000, 10, spacing))
    model = GaussianMixtureDenoiser(full, **MIXTURE)
    x, _ = _start(backend, n=16)
    for final_alpha_bar, expected_draws in ((float(full.alpha_bar[0]), draws), (1.0, 9)):
        generator = CountingGenerator(3)
        sample = final(ddim_loop(model, schedule, x, eta=0.5, generator=generator, final_alpha_bar=final_alpha_bar))
        alpha_bar_prev = [final_alpha_bar, *schedule.alpha_bar[:-1]]  # the grid's next step, by hand
        expected = _ddim_by_hand(model, schedule, x, alpha_bar_prev, 0.5, Generator(3))
        assert generator.draws == expected_draws
        np.testing.assert_array_equal(to_numpy(sample), to_numpy(expected))


def test_ddim_stride_lands_on_t_minus_T_over_S_worked_by_hand():
    """T = 10, S = 3 (T // S = 3). prev_step="grid" lands on the grid's next step, prev_step="stride" on
    t - 3 of the full schedule, or on final_alpha_bar once t - 3 < 0:
      trailing [9, 6, 2]:  grid 9 -> 6, 6 -> 2, 2 -> final;  stride 9 -> 6, 6 -> 3, 2 -> -1 (final)
      linspace [9, 4, 0]:  grid 9 -> 4, 4 -> 0, 0 -> final;  stride 9 -> 6, 4 -> 1, 0 -> -3 (final)
    and T = 10, S = 6 (T // S = 1), trailing [9, 7, 6, 4, 2, 1]: stride lands on 8, 6, 5, 3, 1 and 0,
    so its last step lands on alpha_bar_0, not on final_alpha_bar."""
    full = S.linear(10, rescale=False)
    ab = full.alpha_bar  # the full schedule's table; expected values are its entries, read off by hand
    cases = [  # (S, spacing, grid, alpha_bar_prev per step under "grid", under "stride"), final_alpha_bar = 1
        (3, "trailing", [9, 6, 2], [ab[6], ab[2], 1.0], [ab[6], ab[3], 1.0]),
        (3, "linspace", [9, 4, 0], [ab[4], ab[0], 1.0], [ab[6], ab[1], 1.0]),
        (6, "trailing", [9, 7, 6, 4, 2, 1], [ab[7], ab[6], ab[4], ab[2], ab[1], 1.0],
         [ab[8], ab[6], ab[5], ab[3], ab[1], ab[0]]),
    ]
    for steps, spacing, grid, by_grid, by_stride in cases:
        assert S.timesteps(10, steps, spacing).tolist() == grid
        schedule = S.respace(full, grid)
        for i, k in enumerate(range(steps - 1, -1, -1)):  # grid step k holds t = grid[i]
            assert math.isclose(ddim_alpha_bar_prev(schedule, k), by_grid[i], rel_tol=1e-14)
            assert ddim_alpha_bar_prev(schedule, k, 1.0, "stride", full) == by_stride[i]


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_loop_with_stride_equals_alpha_bar_prev_passed_by_hand(backend, eta):
    """ddim_loop(prev_step="stride", full_schedule=full) on T = 10, S = 3 trailing, landing last on
    alpha_bar_0 (diffusers' set_alpha_to_one=False), equals DDIM run by hand with alpha_bar_prev
    [ab_0, ab_3, ab_6] at k = 0, 1, 2 (t = 2, 6, 9), and differs from the default prev_step="grid"."""
    full = S.linear(10, rescale=False)
    schedule = S.respace(full, S.timesteps(10, 3, "trailing"))
    ab = full.alpha_bar
    model = GaussianMixtureDenoiser(full, **MIXTURE)
    x, _ = _start(backend, n=16)
    options = dict(eta=eta, final_alpha_bar=float(ab[0]))
    stride = final(ddim_loop(model, schedule, x, generator=Generator(2), prev_step="stride", full_schedule=full,
                             **options))
    expected = _ddim_by_hand(model, schedule, x, [ab[0], ab[3], ab[6]], eta, Generator(2))
    np.testing.assert_array_equal(to_numpy(stride), to_numpy(expected))
    grid = final(ddim_loop(model, schedule, x, generator=Generator(2), **options))
    assert np.max(np.abs(to_numpy(grid) - to_numpy(stride))) > 1e-3


@settings(max_examples=40)
@given(T=st.integers(2, 300), data=st.data())
def test_ddim_prev_step_rules_differ_exactly_where_the_grid_gaps_are_not_T_over_S(T, data):
    """ddim_alpha_bar_prev under "stride" equals "grid" at every step (to the rounding of respacing) on
    every leading grid and on trailing grids with T % S == 0; on trailing grids with T % S != 0 and on
    linspace grids with 1 < S < T it differs at some step."""
    steps = data.draw(st.integers(1, T), label="S")
    full = S.linear(T, beta_start=1e-4, beta_end=0.02, rescale=False)
    same = {"leading": True, "trailing": T % steps == 0, "linspace": steps in (1, T)}
    for spacing, expected in same.items():
        schedule = S.respace(full, S.timesteps(T, steps, spacing))
        agree = all(math.isclose(ddim_alpha_bar_prev(schedule, k, 0.5),
                                 ddim_alpha_bar_prev(schedule, k, 0.5, "stride", full), rel_tol=1e-12)
                    for k in range(steps))
        assert agree == expected, (spacing, T, steps)


def test_bad_prev_step_arguments_raise_naming_the_argument(backend):
    """An unknown prev_step, "stride" without full_schedule, a full_schedule with "grid", and a
    full_schedule the grid was not respaced from are refused with the argument's name."""
    full = S.linear(100, rescale=False)
    schedule = S.respace(full, S.timesteps(100, 7, "trailing"))
    model = GaussianMixtureDenoiser(full, **GAUSSIAN)
    x, _ = _start(backend, n=4)
    cases = [
        (dict(prev_step="diffusers"), "prev_step must be one of 'grid', 'stride'"),
        (dict(prev_step="stride"), "full_schedule is required when prev_step='stride'"),
        (dict(full_schedule=full), "full_schedule is used only with prev_step='stride'"),
        (dict(prev_step="stride", full_schedule=S.cosine(100)), "full_schedule must be the un-respaced schedule"),
        (dict(prev_step="stride", full_schedule=S.linear(50, rescale=False)), "full_schedule must be the un-resp"),
        (dict(prev_step="stride", full_schedule=schedule), "full_schedule must be the un-respaced schedule"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ddim_loop(model, schedule, x, **kwargs)
