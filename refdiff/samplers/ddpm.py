"""Ancestral sampling of DDPM (Ho et al. 2020, Alg. 2), with learned variances (Nichol & Dhariwal
2021) and classifier guidance of the mean (Dhariwal & Nichol 2021, Alg. 1)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from refdiff.backend import Generator, namespace
from refdiff.diffusion import Parameterization, check_options, p_mean_variance
from refdiff.samplers.common import Model, SampleStep, check_sample, check_start, reverse_chain, step_t
from refdiff.schedules import Schedule


def ddpm_step(schedule: Schedule, model_output: Any, xt: Any, k: int, noise: Any, cond_grad: Any = None,
              param: Parameterization = Parameterization(), clip_x0: float | None = None,
              threshold: float | None = None) -> tuple[Any, Any]:
    """One ancestral step x_k -> x_{k-1} ~ p(x_{k-1} | x_k).

    Math: x_{k-1} = mu + exp(0.5 log var) * noise, no noise at k = 0     (Ho et al. 2020, Alg. 2)
          with classifier guidance: mu <- mu + var * cond_grad            (Dhariwal & Nichol 2021, Alg. 1)

    model_output: the model's output at (xt, timestep_map[k]); xt: (N, C, ...); k: schedule index;
    noise: standard normal like xt (ignored at k = 0, may be None there); cond_grad: s * grad_x
    log p(y | x_k) like xt, or None; param, clip_x0, threshold: ``p_mean_variance``'s.
    Returns (x_{k-1}, predicted x0).
    """
    out = p_mean_variance(schedule, model_output, xt, step_t(k, xt), param, clip_x0, threshold)
    mean = out.mean if cond_grad is None else out.mean + out.variance * cond_grad
    if k == 0:
        return mean, out.x0
    xp = namespace(xt)
    return mean + xp.exp(0.5 * out.log_variance) * noise, out.x0


def ddpm_loop(model: Model, schedule: Schedule, x: Any, generator: Generator, y: Any = None,
              cond_fn: Callable | None = None, start: int | None = None, param: Parameterization = Parameterization(),
              clip_x0: float | None = None, threshold: float | None = None) -> Iterator[SampleStep]:
    """Ancestral sampling from x (at level ``start``, default T - 1) down to a sample of x0.

    model: model(xt, t, y) (see refdiff.samplers.common); schedule: the (possibly respaced) schedule;
    x: (N, C, ...) start point, N(0, I) for a full run; generator: draws every step's noise;
    cond_fn: cond_fn(xt, t, y) -> s * grad_x log p(y | xt), or None; param, clip_x0, threshold: as
    ``ddpm_step``. Yields a SampleStep per update.
    """
    check_sample(x)
    check_options(param, clip_x0, threshold)
    k0 = check_start(schedule, start)

    def step(output, x, k, cond_grad):
        noise = generator.normal(x.shape, like=x) if k > 0 else None
        return ddpm_step(schedule, output, x, k, noise, cond_grad, param, clip_x0, threshold)

    return reverse_chain(model, schedule, x, y, cond_fn, k0, step)
