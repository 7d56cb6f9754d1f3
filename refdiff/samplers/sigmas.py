"""Sigma space: a discrete-time model's schedule seen as EDM's noise levels, and the denoiser D(x; sigma).

A discrete model trained on a Schedule sees x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
Dividing by sqrt(alpha_bar_t) gives the variance-exploding form of EDM (Karras et al. 2022, eq. 1 ff.):

    x = x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps,    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),

whose probability-flow ODE is dx / dsigma = (x - D(x; sigma)) / sigma with the denoiser D(x; sigma) = E[x0 | x]
(EDM eq. 3 with s = 1). ``karras_denoiser`` builds D from a model: it feeds the model x_t = x / sqrt(1 + sigma^2)
at the timestep of sigma and converts the output (eps, x0 or v) to x0 (``x0_from_output``: refdiff.diffusion's
identities written in sigma). The samplers of refdiff.samplers.karras step along a grid of these levels
(``karras_grid``, ``schedule_grid``).

Timesteps of noise levels (host NumPy, float64, as diffusers computes them):
  * a sigma of the schedule's own grid has its integer step t, and the model is fed int64 t;
  * any other sigma (Karras grids, churned sigmas) gets a fractional t interpolated in log sigma between its two
    neighbouring steps (``sigma_to_t``, diffusers' ``_sigma_to_t``), and the model is fed a float t;
  * a fractional timestep grid (diffusers' Euler with linspace spacing: 1099, 976.9, ...) gets its sigma
    interpolated linearly in sigma (``t_to_sigma``, diffusers' ``np.interp(timesteps, arange(T), sigmas)``).
  The two interpolations agree at integer t and differ slightly between steps; both are diffusers' conventions.
Model protocol: t may be a float (N,) array in x's dtype (fractional steps); a model that only accepts integers
can be used on the schedule's own grid (``schedule_grid``) without churn.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from refdiff.backend import device, namespace
from refdiff.diffusion import Parameterization, check_options, dynamic_threshold
from refdiff.samplers.common import Model
from refdiff.schedules import Schedule, karras_sigmas, timesteps

# A denoiser D(x, sigma, t) -> x0_hat: x (N, ...) in the sigma scale, sigma a positive float, t the (possibly
# fractional) schedule step of sigma or None to derive it from sigma.
Denoiser = Callable[..., Any]


# ---------------------------------------------------------------------------------------------------------
# Scales and noise-level conversions


def to_sigma_scale(xt: Any, sigma: float):
    """x = x_t / sqrt(alpha_bar) = x_t * sqrt(1 + sigma^2): from the model's scale to the sigma scale."""
    return xt * math.sqrt(1.0 + sigma * sigma)


def to_xt_scale(x: Any, sigma: float):
    """x_t = x * sqrt(alpha_bar) = x / sqrt(1 + sigma^2): from the sigma scale to the model's scale."""
    return x / math.sqrt(1.0 + sigma * sigma)


def check_sigma_schedule(schedule: Schedule) -> np.ndarray:
    """The schedule's (T,) sigmas, refusing zero terminal SNR (sigma = inf has no sigma-space form)."""
    sigmas = schedule.sigmas
    if not np.all(np.isfinite(sigmas)) or not sigmas[0] > 0:
        raise ValueError("schedule must have finite sigmas in (0, inf) (no zero terminal SNR) for sigma-space "
                         f"samplers, got sigma range [{sigmas[0]!r}, {sigmas[-1]!r}]")
    return sigmas


def sigma_to_t(schedule: Schedule, sigma) -> np.ndarray:
    """Fractional schedule step(s) of noise level(s) sigma, by linear interpolation in log sigma.

    Math: t = k + (log sigma - log sigma_k) / (log sigma_{k+1} - log sigma_k) for sigma_k <= sigma <= sigma_{k+1},
          clamped to [0, T - 1] outside the schedule's range (diffusers' ``_sigma_to_t``)
    Exact integer t for sigma on the schedule's grid. sigma: float or array (host). Returns float64 like sigma.
    """
    sigmas = check_sigma_schedule(schedule)
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    return np.interp(log_sigma, np.log(sigmas), np.arange(schedule.T, dtype=np.float64))


def t_to_sigma(schedule: Schedule, t) -> np.ndarray:
    """Noise level(s) at fractional schedule step(s) t, by linear interpolation in sigma.

    Math: sigma(t) = (1 - w) sigma_k + w sigma_{k+1},  k = floor(t), w = t - k
    (diffusers' ``np.interp(timesteps, arange(T), sigmas)``). t: float or array in [0, T - 1] (host).
    """
    sigmas = check_sigma_schedule(schedule)
    return np.interp(np.asarray(t, dtype=np.float64), np.arange(schedule.T, dtype=np.float64), sigmas)


def model_timesteps(schedule: Schedule, t: float, x: Any):
    """(N,) array of the step the model is fed at (possibly fractional) schedule step t, on x's device.

    Integral t: int64 ``timestep_map[t]``, what a discrete model was trained on. Fractional t: ``timestep_map``
    interpolated linearly (t itself for an unrespaced schedule), in x's floating dtype.
    """
    xp = namespace(x)
    N = x.shape[0]
    if float(t) == round(t):
        return xp.full((N,), int(schedule.timestep_map[int(round(t))]), dtype=xp.int64, device=device(x))
    mapped = float(np.interp(t, np.arange(schedule.T), schedule.timestep_map))
    return xp.full((N,), mapped, dtype=x.dtype, device=device(x))


# ---------------------------------------------------------------------------------------------------------
# Sigma grids (host NumPy float64, decreasing; the loops append the final sigma)


def _check_steps(steps, high: int | None = None) -> int:
    bad = isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1
    if bad or (high is not None and steps > high):
        allowed = "an integer >= 1" if high is None else f"an integer in [1, {high}]"
        raise ValueError(f"steps must be {allowed}, got {steps!r}")
    return int(steps)


def karras_grid(schedule: Schedule, steps: int, rho: float = 7.0) -> np.ndarray:
    """(steps,) Karras sigmas from the schedule's sigma_max = sigma_{T-1} down to sigma_min = sigma_0.

    Math: sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    (Karras et al. 2022, eq. 5; ``refdiff.schedules.karras_sigmas``); one step is [sigma_max] (as diffusers).
    """
    steps = _check_steps(steps)
    sigmas = check_sigma_schedule(schedule)
    if steps == 1:
        return sigmas[-1:].copy()
    return karras_sigmas(steps, float(sigmas[0]), float(sigmas[-1]), rho)


def schedule_grid(schedule: Schedule, steps: int, spacing: str = "leading") -> np.ndarray:
    """(steps,) sigmas of the schedule's own steps ``timesteps(T, steps, spacing)``, decreasing.

    ``sigma_to_t`` maps them back to their integer steps exactly, so a loop feeds the model integer t.
    """
    steps = _check_steps(steps, schedule.T) if spacing in ("leading", "trailing", "linspace") else steps
    return check_sigma_schedule(schedule)[timesteps(schedule.T, steps, spacing)]


# ---------------------------------------------------------------------------------------------------------
# The denoiser D(x; sigma) of a discrete model


def x0_from_output(out: Any, x: Any, sigma: float, param: Parameterization = Parameterization()):
    """x0_hat from a model output (of kind param.prediction) at x_t = x / sqrt(1 + sigma^2), for x in the sigma scale.

    Math: with a = sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2) and b = sqrt(1 - alpha_bar) = sigma a,
          eps: x0 = (x_t - b eps) / a = x - sigma eps                  (refdiff.diffusion.predict_x0_from_eps)
          x0:  x0 = out
          v:   x0 = a x_t - b v = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v     (predict_x0_from_v)
    The same identities as refdiff.diffusion's, written in sigma instead of gathered alpha_bar tables, so they hold
    between the schedule's steps and at sigmas whose alpha_bar rounds to 1 (sigma < 1e-8) or 0.
    out, x: (N, C, ...). Returns x0_hat like x.
    """
    if param.prediction == "eps":
        return x - sigma * out
    if param.prediction == "x0":
        return out
    return x / (1.0 + sigma * sigma) - (sigma / math.sqrt(1.0 + sigma * sigma)) * out


def karras_denoiser(model: Model, schedule: Schedule, y: Any = None, param: Parameterization = Parameterization(),
                    clip_x0: float | None = None, threshold: float | None = None) -> Denoiser:
    """The denoiser D(x, sigma, t=None) -> x0_hat of a model trained on ``schedule``.

    Math: x_t = x / sqrt(1 + sigma^2);  out = model(x_t, t, y);  x0_hat = x0_from_output(out, x, sigma)
    t is the schedule step fed to the model (``model_timesteps``), ``sigma_to_t(schedule, sigma)`` when None.
    param: what the output means; a learned variance only splits off the model's C variance channels
    (N, 2C, ...), which sigma-space samplers do not use; clip_x0 clips x0_hat to [-clip_x0, clip_x0];
    threshold applies dynamic thresholding at that quantile (``refdiff.diffusion.dynamic_threshold``).
    x: (N, C, ...) in the sigma scale. Returns x0_hat like x.
    """
    check_sigma_schedule(schedule)
    check_options(param, clip_x0, threshold)

    def denoise(x: Any, sigma: float, t: float | None = None):
        t = float(sigma_to_t(schedule, sigma)) if t is None else float(t)
        out = model(to_xt_scale(x, sigma), model_timesteps(schedule, t, x), y)
        expected = param.output_shape(tuple(x.shape))
        if tuple(out.shape) != expected or out.dtype != x.dtype:
            raise ValueError(f"model_output must have shape {expected} and dtype {x.dtype} for "
                             f"variance={param.variance!r}, got {tuple(out.shape)}, {out.dtype}")
        if param.learned:
            out = out[:, : x.shape[1], ...]  # the prediction channels; the variance channels are unused
        x0 = x0_from_output(out, x, float(sigma), param)
        if threshold is not None:
            return dynamic_threshold(x0, threshold)
        if clip_x0 is not None:
            return namespace(x0).clip(x0, -clip_x0, clip_x0)
        return x0

    return denoise
