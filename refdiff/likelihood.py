"""Likelihood terms of the variational bound, in nats and in bits per dimension.

KL divergences of Gaussians, the discretized Gaussian decoder p(x0 | x_1) of Ho et al. 2020
(Sec. 3.3, eq. 13), the prior term KL(q(x_T | x0) || N(0, I)) and the per-step terms L_{t-1} of the
bound (eq. 5), reported in bits/dim as in improved DDPM (Nichol & Dhariwal 2021, Sec. 2.3 and 3),
and the full bound of any model callable over all T steps (improved DDPM's ``calc_bpd_loop``).
Pure math on arrays of any Array API library.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from refdiff.backend import Generator, asarray, device, erf, namespace
from refdiff.diffusion import p_mean_variance, q_mean_variance, q_posterior, q_sample
from refdiff.schedules import Schedule

# Probabilities are floored at this value before their log, so an empty bin costs at most
# -log(1e-12) = 27.6 nats instead of inf (the floor improved DDPM uses).
MIN_PROB = 1e-12


def normal_kl(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.

    Math: 0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))
    computed as 0.5 * (expm1(d) - d + ...) with d = logvar1 - logvar2: exactly 0 for equal
    Gaussians and never negative from rounding (expm1(d) >= d), unlike the sum as written.

    Arguments broadcast; any of them may be a Python float, at least one must be an array.
    """
    arrays = [a for a in (mean1, logvar1, mean2, logvar2) if not isinstance(a, (int, float))]
    if not arrays:
        raise TypeError("normal_kl needs at least one array argument, got only Python scalars")
    xp = namespace(*arrays)
    d = logvar1 - logvar2
    if isinstance(d, (int, float)):
        d = asarray(d, like=arrays[0], dtype=arrays[0].dtype)
    precision2 = xp.exp(-logvar2) if not isinstance(logvar2, (int, float)) else math.exp(-logvar2)
    return 0.5 * (xp.expm1(d) - d + (mean1 - mean2) ** 2 * precision2)


def approx_standard_normal_cdf(x: Any):
    """The tanh approximation of the standard normal CDF that improved DDPM uses.

    Math: Phi(x) ~= 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))   (Page 1977)
    Its absolute error is below 2e-4 everywhere (tests check 1e-3).
    """
    xp = namespace(x)
    return 0.5 * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def standard_normal_cdf(x: Any):
    """The exact standard normal CDF, Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))."""
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


CDFS = {"approx": approx_standard_normal_cdf, "exact": standard_normal_cdf}


def discretized_gaussian_log_likelihood(x: Any, mean: Any, log_scale: Any, levels: int = 256,
                                        cdf: str = "approx"):
    """log p(x) for data on ``levels`` evenly spaced values in [-1, 1] under N(mean, exp(log_scale)^2).

    Math: p(x) = Phi((x + h - mean) / s) - Phi((x - h - mean) / s),  h = 1 / (levels - 1),
          with the lowest bin extended to -inf and the highest to +inf    (Ho et al. 2020, eq. 13)

    x: (N, ...) data on the grid; mean, log_scale broadcast against x. ``cdf`` is "approx" (the tanh
    form improved DDPM uses) or "exact". Returns log-probabilities like x, in nats.
    """
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    if not isinstance(cdf, str) or cdf not in CDFS:
        raise ValueError(f"cdf must be one of {', '.join(CDFS)}, got {cdf!r}")
    xp = namespace(x)
    Phi = CDFS[cdf]
    h = 1.0 / (levels - 1)  # half the bin width 2 / (levels - 1)
    centered = x - mean
    inv_s = xp.exp(-log_scale)
    cdf_plus = Phi(inv_s * (centered + h))
    cdf_min = Phi(inv_s * (centered - h))
    log_cdf_plus = xp.log(xp.maximum(cdf_plus, xp.full_like(cdf_plus, MIN_PROB)))          # lowest bin
    log_one_minus_cdf_min = xp.log(xp.maximum(1.0 - cdf_min, xp.full_like(cdf_min, MIN_PROB)))  # highest
    log_delta = xp.log(xp.maximum(cdf_plus - cdf_min, xp.full_like(cdf_min, MIN_PROB)))    # inner bins
    return xp.where(x < -1.0 + h, log_cdf_plus, xp.where(x > 1.0 - h, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: Any):
    """Mean over every axis but the first: (N, ...) -> (N,)."""
    xp = namespace(x)
    return xp.mean(x, axis=tuple(range(1, x.ndim)))


def prior_bpd(schedule: Schedule, x0: Any):
    """The prior term L_T = KL(q(x_{T-1} | x0) || N(0, I)) in bits/dim (Ho et al. 2020, eq. 5).

    x0: (N, ...). Returns (N,) in x0's dtype. Independent of the model; near 0 for a good schedule.
    """
    xp = namespace(x0)
    t = xp.full((x0.shape[0],), schedule.T - 1, dtype=xp.int64, device=device(x0))
    mean, _, log_variance = q_mean_variance(schedule, x0, t)
    return _mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


DECODERS = ("discretized", "continuous")


def vlb_term_bpd(schedule: Schedule, x0: Any, xt: Any, t: Any, mean: Any, log_variance: Any,
                 levels: int = 256, cdf: str = "approx", decoder: str = "discretized"):
    """One term of the variational bound in bits/dim, given a model's N(mean, exp(log_variance)).

    In code steps t (the papers' step t + 1, see docs/notation.md):
      t > 0:  KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))    the papers' L_t    (Ho et al. 2020, eq. 5)
      t = 0:  -log p(x0 | x_t), the papers' L_0: the discretized Gaussian decoder (eq. 13) for data on
              ``levels`` values, or the Gaussian density N(x0; mean, var) for continuous data

    x0, xt, mean: (N, ...); t: (N,); log_variance broadcasts against x0. Returns (N,).
    """
    _check_decoder(decoder)
    xp = namespace(x0, xt, t)
    true_mean, _, true_log_variance = q_posterior(schedule, x0, xt, t)
    kl = _mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance))
    if decoder == "discretized":
        log_p = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance, levels, cdf)
    else:
        log_p = gaussian_log_likelihood(x0, mean, 0.5 * log_variance)
    return xp.where(t == 0, -_mean_flat(log_p), kl) / math.log(2.0)


def _check_decoder(decoder: str) -> None:
    if not isinstance(decoder, str) or decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")


def gaussian_log_likelihood(x: Any, mean: Any, log_scale: Any):
    """log N(x; mean, exp(log_scale)^2), elementwise, in nats: the decoder for continuous data.

    Math: log p(x) = -0.5 log(2 pi) - log_scale - 0.5 ((x - mean) / exp(log_scale))^2

    x: (N, ...); mean, log_scale broadcast against x. Returns log-densities like x.
    """
    xp = namespace(x)
    z = (x - mean) * xp.exp(-log_scale)
    return -0.5 * math.log(2.0 * math.pi) - log_scale - 0.5 * z * z


class BitsPerDim(NamedTuple):
    """The variational bound of a batch, in bits/dim, term by term (improved DDPM's ``calc_bpd_loop``)."""

    total: Any    # (N,) prior + sum of terms: an upper bound on -log2 p(x0) / D
    prior: Any    # (N,) L_T = KL(q(x_{T-1} | x0) || N(0, I)), independent of the model
    terms: Any    # (N, T) terms[:, k] = L_k of schedule step k; terms[:, 0] is the decoder -log p(x0 | x_0)
    x0_mse: Any   # (N, T) mean over dims of (x0_hat - x0)^2 at each step
    eps_mse: Any  # (N, T) mean over dims of (eps_hat - eps)^2 at each step


def vlb_step(model: Callable, schedule: Schedule, x0: Any, k: int, eps: Any, y: Any = None,
             decoder: str = "discretized", levels: int = 256, cdf: str = "approx", **options):
    """The bound's term L_k for one step k of the schedule, with the noise passed in.

    Math: x_k = sqrt(alpha_bar_k) x0 + sqrt(1 - alpha_bar_k) eps            (Ho et al. 2020, eq. 4)
          p(x_{k-1} | x_k) = N(mean, var) from model(x_k, timestep_map[k], y)   (eqs. 1, 11)
          L_k = KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) for k > 0, -log p(x0 | x_0) for k = 0

    x0, eps: (N, C, ...); k: schedule index in [0, T). ``options`` go to ``p_mean_variance``
    (prediction, variance, clip_x0, threshold, convention). Returns (L_k, x0_mse, eps_mse), each (N,).
    """
    xp = namespace(x0)
    dev = device(x0)
    t = xp.full((x0.shape[0],), k, dtype=xp.int64, device=dev)               # schedule index
    t_model = xp.full((x0.shape[0],), int(schedule.timestep_map[k]), dtype=xp.int64, device=dev)
    xt = q_sample(schedule, x0, t, eps)
    out = p_mean_variance(schedule, model(xt, t_model, y), xt, t, **options)
    term = vlb_term_bpd(schedule, x0, xt, t, out.mean, out.log_variance, levels, cdf, decoder)
    return term, _mean_flat((out.x0 - x0) ** 2), _mean_flat((out.eps - eps) ** 2)


def bits_per_dim(model: Callable, schedule: Schedule, x0: Any, generator: Generator, y: Any = None, *,
                 prediction: str = "eps", variance: str = "fixed_small", clip_x0: float | None = None,
                 threshold: float | None = None, convention: str = "openai", decoder: str = "discretized",
                 levels: int = 256, cdf: str = "approx", progress: bool = False) -> BitsPerDim:
    """The full variational bound of x0 under a model, in bits/dim (improved DDPM's ``calc_bpd_loop``).

    Math: -log p(x0) <= L_T + sum_{k=0}^{T-1} L_k                          (Ho et al. 2020, eq. 5)
          in bits/dim: divided by D ln 2, D = the number of elements of one x0

    Every step k of ``schedule`` (respaced or not; the model is fed timestep_map[k]) gets a fresh
    eps ~ N(0, I) from ``generator``, drawn for k = T-1 down to 0, so one seed gives the same bound on
    every backend. decoder: "discretized" (x0 on ``levels`` values in [-1, 1]; Ho et al. eq. 13) or
    "continuous" (the density N(x0; mean, var); the bound is then on -log of a density and may be
    negative). The other options are ``p_mean_variance``'s. One model call per step on the whole batch.

    x0: (N, C, ...) real floating; y: (N,) labels or None. Returns a BitsPerDim of x0's backend and dtype.
    """
    _check_bpd_inputs(x0, generator, decoder, levels, cdf)
    options = dict(prediction=prediction, variance=variance, clip_x0=clip_x0, threshold=threshold,
                   convention=convention)
    xp = namespace(x0)
    T = schedule.T
    terms, x0_mse, eps_mse = [None] * T, [None] * T, [None] * T
    steps = range(T - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=T, desc="bits/dim")
    for k in steps:
        eps = generator.normal(x0.shape, like=x0)
        terms[k], x0_mse[k], eps_mse[k] = vlb_step(model, schedule, x0, k, eps, y, decoder, levels, cdf, **options)
    terms, x0_mse, eps_mse = (xp.stack(a, axis=1) for a in (terms, x0_mse, eps_mse))  # (N, T) each
    prior = prior_bpd(schedule, x0)
    return BitsPerDim(prior + xp.sum(terms, axis=1), prior, terms, x0_mse, eps_mse)


def _check_bpd_inputs(x0: Any, generator: Any, decoder: str, levels: int, cdf: str) -> None:
    """Validate bits_per_dim's data and settings before any model call."""
    _check_decoder(decoder)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    if not isinstance(cdf, str) or cdf not in CDFS:
        raise ValueError(f"cdf must be one of {', '.join(CDFS)}, got {cdf!r}")
    if not isinstance(generator, Generator):
        raise ValueError(f"generator must be a refdiff.backend.Generator, got {type(generator).__name__}")
    xp = namespace(x0)
    if not xp.isdtype(x0.dtype, "real floating") or x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a real floating (N, C, ...) array with N >= 1, got shape {x0.shape} "
                         f"and dtype {x0.dtype}")
    low, high = float(xp.min(x0)), float(xp.max(x0))  # two device-to-host reads
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"x0 must be finite, got values in [{low}, {high}]")
    if decoder == "discretized" and not -1.0 <= low <= high <= 1.0:
        raise ValueError(f"x0 must lie in [-1, 1] for decoder='discretized', got values in [{low}, {high}]")
