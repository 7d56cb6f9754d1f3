"""What every sampler shares: the model protocol, the steps a loop yields, and running a loop.

A model is any callable ``model(xt, t, y=None) -> output``: xt (N, C, ...) on some backend, t (N,)
the step indices the model was trained with (the schedule's ``timestep_map``; the sigma-space samplers
of refdiff.samplers.karras and .sigmas also pass float t between steps, in x's dtype), y (N,) labels or None;
the output is eps, x0 or v (N, C, ...), optionally followed by C variance channels (N, 2C, ...).
Sampling loops are generators (as in improved DDPM's ``p_sample_loop_progressive``): they yield one
``SampleStep`` per update so a reader can watch the chain; ``final`` runs one to its end.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, NamedTuple

from refdiff.backend import device, namespace
from refdiff.schedules import Schedule

Model = Callable[..., Any]


class SampleStep(NamedTuple):
    """One update of a sampling loop."""

    k: int    # index into the (respaced) schedule of the step just taken: x went from level k to k - 1
    t: Any    # (N,) step indices the model was fed (schedule.timestep_map[k])
    x: Any    # (N, ...) the sample after the update
    x0: Any   # (N, ...) the predicted x0 the update used


def model_t(schedule: Schedule, k: int, x: Any):
    """(N,) int64 array of the model's step index at schedule step k, on x's device."""
    xp = namespace(x)
    return xp.full((x.shape[0],), int(schedule.timestep_map[k]), dtype=xp.int64, device=device(x))


def step_t(k: int, x: Any):
    """(N,) int64 array holding the schedule index k, on x's device (what the diffusion math takes)."""
    xp = namespace(x)
    return xp.full((x.shape[0],), k, dtype=xp.int64, device=device(x))


def reverse_chain(model: Model, schedule: Schedule, x: Any, y: Any, cond_fn: Callable | None, start: int,
                  step: Callable) -> Iterator[SampleStep]:
    """The loop every reverse sampler shares, for k = start, ..., 0:

        output = model(x, timestep_map[k], y);  g = cond_fn(x, t, y) or None;  x, x0 = step(output, x, k, g)

    yielding SampleStep(k, t, x, x0) after each update. Loops validate their arguments and then return
    this generator, so bad arguments raise when the loop is created, not at its first step.
    """
    for k in range(start, -1, -1):
        t = model_t(schedule, k, x)
        output = model(x, t, y)
        cond_grad = None if cond_fn is None else cond_fn(x, t, y)
        x, x0 = step(output, x, k, cond_grad)
        yield SampleStep(k, t, x, x0)


def final(loop: Iterator[SampleStep]):
    """Run a sampling loop to its end and return the last sample."""
    step = None
    for step in loop:
        pass
    if step is None:
        raise ValueError("loop must yield at least one step, got an empty loop")
    return step.x


def check_start(schedule: Schedule, start: int | None) -> int:
    """The first schedule index a loop updates: ``start`` in [0, T), or T - 1 when None."""
    if start is None:
        return schedule.T - 1
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < schedule.T:
        raise ValueError(f"start must be an integer in [0, {schedule.T}), got {start!r}")
    return start


def check_sample(x: Any) -> None:
    """Raise unless x is a floating (N, ...) array with a batch axis."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating") or x.ndim < 2:
        raise ValueError(f"x must be a real floating (N, C, ...) array, got shape {x.shape} and dtype {x.dtype}")


def check_finite(name: str, value: float, low: float = -math.inf) -> float:
    """Raise unless value is a finite real number >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        bound = "" if low == -math.inf else f" >= {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)
