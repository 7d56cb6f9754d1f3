"""DDIM: the non-Markovian reverse process with stochasticity eta, and its deterministic inversion
(Song et al. 2021, eqs. 12 and 16; classifier guidance of eps as in Dhariwal & Nichol 2021, Alg. 2).

Run on a respaced schedule (``respace(schedule, timesteps(T, S, spacing))``) for S-step sampling:
alpha_bar and alpha_bar_prev of the respaced schedule are the original ones at consecutive kept steps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from refdiff.backend import Generator
from refdiff.diffusion import Parameterization, check_options, p_mean_variance, predict_eps_from_x0
from refdiff.samplers.common import (Model, SampleStep, check_finite, check_sample, check_start, model_t,
                                     reverse_chain, step_t)
from refdiff.schedules import Schedule


def ddim_sigma(alpha_bar: float, alpha_bar_prev: float, eta: float) -> float:
    """sigma_k(eta) = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * sqrt(1 - alpha_bar / alpha_bar_prev)

    (Song et al. 2021, eq. 16): eta = 1 is DDPM's posterior standard deviation, eta = 0 deterministic.
    """
    return eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))


def ddim_step(schedule: Schedule, model_output: Any, xt: Any, k: int, noise: Any = None, eta: float = 0.0,
              cond_grad: Any = None, rederive_eps: bool = True, alpha_bar_prev: float | None = None,
              param: Parameterization = Parameterization(), clip_x0: float | None = None,
              threshold: float | None = None) -> tuple[Any, Any]:
    """One DDIM update x_k -> x_{k-1}.

    Math: x_{k-1} = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma noise
                                                                            (Song et al. 2021, eq. 12)
    eps_hat is re-derived from the (clipped) x0_hat when rederive_eps (OpenAI), else the model's own
    (diffusers' default); classifier guidance sets eps_hat <- eps_hat - sqrt(1 - alpha_bar) cond_grad
    and x0_hat from it (Dhariwal & Nichol 2021, Alg. 2).

    model_output: the model's output at (xt, timestep_map[k]); noise: like xt, needed when eta > 0;
    alpha_bar_prev: overrides schedule.alpha_bar_prev[k] (diffusers' set_alpha_to_one=False at k = 0).
    param, clip_x0, threshold: ``p_mean_variance``'s (the variance only splits off variance channels).
    Returns (x_{k-1}, x0_hat).
    """
    t = step_t(k, xt)
    out = p_mean_variance(schedule, model_output, xt, t, param, clip_x0, threshold)
    x0 = out.x0
    eps = predict_eps_from_x0(schedule, xt, t, x0) if rederive_eps else out.eps
    ab = float(schedule.alpha_bar[k])
    if cond_grad is not None:
        # eps <- eps - sqrt(1 - ab) g moves x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) by (1 - ab) / sqrt(ab) g;
        # shifting x0 directly keeps its clipping and is exact for g = 0.
        eps = eps - math.sqrt(1.0 - ab) * cond_grad
        x0 = x0 + (1.0 - ab) / math.sqrt(ab) * cond_grad
    ab_prev = float(schedule.alpha_bar_prev[k] if alpha_bar_prev is None else alpha_bar_prev)
    sigma = ddim_sigma(ab, ab_prev, eta)
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev - sigma**2) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError(f"noise is required when eta > 0 (eta={eta!r}, step k={k})")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


PREV_STEPS = ("grid", "stride")


def ddim_alpha_bar_prev(schedule: Schedule, k: int, final_alpha_bar: float = 1.0, prev_step: str = "grid",
                        full_schedule: Schedule | None = None) -> float:
    """The alpha_bar that DDIM's step from grid step k lands on.

    prev_step="grid": the grid's next step, alpha_bar_prev[k] = alpha_bar[k - 1] of the respaced
    schedule, and final_alpha_bar after the last step (k = 0).
    prev_step="stride": the full schedule's alpha_bar at t - T // S, with t = timestep_map[k], T the
    full schedule's length and S the grid's, whatever the grid's spacing; final_alpha_bar where
    t - T // S < 0 (the rule of diffusers' DDIMScheduler.step).
    """
    if prev_step == "grid":
        return final_alpha_bar if k == 0 else float(schedule.alpha_bar_prev[k])
    t_prev = int(schedule.timestep_map[k]) - full_schedule.T // schedule.T
    return final_alpha_bar if t_prev < 0 else float(full_schedule.alpha_bar[t_prev])


def _check_prev_step(schedule: Schedule, prev_step: str, full_schedule: Schedule | None) -> None:
    """Raise unless prev_step is a known rule and full_schedule is given exactly when the rule needs it."""
    if prev_step not in PREV_STEPS:
        raise ValueError(f"prev_step must be one of {', '.join(map(repr, PREV_STEPS))}, got {prev_step!r}")
    if prev_step == "grid":
        if full_schedule is not None:
            raise ValueError("full_schedule is used only with prev_step='stride', got a full_schedule "
                             "with prev_step='grid'")
        return
    if not isinstance(full_schedule, Schedule):
        raise ValueError(f"full_schedule is required when prev_step='stride': the schedule the grid was respaced "
                         f"from, got {full_schedule!r}")
    T, tmap = full_schedule.T, schedule.timestep_map
    # the order of the tests matters: indexing by tmap is safe once tmap[-1] < T
    if (not np.array_equal(full_schedule.timestep_map, np.arange(T)) or tmap[-1] >= T
            or not np.allclose(full_schedule.alpha_bar[tmap], schedule.alpha_bar, rtol=1e-9, atol=0.0)):
        raise ValueError(f"full_schedule must be the un-respaced schedule that the grid {tmap[::-1].tolist()} "
                         f"was respaced from (identity timestep_map, the same alpha_bar at those steps), "
                         f"got a schedule of T={T} that is not")


def ddim_loop(model: Model, schedule: Schedule, x: Any, y: Any = None, eta: float = 0.0,
              generator: Generator | None = None, cond_fn: Callable | None = None, start: int | None = None,
              final_alpha_bar: float = 1.0, prev_step: str = "grid", full_schedule: Schedule | None = None,
              rederive_eps: bool = True, param: Parameterization = Parameterization(),
              clip_x0: float | None = None, threshold: float | None = None) -> Iterator[SampleStep]:
    """DDIM sampling from x at level ``start`` (default T - 1) down to x0.

    eta >= 0 (0: deterministic, needs no generator); final_alpha_bar: the alpha_bar the last step
    lands on, 1 (OpenAI; diffusers' set_alpha_to_one=True) or the full schedule's alpha_bar[0]
    (diffusers' set_alpha_to_one=False). prev_step: where each step lands (ddim_alpha_bar_prev):
    "grid" (the grid's next step; the default) or "stride" (t - T // S on full_schedule, the
    schedule the grid was respaced from; diffusers). Noise is drawn at exactly the steps whose
    sigma > 0. rederive_eps, param, clip_x0, threshold: as ``ddim_step``. Yields a SampleStep per update.
    """
    check_sample(x)
    check_options(param, clip_x0, threshold)
    k0 = check_start(schedule, start)
    eta = check_finite("eta", eta, low=0.0)
    final_alpha_bar = check_finite("final_alpha_bar", final_alpha_bar, low=0.0)
    _check_prev_step(schedule, prev_step, full_schedule)
    if eta > 0 and generator is None:
        raise ValueError(f"generator is required when eta > 0, got eta={eta!r} and no generator")

    def step(output, x, k, cond_grad):
        ab_prev = ddim_alpha_bar_prev(schedule, k, final_alpha_bar, prev_step, full_schedule)
        # sigma = 0 at eta = 0 and at a last step landing on 1 or where it starts; other steps need noise
        sigma = ddim_sigma(float(schedule.alpha_bar[k]), ab_prev, eta)            # eq. 16
        noise = generator.normal(x.shape, like=x) if sigma > 0 else None
        return ddim_step(schedule, output, x, k, noise, eta, cond_grad, rederive_eps, alpha_bar_prev=ab_prev,
                         param=param, clip_x0=clip_x0, threshold=threshold)

    return reverse_chain(model, schedule, x, y, cond_fn, k0, step)


def ddim_invert_step(schedule: Schedule, model_output: Any, x: Any, k: int,
                     param: Parameterization = Parameterization(), clip_x0: float | None = None,
                     threshold: float | None = None) -> tuple[Any, Any]:
    """One deterministic inversion step x_{k-1} -> x_k, the mirror of ddim_step with eta = 0.

    Math: x_k = sqrt(alpha_bar_k) x0_hat + sqrt(1 - alpha_bar_k) eps_hat,
          with (x0_hat, eps_hat) predicted at the start point (x_{k-1}, k - 1), as sampling predicts
          at its start point (x_k, k). At k = 0 the start point is the data, read at level 0 (as
          OpenAI's ddim_reverse_sample does; alpha_bar_0 ~ 1).

    model_output: the model's output at (x, timestep_map[max(k - 1, 0)]); param, clip_x0, threshold:
    ``p_mean_variance``'s. Returns (x_k, x0_hat).
    """
    level = max(k - 1, 0)
    out = p_mean_variance(schedule, model_output, x, step_t(level, x), param, clip_x0, threshold)
    ab = float(schedule.alpha_bar[k])
    return math.sqrt(ab) * out.x0 + math.sqrt(1.0 - ab) * out.eps, out.x0


def ddim_invert_loop(model: Model, schedule: Schedule, x0: Any, y: Any = None, end: int | None = None,
                     param: Parameterization = Parameterization(), clip_x0: float | None = None,
                     threshold: float | None = None) -> Iterator[SampleStep]:
    """Deterministic DDIM inversion of data x0 up to level ``end`` (default T - 1): the x_T that
    ddim_loop with eta = 0 maps back to (approximately) x0. param, clip_x0, threshold: as
    ``ddim_invert_step``. Yields a SampleStep per update."""
    check_sample(x0)
    check_options(param, clip_x0, threshold)
    k_end = check_start(schedule, end)

    def step(output, x, k):
        return ddim_invert_step(schedule, output, x, k, param, clip_x0, threshold)

    return _invert_chain(model, schedule, x0, y, k_end, step)


def _invert_chain(model: Model, schedule: Schedule, x: Any, y: Any, k_end: int,
                  step: Callable) -> Iterator[SampleStep]:
    """Levels 0, ..., k_end of the inversion, one SampleStep each (the generator behind ddim_invert_loop):

        output = model(x, timestep_map[max(k - 1, 0)], y);  x, x0 = step(output, x, k)
    """
    for k in range(0, k_end + 1):
        t = model_t(schedule, max(k - 1, 0), x)
        x, x0_hat = step(model(x, t, y), x, k)
        yield SampleStep(k, t, x, x0_hat)
