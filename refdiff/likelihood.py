"""Likelihood terms of the variational bound, in nats and in bits per dimension.

KL divergences of Gaussians, the discretized Gaussian decoder p(x0 | x_1) of Ho et al. 2020
(Sec. 3.3, eq. 13), the prior term KL(q(x_T | x0) || N(0, I)) and the per-step terms L_{t-1} of the
bound (eq. 5), reported in bits/dim as in improved DDPM (Nichol & Dhariwal 2021, Sec. 2.3 and 3),
and the full bound of any model callable over all T steps (improved DDPM's ``calc_bpd_loop``).
Each term that training differentiates has its backward right after it (``normal_kl_backward``,
``discretized_gaussian_log_likelihood_backward``, ``vlb_backward``: gradients w.r.t. the model's mean
and log-variance, derived in docs/derivations/losses.md). Pure math on arrays of any Array API library.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from refdiff.backend import Generator, asarray, device, erf, namespace
from refdiff.diffusion import Parameterization, check_options, p_mean_variance, q_mean_variance, q_posterior, q_sample
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


def normal_kl_backward(mean1: Any, logvar1: Any, mean2: Any, logvar2: Any):
    """Gradients of KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) w.r.t. the second Gaussian.

    Math: KL = 0.5 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^(-logvar2))
          dKL / d mean2   = (mean2 - mean1) e^(-logvar2)
          dKL / d logvar2 = 0.5 (1 - e^(logvar1 - logvar2) - (mean1 - mean2)^2 e^(-logvar2))
    1 - e^d is computed as -expm1(d), exact at d = 0. Arrays broadcast; returns both at full shape.
    """
    xp = namespace(mean1, mean2)
    precision2 = xp.exp(-logvar2)
    diff = mean2 - mean1
    return diff * precision2, 0.5 * (-xp.expm1(logvar1 - logvar2) - diff * diff * precision2)


_TANH_K = math.sqrt(2.0 / math.pi)
_TANH_C = 0.044715


def approx_standard_normal_cdf(x: Any):
    """The tanh approximation of the standard normal CDF that improved DDPM uses.

    Math: Phi(x) ~= 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))   (Page 1977)
    Its absolute error is below 2e-4 everywhere (tests check 1e-3).
    """
    xp = namespace(x)
    return 0.5 * (1.0 + xp.tanh(_TANH_K * (x + _TANH_C * x**3)))


def approx_standard_normal_pdf(u: Any):
    """Derivative of the tanh approximation of Phi (``approx_standard_normal_cdf``).

    Math: Phi(u) ~= (1 + tanh(z)) / 2, z = k (u + c u^3), k = sqrt(2 / pi), c = 0.044715
          Phi'(u) = k (1 + 3 c u^2) sech^2(z) / 2,  sech^2(z) = 4 a / (1 + a)^2, a = exp(-2 |z|)
    The exp(-2|z|) form cannot overflow and stays accurate where tanh(z) rounds to +-1.
    """
    xp = namespace(u)
    z = _TANH_K * (u + _TANH_C * u**3)
    a = xp.exp(-2.0 * xp.abs(z))
    return 0.5 * _TANH_K * (1.0 + 3.0 * _TANH_C * u * u) * (4.0 * a / ((1.0 + a) * (1.0 + a)))


def standard_normal_cdf(x: Any):
    """The exact standard normal CDF, Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))."""
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def standard_normal_pdf(u: Any):
    """phi(u) = exp(-u^2 / 2) / sqrt(2 pi), the derivative of the exact Phi."""
    xp = namespace(u)
    return xp.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)


CDFS = {"approx": approx_standard_normal_cdf, "exact": standard_normal_cdf}
PDFS = {"approx": approx_standard_normal_pdf, "exact": standard_normal_pdf}


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


def discretized_gaussian_log_likelihood_backward(x: Any, mean: Any, log_scale: Any, levels: int = 256,
                                                 cdf: str = "approx"):
    """Gradients of ``discretized_gaussian_log_likelihood`` w.r.t. mean and log_scale.

    Math: u+- = (x +- h - mean) / s, s = exp(log_scale), h = 1 / (levels - 1),
          P = Phi(u+) - Phi(u-) with Phi(u-) := 0 in the lowest bin and Phi(u+) := 1 in the highest,
          d log P / d mean      = -(phi(u+) - phi(u-)) / (s P)
          d log P / d log_scale = -(u+ phi(u+) - u- phi(u-)) / P
    with phi = Phi' of the same ``cdf`` (the tanh form's own derivative for "approx"), phi(u-) := 0
    in the lowest bin, phi(u+) := 0 in the highest, and both gradients 0 where P <= MIN_PROB (the
    forward's floor max(P, MIN_PROB) is constant there).

    x: (N, ...) data on the grid; mean, log_scale: like x. Returns (dmean, dlog_scale) like x.
    """
    xp = namespace(x, mean)
    Phi, phi = CDFS[cdf], PDFS[cdf]
    h = 1.0 / (levels - 1)
    inv_s = xp.exp(-log_scale)
    u_plus, u_min = inv_s * (x - mean + h), inv_s * (x - mean - h)
    lowest, highest = x < -1.0 + h, x > 1.0 - h                    # the bins extended to -inf / +inf
    cdf_plus, cdf_min = Phi(u_plus), Phi(u_min)
    prob = xp.where(lowest, cdf_plus, xp.where(highest, 1.0 - cdf_min, cdf_plus - cdf_min))  # as the forward
    zero = xp.zeros_like(prob)
    phi_plus = xp.where(highest, zero, phi(u_plus))
    phi_min = xp.where(lowest, zero, phi(u_min))
    floor = xp.full_like(prob, MIN_PROB)
    inv_prob = xp.where(prob > floor, 1.0 / xp.maximum(prob, floor), zero)
    dmean = -inv_s * (phi_plus - phi_min) * inv_prob
    dlog_scale = -(u_plus * phi_plus - u_min * phi_min) * inv_prob
    return dmean, dlog_scale


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


def vlb_backward(schedule: Schedule, x0: Any, xt: Any, t: Any, mean: Any, log_variance: Any,
                 levels: int = 256, cdf: str = "approx"):
    """Gradients of ``vlb_term_bpd`` (discretized decoder) w.r.t. the model's mean and log-variance,
    elementwise.

    Math: vlb_n = (1 / (M ln 2)) sum_i ell_ni with ell = KL(q || p) for t > 0 and
          ell = -log p(x0 | x_t) for t = 0 (the decoder, with log_scale = log_var / 2), so
          d vlb_n / d mean_ni = (1 / (M ln 2)) d ell_ni / d mean_ni, and likewise for log_var.

    x0, xt, mean: (N, ...); log_variance: (N, ...); t: (N,). Returns (dmean, dlog_variance) like mean.
    """
    xp = namespace(x0, mean)
    scale = 1.0 / (math.prod(x0.shape[1:]) * math.log(2.0))
    true_mean, _, true_log_variance = q_posterior(schedule, x0, xt, t)
    dkl_dmean, dkl_dlog_var = normal_kl_backward(true_mean, true_log_variance, mean, log_variance)
    dll_dmean, dll_dlog_scale = discretized_gaussian_log_likelihood_backward(
        x0, mean, 0.5 * log_variance, levels, cdf)
    at_t0 = xp.reshape(t == 0, (t.shape[0],) + (1,) * (x0.ndim - 1))                  # (N, 1, ..., 1)
    dmean = xp.where(at_t0, -dll_dmean, dkl_dmean)
    dlog_var = xp.where(at_t0, -0.5 * dll_dlog_scale, dkl_dlog_var)              # d log_scale / d log_var = 1/2
    return scale * dmean, scale * dlog_var


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
             decoder: str = "discretized", levels: int = 256, cdf: str = "approx",
             param: Parameterization = Parameterization(), clip_x0: float | None = None,
             threshold: float | None = None):
    """The bound's term L_k for one step k of the schedule, with the noise passed in.

    Math: x_k = sqrt(alpha_bar_k) x0 + sqrt(1 - alpha_bar_k) eps            (Ho et al. 2020, eq. 4)
          p(x_{k-1} | x_k) = N(mean, var) from model(x_k, timestep_map[k], y)   (eqs. 1, 11)
          L_k = KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) for k > 0, -log p(x0 | x_0) for k = 0

    x0, eps: (N, C, ...); k: schedule index in [0, T). param, clip_x0, threshold: ``p_mean_variance``'s.
    Returns (L_k, x0_mse, eps_mse), each (N,).
    """
    xp = namespace(x0)
    dev = device(x0)
    t = xp.full((x0.shape[0],), k, dtype=xp.int64, device=dev)               # schedule index
    t_model = xp.full((x0.shape[0],), int(schedule.timestep_map[k]), dtype=xp.int64, device=dev)
    xt = q_sample(schedule, x0, t, eps)
    out = p_mean_variance(schedule, model(xt, t_model, y), xt, t, param, clip_x0, threshold)
    term = vlb_term_bpd(schedule, x0, xt, t, out.mean, out.log_variance, levels, cdf, decoder)
    return term, _mean_flat((out.x0 - x0) ** 2), _mean_flat((out.eps - eps) ** 2)


def bits_per_dim(model: Callable, schedule: Schedule, x0: Any, generator: Generator, y: Any = None, *,
                 param: Parameterization = Parameterization(), clip_x0: float | None = None,
                 threshold: float | None = None, decoder: str = "discretized", levels: int = 256,
                 cdf: str = "approx", progress: bool = False) -> BitsPerDim:
    """The full variational bound of x0 under a model, in bits/dim (improved DDPM's ``calc_bpd_loop``).

    Math: -log p(x0) <= L_T + sum_{k=0}^{T-1} L_k                          (Ho et al. 2020, eq. 5)
          in bits/dim: divided by D ln 2, D = the number of elements of one x0

    Every step k of ``schedule`` (respaced or not; the model is fed timestep_map[k]) gets a fresh
    eps ~ N(0, I) from ``generator``, drawn for k = T-1 down to 0, so one seed gives the same bound on
    every backend. decoder: "discretized" (x0 on ``levels`` values in [-1, 1]; Ho et al. eq. 13) or
    "continuous" (the density N(x0; mean, var); the bound is then on -log of a density and may be
    negative). param, clip_x0, threshold: ``p_mean_variance``'s. One model call per step on the whole batch.

    x0: (N, C, ...) real floating; y: (N,) labels or None. Returns a BitsPerDim of x0's backend and dtype.
    """
    check_options(param, clip_x0, threshold)
    _check_bpd_inputs(x0, generator, decoder, levels, cdf)
    xp = namespace(x0)
    T = schedule.T
    terms, x0_mse, eps_mse = [None] * T, [None] * T, [None] * T
    steps = range(T - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=T, desc="bits/dim", disable=None)
    for k in steps:
        eps = generator.normal(x0.shape, like=x0)
        terms[k], x0_mse[k], eps_mse[k] = vlb_step(model, schedule, x0, k, eps, y, decoder, levels, cdf, param,
                                                   clip_x0, threshold)
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
