"""Editing with a trained model: inpainting by replacement with RePaint's resampling (Lugmayr et al.
2022, Alg. 1), and SDEdit (Meng et al. 2022): noise an input part way, then denoise it.

Levels follow refdiff.schedules: x at level k has alpha_bar[k]; level -1 is the data. A "down" move at
index k is one ``ddpm_step`` from level k to k - 1; an "up" move at index k is one forward transition
``q_step`` from level k - 1 to k.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from refdiff.backend import Generator, namespace
from refdiff.diffusion import Parameterization, check_options, q_sample, q_step
from refdiff.samplers.common import Model, SampleStep, check_finite, check_sample, model_t, step_t
from refdiff.samplers.ddim import ddim_loop
from refdiff.samplers.ddpm import ddpm_loop, ddpm_step
from refdiff.schedules import Schedule

SDEDIT_SAMPLERS = ("ddim", "ddpm")


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def repaint_moves(T: int, jump_length: int = 1, resample: int = 1) -> list[tuple[int, str]]:
    """RePaint's schedule of moves as (k, "down") and (k, "up") pairs (Lugmayr et al. 2022, Sec. 4.2).

    Going down from level T - 1, each time the chain reaches a jump level k = 0, j, 2j, ... (those
    with k + j <= T - 1), the first r - 1 times it goes back up j levels and comes down again; so
    every block of j steps above a jump level is traversed r times, and the chain ends with the move
    (0, "down") at level -1. The count of moves is T + 2 (r - 1) j * len(range(0, T - j, j)).
    This is the level sequence of RePaint's ``get_schedule_jump`` (with n_sample = 1): for T = 3,
    j = 1, r = 2 the levels are 2, 1, 2, 1, 0, 1, 0, -1.

    T: number of levels; jump_length j >= 1; resample r >= 1 (r = 1: T plain down moves).
    """
    T, j, r = _check_count("T", T), _check_count("jump_length", jump_length), _check_count("resample", resample)
    jumps_left = {k: r - 1 for k in range(0, T - j, j)}
    moves, level = [], T - 1
    while level >= 0:
        moves.append((level, "down"))
        level -= 1
        if jumps_left.get(level, 0) > 0:
            jumps_left[level] -= 1
            for _ in range(j):
                level += 1
                moves.append((level, "up"))
    return moves


def _check_mask(mask: Any, x: Any):
    """mask as a bool array broadcastable against x (True = known), after checking values in {0, 1}."""
    xp = namespace(x, mask)
    try:
        shape = np.broadcast_shapes(tuple(mask.shape), tuple(x.shape))
    except ValueError:
        shape = None
    if shape != tuple(x.shape):
        raise ValueError(f"mask must have a shape that broadcasts against x's {tuple(x.shape)}, got {mask.shape}")
    if xp.isdtype(mask.dtype, "bool"):
        return mask
    if bool(xp.any((mask != 0) & (mask != 1))):  # one device-to-host read
        raise ValueError("mask must hold only 0 (unknown) and 1 (known) values")
    return mask == 1


def inpaint_loop(model: Model, schedule: Schedule, x: Any, known: Any, mask: Any, generator: Generator,
                 y: Any = None, jump_length: int = 1, resample: int = 1, param: Parameterization = Parameterization(),
                 clip_x0: float | None = None, threshold: float | None = None) -> Iterator[SampleStep]:
    """Inpainting by replacement, with RePaint's resampling (Lugmayr et al. 2022, Alg. 1).

    Math, each down move at index k (level k -> k - 1):
          x_{k-1}^unknown = ddpm_step(model(x_k, t_k), x_k, k, noise)                 (Ho et al., Alg. 2)
          x_{k-1}^known   = q_sample(known, k - 1, fresh eps); = known itself at level -1
          x_{k-1}         = mask * x_{k-1}^known + (1 - mask) * x_{k-1}^unknown       (Alg. 1, line 8)
    each up move at index k: x_k = q_step(x_{k-1}, k, noise)   (eq. 2; Alg. 1, line 10)
    in the order of ``repaint_moves(T, jump_length, resample)``. jump_length = resample = 1 is the
    plain replacement method (Song et al. 2021, score SDE paper, App. I.2; Lugmayr et al., Sec. 4.1).

    x: (N, C, ...) start at level T - 1 (N(0, I)); known: like x, the data (read only where mask = 1);
    mask: 0/1 (or bool) array broadcastable against x, 1 = known; generator draws, per down move
    with k > 0, the step noise then the known region's noise, and per up move the forward noise.
    param, clip_x0, threshold: as ``ddpm_step``. Yields a SampleStep per down move (the up moves show
    as a repeated k); the last one's x equals ``known`` exactly where mask = 1.
    """
    check_sample(x)
    check_options(param, clip_x0, threshold)
    if known.shape != x.shape or known.dtype != x.dtype:
        raise ValueError(f"known must match x's shape {x.shape} and dtype {x.dtype}, "
                         f"got {known.shape}, {known.dtype}")
    is_known = _check_mask(mask, x)
    moves = repaint_moves(schedule.T, jump_length, resample)

    def down(output, x, k, noise):
        return ddpm_step(schedule, output, x, k, noise, None, param, clip_x0, threshold)

    return _inpaint(model, schedule, x, known, is_known, generator, y, moves, down)


def _inpaint(model: Model, schedule: Schedule, x: Any, known: Any, is_known: Any, generator: Generator, y: Any,
             moves: list[tuple[int, str]], down: Callable) -> Iterator[SampleStep]:
    """The moves of ``inpaint_loop``: ``down(model(x, t, y), x, k, noise)`` is one ddpm_step."""
    xp = namespace(x)
    for k, direction in moves:
        if direction == "up":
            x = q_step(schedule, x, step_t(k, x), generator.normal(x.shape, like=x))
            continue
        t = model_t(schedule, k, x)
        noise = generator.normal(x.shape, like=x) if k > 0 else None
        x, x0 = down(model(x, t, y), x, k, noise)
        if k > 0:
            known_level = q_sample(schedule, known, step_t(k - 1, x), generator.normal(x.shape, like=x))
        else:
            known_level = known  # level -1 is the data itself
        x = xp.where(is_known, known_level, x)
        yield SampleStep(k, t, x, x0)


def sdedit_start(T: int, strength: float) -> int:
    """The level SDEdit noises to: k0 = round(strength * T) - 1, rounding half up; -1 means no step.

    SDEdit runs k0 + 1 = round(strength * T) denoising steps, so strength 1 starts from level T - 1
    (a full run) and strength < 0.5 / T returns the input. diffusers' img2img truncates instead
    (int(strength * S) steps of S); the two agree whenever strength * T is an integer, except where
    the float product falls just below it (0.29 * 100 = 28.999...: 28 steps there, 29 here).
    """
    strength = check_finite("strength", strength, low=0.0)
    if strength > 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength!r}")
    return math.floor(strength * T + 0.5) - 1


def sdedit_loop(model: Model, schedule: Schedule, x0: Any, strength: float, generator: Generator,
                sampler: str = "ddim", y: Any = None, eta: float = 0.0, cond_fn: Callable | None = None,
                param: Parameterization = Parameterization(), clip_x0: float | None = None,
                threshold: float | None = None) -> Iterator[SampleStep]:
    """SDEdit: perturb x0 to level k0, then sample back to x0 (Meng et al. 2022, Alg. 1).

    Math: x_{k0} = sqrt(alpha_bar_{k0}) x0 + sqrt(1 - alpha_bar_{k0}) eps     (Ho et al. 2020, eq. 4)
          then the DDIM or DDPM loop from level k0 (``start=k0``) down to level -1,
          with k0 = sdedit_start(T, strength) (k0 + 1 = round(strength * T) steps).

    x0: (N, C, ...) the input to edit; strength in [0, 1]: 0 returns x0 itself (the loop yields one
    SampleStep(k=-1, t=None, x=x0, x0=x0) so that final() works), 1 starts from level T - 1;
    generator draws eps first, then the sampler's noise; sampler: "ddim" or "ddpm"; eta: DDIM's (0
    with "ddpm"); cond_fn, param, clip_x0, threshold: the loop's. Yields a SampleStep per update.
    """
    check_sample(x0)
    check_options(param, clip_x0, threshold)
    k0 = sdedit_start(schedule.T, strength)
    if sampler not in SDEDIT_SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SDEDIT_SAMPLERS)}, got {sampler!r}")
    if sampler == "ddpm" and eta != 0.0:
        raise ValueError(f"eta is DDIM's stochasticity: it must be 0 with sampler='ddpm', got {eta!r}")
    if k0 < 0:
        return iter([SampleStep(-1, None, x0, x0)])
    xk = q_sample(schedule, x0, step_t(k0, x0), generator.normal(x0.shape, like=x0))
    if sampler == "ddpm":
        return ddpm_loop(model, schedule, xk, generator, y, cond_fn, start=k0, param=param, clip_x0=clip_x0,
                         threshold=threshold)
    return ddim_loop(model, schedule, xk, y, eta, generator, cond_fn, start=k0, param=param, clip_x0=clip_x0,
                     threshold=threshold)
