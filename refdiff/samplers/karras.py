"""Sigma-space samplers: Euler and Heun (Karras et al. 2022, EDM, Alg. 2, with churn), Euler-ancestral
(diffusers' EulerAncestralDiscreteScheduler) and DPM-Solver++(2M) (Lu et al. 2022, Alg. 2).

They integrate the probability-flow ODE dx / dsigma = (x - D(x; sigma)) / sigma (EDM eq. 3 with s = 1) of
the sigma view of a discrete model's schedule, with the denoiser D and the noise-level conversions of
refdiff.samplers.sigmas. Every loop here takes and yields x in the **sigma scale** (x = x0 + sigma eps); at
sigma = 0 that is the data scale, so the final sample of a loop ending at sigma = 0 is x0. Start a loop from
x = sigmas[0] * noise (EDM, diffusers' ``init_noise_sigma`` with linspace / trailing spacing) or from
``to_sigma_scale(x_T, sigmas[0])`` with x_T ~ N(0, I) (the exact prior of a discrete model; diffusers' leading
spacing).

Schedules with zero terminal SNR (sigma = inf at t = T - 1) have no sigma-space form; use DDIM for them.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from refdiff.backend import Generator
from refdiff.diffusion import Parameterization
from refdiff.samplers.common import Model, SampleStep, check_finite, check_sample
from refdiff.samplers.sigmas import Denoiser, check_sigma_schedule, karras_denoiser, model_timesteps, sigma_to_t
from refdiff.schedules import Schedule


# ---------------------------------------------------------------------------------------------------------
# Steps: one update each, every input explicit (noise included). x is in the sigma scale.


def churn_gamma(sigma: float, n: int, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf) -> float:
    """gamma_i = min(S_churn / n, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0   (Karras et al. 2022, Alg. 2)"""
    return min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0


def _churn(x: Any, sigma: float, t: float | None, gamma: float, noise: Any, s_noise: float):
    """x_hat = x + sqrt(sigma_hat^2 - sigma^2) S_noise eps, sigma_hat = (1 + gamma) sigma   (Alg. 2, lines 5-6).

    Returns (x_hat, sigma_hat, t_hat); t_hat = None (derive it from sigma_hat) when gamma > 0.
    """
    if gamma <= 0:
        return x, sigma, t
    if noise is None:
        raise ValueError(f"noise is required when gamma > 0 (gamma={gamma!r}, sigma={sigma!r})")
    sigma_hat = (1.0 + gamma) * sigma
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise, sigma_hat, None


def euler_step(denoiser: Denoiser, x: Any, sigma: float, sigma_next: float, t: float | None = None,
               gamma: float = 0.0, noise: Any = None, s_noise: float = 1.0) -> tuple[Any, Any]:
    """One Euler step of the probability-flow ODE from sigma to sigma_next, after optional churn.

    Math: x_hat, sigma_hat = churn(x, sigma, gamma, noise)                   (Karras et al. 2022, Alg. 2, 5-6)
          d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat                                              (line 7)
          x_next = x_hat + (sigma_next - sigma_hat) d                                                (line 8)
    With gamma = 0 this is DDIM's eta = 0 update in the sigma scale: x_next = x0 + sigma_next eps_hat.

    t: the schedule step of sigma (None: from sigma); noise: like x, needed when gamma > 0.
    Returns (x_next, x0_hat), both like x.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)  # Python floats keep float32 arrays float32
    x_hat, sigma_hat, t_hat = _churn(x, sigma, t, gamma, noise, s_noise)
    x0 = denoiser(x_hat, sigma_hat, t_hat)
    d = (x_hat - x0) / sigma_hat
    return x_hat + (sigma_next - sigma_hat) * d, x0


def heun_step(denoiser: Denoiser, x: Any, sigma: float, sigma_next: float, t: float | None = None,
              t_next: float | None = None, gamma: float = 0.0, noise: Any = None,
              s_noise: float = 1.0) -> tuple[Any, Any]:
    """One step of Heun's second-order method (Karras et al. 2022, Alg. 2), after optional churn.

    Math: x_hat, sigma_hat = churn(x, sigma, gamma, noise)                                   (lines 5-6)
          d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat;  x_next = x_hat + (sigma_next - sigma_hat) d  (7-8)
          if sigma_next != 0:                                                                (line 9)
              d' = (x_next - D(x_next; sigma_next)) / sigma_next                            (line 10)
              x_next = x_hat + (sigma_next - sigma_hat) (d + d') / 2                         (line 11)
    t, t_next: schedule steps of sigma and sigma_next (None: from sigma). Returns (x_next, x0_hat) with x0_hat the
    first evaluation D(x_hat; sigma_hat).
    """
    sigma, sigma_next = float(sigma), float(sigma_next)  # Python floats keep float32 arrays float32
    x_hat, sigma_hat, t_hat = _churn(x, sigma, t, gamma, noise, s_noise)
    x0 = denoiser(x_hat, sigma_hat, t_hat)
    d = (x_hat - x0) / sigma_hat
    x_next = x_hat + (sigma_next - sigma_hat) * d
    if sigma_next > 0:  # the last step to sigma = 0 stays Euler: D(x; 0) is not defined for a discrete model
        d_next = (x_next - denoiser(x_next, sigma_next, t_next)) / sigma_next
        x_next = x_hat + (sigma_next - sigma_hat) * (0.5 * (d + d_next))
    return x_next, x0


def ancestral_sigmas(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next.

    Math: sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
          sigma_down = sqrt(sigma_next^2 - sigma_up^2) = sigma_next^2 / sigma
    A deterministic step to sigma_down plus fresh noise of std sigma_up lands on sigma_next
    (diffusers' EulerAncestralDiscreteScheduler; k-diffusion's with eta = 1).
    """
    sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    return sigma_next**2 / sigma, sigma_up


def euler_ancestral_step(denoiser: Denoiser, x: Any, sigma: float, sigma_next: float, t: float | None = None,
                         noise: Any = None) -> tuple[Any, Any]:
    """One Euler-ancestral step from sigma to sigma_next.

    Math: d = (x - D(x; sigma)) / sigma;  x_next = x + (sigma_down - sigma) d + sigma_up noise   (ancestral_sigmas)
    noise: like x, needed when sigma_next > 0. Returns (x_next, x0_hat).
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
    x0 = denoiser(x, sigma, t)
    x_next = x + (sigma_down - sigma) * ((x - x0) / sigma)
    if sigma_up > 0:
        if noise is None:
            raise ValueError(f"noise is required when sigma_next > 0 (sigma_next={sigma_next!r})")
        x_next = x_next + sigma_up * noise
    return x_next, x0


def dpmpp_2m_step(denoiser: Denoiser, x: Any, sigma: float, sigma_next: float, t: float | None = None,
                  x0_prev: Any = None, sigma_prev: float | None = None) -> tuple[Any, Any]:
    """One multistep DPM-Solver++(2M) step (Lu et al. 2022, Alg. 2, data prediction) in the sigma scale.

    Math: lambda = -log sigma (half the log-SNR), h = lambda_next - lambda = log(sigma / sigma_next);
          dividing Alg. 2's x_t-scale update by alpha_next gives
              x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) D_i         (e^{-h} = sigma_next / sigma)
          first order (x0_prev None, or sigma_next = 0):  D_i = x0_i                     (= DDIM, = Euler)
          second order: r = h_prev / h,  D_i = (1 + 1 / (2 r)) x0_i - 1 / (2 r) x0_{i-1}
    x0_prev, sigma_prev: the previous step's x0_hat and sigma. Returns (x_next, x0_hat) where x0_hat = x0_i.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    if x0_prev is not None and sigma_prev is None:
        raise ValueError("sigma_prev is required with x0_prev (the previous step's noise level), got None")
    x0 = denoiser(x, sigma, t)
    ratio = sigma_next / sigma  # e^{-h}
    D = x0
    if x0_prev is not None and sigma_next > 0:
        r = math.log(sigma_prev / sigma) / math.log(sigma / sigma_next)  # h_prev / h
        D = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    return ratio * x + (1.0 - ratio) * D, x0


# ---------------------------------------------------------------------------------------------------------
# Loops: validate their arguments, then return a generator yielding one SampleStep per update (x in the sigma
# scale), so bad arguments raise when the loop is created, as the other samplers' loops do.


def _grid(schedule: Schedule, x: Any, sigmas, timesteps, final_sigma: float) -> tuple[list, list]:
    """Validate a loop's grid: (n + 1,) sigmas with final_sigma appended, and the (n,) schedule steps."""
    check_sample(x)
    check_sigma_schedule(schedule)
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] < 1 or not np.all(np.isfinite(s)) or not np.all(s > 0) or np.any(np.diff(s) >= 0):
        raise ValueError(f"sigmas must be a non-empty 1-D array of finite positive, strictly decreasing noise "
                         f"levels, got {sigmas!r}")
    final_sigma = check_finite("final_sigma", final_sigma, low=0.0)
    if not final_sigma < s[-1]:
        raise ValueError(f"final_sigma must lie in [0, {s[-1]!r}) (below the last of sigmas), got {final_sigma!r}")
    if timesteps is None:
        t = sigma_to_t(schedule, s)
    else:
        t = np.asarray(timesteps, dtype=np.float64)
        if t.shape != s.shape or not np.all((t >= 0) & (t <= schedule.T - 1)):
            raise ValueError(f"timesteps must be None or {s.shape[0]} steps in [0, {schedule.T - 1}] matching "
                             f"sigmas, got {timesteps!r}")
    # Python floats: a NumPy float64 scalar would upcast float32 arrays (NEP 50), a Python float does not.
    return [float(v) for v in np.append(s, final_sigma)], [float(v) for v in t]


def _check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, generator) -> None:
    s_churn = check_finite("s_churn", s_churn, low=0.0)
    check_finite("s_tmin", s_tmin, low=0.0)
    check_finite("s_noise", s_noise, low=0.0)
    if isinstance(s_tmax, bool) or not isinstance(s_tmax, (int, float)) or not s_tmax >= s_tmin:
        raise ValueError(f"s_tmax must be a number >= s_tmin = {s_tmin!r} (inf allowed), got {s_tmax!r}")
    if s_churn > 0 and generator is None:
        raise ValueError(f"generator is required when s_churn > 0, got s_churn={s_churn!r} and no generator")


def _edm_loop(heun: bool, denoiser: Denoiser, schedule: Schedule, x: Any, sigmas, timesteps, final_sigma: float,
              s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
              generator: Generator | None) -> Iterator[SampleStep]:
    """Karras et al. 2022, Alg. 2 over a grid: heun_step, or euler_step when not ``heun``."""
    s, t = _grid(schedule, x, sigmas, timesteps, final_sigma)
    _check_churn(s_churn, s_tmin, s_tmax, s_noise, generator)
    n = len(t)

    def chain(x):
        for i in range(n):
            gamma = churn_gamma(s[i], n, s_churn, s_tmin, s_tmax)
            noise = generator.normal(x.shape, like=x) if gamma > 0 else None
            if heun:
                t_next = t[i + 1] if i + 1 < n else None  # final_sigma is off the grid: its t comes from sigma
                x, x0 = heun_step(denoiser, x, s[i], s[i + 1], t[i], t_next, gamma, noise, s_noise)
            else:
                x, x0 = euler_step(denoiser, x, s[i], s[i + 1], t[i], gamma, noise, s_noise)
            yield SampleStep(n - 1 - i, model_timesteps(schedule, t[i], x), x, x0)

    return chain(x)


def euler_loop(model: Model, schedule: Schedule, x: Any, sigmas, y: Any = None, timesteps=None,
               final_sigma: float = 0.0, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
               s_noise: float = 1.0, generator: Generator | None = None, param: Parameterization = Parameterization(),
               clip_x0: float | None = None, threshold: float | None = None) -> Iterator[SampleStep]:
    """Euler sampling (Karras et al. 2022, Alg. 2 without line 9-11's correction) from sigmas[0] to final_sigma.

    x: (N, C, ...) in the sigma scale at sigmas[0]; sigmas: (n,) decreasing positive levels (``karras_grid``,
    ``schedule_grid``); timesteps: (n,) schedule steps fed to the model, default ``sigma_to_t(sigmas)``;
    final_sigma: the level after the last step, 0 (EDM; the result is x0) or in (0, sigmas[-1]).
    Churn (stochastic when s_churn > 0, needs a generator): gamma_i = min(s_churn / n, sqrt(2) - 1) on levels in
    [s_tmin, s_tmax]; s_noise scales the added noise. The model is then fed the step of sigma_hat = (1 + gamma)
    sigma, clamped to T - 1: keep (1 + gamma) s_tmax within the schedule's sigma_{T-1}. param, clip_x0,
    threshold: ``karras_denoiser``'s. Yields SampleStep(k = n - 1 - i, t of level i, x at level i + 1 in the
    sigma scale, x0_hat).
    """
    denoiser = karras_denoiser(model, schedule, y, param, clip_x0, threshold)
    return _edm_loop(False, denoiser, schedule, x, sigmas, timesteps, final_sigma, s_churn, s_tmin, s_tmax,
                     s_noise, generator)


def heun_loop(model: Model, schedule: Schedule, x: Any, sigmas, y: Any = None, timesteps=None,
              final_sigma: float = 0.0, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
              s_noise: float = 1.0, generator: Generator | None = None, param: Parameterization = Parameterization(),
              clip_x0: float | None = None, threshold: float | None = None) -> Iterator[SampleStep]:
    """Heun sampling (Karras et al. 2022, Alg. 2): as ``euler_loop`` with the second-order correction on every
    step whose target level is not 0 (2n - 1 model evaluations to final_sigma = 0, 2n otherwise)."""
    denoiser = karras_denoiser(model, schedule, y, param, clip_x0, threshold)
    return _edm_loop(True, denoiser, schedule, x, sigmas, timesteps, final_sigma, s_churn, s_tmin, s_tmax,
                     s_noise, generator)


def euler_ancestral_loop(model: Model, schedule: Schedule, x: Any, sigmas, generator: Generator, y: Any = None,
                         timesteps=None, final_sigma: float = 0.0, param: Parameterization = Parameterization(),
                         clip_x0: float | None = None, threshold: float | None = None) -> Iterator[SampleStep]:
    """Euler-ancestral sampling (diffusers' EulerAncestralDiscreteScheduler) from sigmas[0] to final_sigma.

    Each step moves deterministically to sigma_down and adds fresh noise of std sigma_up (``ancestral_sigmas``);
    no noise on a step to sigma = 0. Arguments as ``euler_loop``. Yields a SampleStep per update.
    """
    s, t = _grid(schedule, x, sigmas, timesteps, final_sigma)
    if generator is None:
        raise ValueError("generator is required for ancestral sampling, got None")
    denoiser = karras_denoiser(model, schedule, y, param, clip_x0, threshold)
    n = len(t)

    def chain(x):
        for i in range(n):
            noise = generator.normal(x.shape, like=x) if s[i + 1] > 0 else None
            x, x0 = euler_ancestral_step(denoiser, x, s[i], s[i + 1], t[i], noise)
            yield SampleStep(n - 1 - i, model_timesteps(schedule, t[i], x), x, x0)

    return chain(x)


def dpmpp_2m_loop(model: Model, schedule: Schedule, x: Any, sigmas, y: Any = None, timesteps=None,
                  final_sigma: float = 0.0, lower_order_final: bool = True,
                  param: Parameterization = Parameterization(), clip_x0: float | None = None,
                  threshold: float | None = None) -> Iterator[SampleStep]:
    """DPM-Solver++(2M) sampling (Lu et al. 2022, Alg. 2) from sigmas[0] to final_sigma.

    The first step is first order (no previous x0); so is the last when lower_order_final (diffusers' default,
    which it applies below 15 steps) or when final_sigma = 0 (h = inf there). diffusers' test configuration is
    lower_order_final=False, final_sigma = schedule.sigmas[0] ("final_sigmas_type=sigma_min").
    Arguments as ``euler_loop``. Yields SampleStep(k, t, x in the sigma scale, x0_hat) per update.
    """
    s, t = _grid(schedule, x, sigmas, timesteps, final_sigma)
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"lower_order_final must be a bool, got {lower_order_final!r}")
    denoiser = karras_denoiser(model, schedule, y, param, clip_x0, threshold)
    n = len(t)

    def chain(x):
        x0_prev = sigma_prev = None
        for i in range(n):
            first_order = i == 0 or (lower_order_final and i == n - 1)
            x, x0 = dpmpp_2m_step(denoiser, x, s[i], s[i + 1], t[i], None if first_order else x0_prev, sigma_prev)
            x0_prev, sigma_prev = x0, s[i]
            yield SampleStep(n - 1 - i, model_timesteps(schedule, t[i], x), x, x0)

    return chain(x)
