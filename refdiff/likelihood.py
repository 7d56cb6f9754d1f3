"""Likelihood terms of the variational bound, in nats and in bits per dimension.

KL divergences of Gaussians, the discretized Gaussian decoder p(x0 | x_1) of Ho et al. 2020
(Sec. 3.3, eq. 13), the prior term KL(q(x_T | x0) || N(0, I)) and the per-step terms L_{t-1} of the
bound (eq. 5), reported in bits/dim as in improved DDPM (Nichol & Dhariwal 2021, Sec. 2.3 and 3).
Pure math on arrays of any Array API library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from refdiff.backend import asarray, device, erf, namespace
from refdiff.diffusion import q_mean_variance, q_posterior
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


def vlb_term_bpd(schedule: Schedule, x0: Any, xt: Any, t: Any, mean: Any, log_variance: Any,
                 levels: int = 256, cdf: str = "approx"):
    """One term of the variational bound in bits/dim, given a model's N(mean, exp(log_variance)).

    In code steps t (the papers' step t + 1, see docs/notation.md):
      t > 0:  KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))    the papers' L_t    (Ho et al. 2020, eq. 5)
      t = 0:  -log p(x0 | x_t), the discretized Gaussian decoder, the papers' L_0  (eq. 13)

    x0, xt, mean: (N, ...); t: (N,); log_variance broadcasts against x0. Returns (N,).
    """
    xp = namespace(x0, xt, t)
    true_mean, _, true_log_variance = q_posterior(schedule, x0, xt, t)
    kl = _mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance))
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance, levels, cdf))
    return xp.where(t == 0, nll, kl) / math.log(2.0)
