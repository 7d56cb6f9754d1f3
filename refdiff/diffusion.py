"""The forward process, its posterior, and the Gaussian reverse step (Ho et al. 2020, eqs. 2-12).

Pure math on arrays of any Array API library: every function follows its inputs' library, device
and dtype (docs/design.md rules 1-2), and gathers float64 schedule tables at t through ``backend.gather``.
Prediction targets: eps (Ho et al.), x0, and v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
(Salimans & Ho 2022, Sec. 4). Learned variances follow improved DDPM (Nichol & Dhariwal 2021, eq. 15).
What a model's output means (prediction target, variance, t = 0 convention) is one frozen value,
``Parameterization``, that the reverse step, the losses, the samplers and the likelihood take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import gather, namespace
from refdiff.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
LEARNED_VARIANCES = ("learned_range", "learned")
CONVENTIONS = ("openai", "diffusers")

# diffusers floors the t = 0 posterior variance (exactly 0) at this value before taking its log.
DIFFUSERS_MIN_VARIANCE = 1e-20


@dataclass(frozen=True)
class Parameterization:
    """What a model's output means: its prediction target, its reverse variance, the t = 0 convention.

    prediction: "eps" (Ho et al. 2020), "x0", or "v" = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
                (Salimans & Ho 2022, Sec. 4)
    variance:   "fixed_small" (beta~_t) or "fixed_large" (beta_t) (Ho et al. 2020, Sec. 3.2), or read from
                C more output channels: "learned" (the log-variance itself) or "learned_range"
                (Nichol & Dhariwal 2021, eq. 15)
    convention: the variance at t = 0, "openai" or "diffusers" (docs/conventions.md)
    The losses, the samplers and the likelihood take this one value (docs/design.md rule 12).
    """

    prediction: str = "eps"
    variance: str = "fixed_small"
    convention: str = "openai"

    def __post_init__(self):
        for name, allowed in (("prediction", PREDICTIONS), ("variance", VARIANCES), ("convention", CONVENTIONS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    @property
    def learned(self) -> bool:
        """True when the model outputs C variance channels after its C prediction channels."""
        return self.variance in LEARNED_VARIANCES

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The model output's shape for x of ``shape`` (N, C, ...): (N, 2C, ...) for a learned variance."""
        if not self.learned:
            return tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"variance={self.variance!r} needs a channel axis: x must be (N, C, ...), got {shape}")
        return (shape[0], 2 * shape[1], *shape[2:])


def check_t(schedule: Schedule, t: Any, x: Any) -> None:
    """Raise unless t is an (N,) integer array with values in [0, T), N = x.shape[0]."""
    xp = namespace(x, t)
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(f"t must be an integer array, got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {t.shape}")
    if bool(xp.any((t < 0) | (t >= schedule.T))):  # one device-to-host read on a GPU
        raise ValueError(f"t must lie in [0, {schedule.T}), got [{int(xp.min(t))}, {int(xp.max(t))}]")


def _check_like(name: str, a: Any, x: Any) -> None:
    if a.shape != x.shape or a.dtype != x.dtype:
        raise ValueError(f"{name} must match x's shape {x.shape} and dtype {x.dtype}, got {a.shape}, {a.dtype}")


def _check_float(name: str, x: Any) -> None:
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must be a real floating array, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch axis, got a 0-d array")


def q_mean_variance(schedule: Schedule, x0: Any, t: Any):
    """Mean, variance and log-variance of q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I).

    (Ho et al. 2020, eq. 4.) x0: (N, ...); t: (N,). Returns mean like x0 and variance, log-variance
    shaped (N, 1, ..., 1), all in x0's library, device and dtype.
    """
    _check_float("x0", x0)
    check_t(schedule, t, x0)
    mean = gather(schedule.sqrt_alpha_bar, t, x0) * x0
    variance = gather(1.0 - schedule.alpha_bar, t, x0)
    log_variance = gather(np.log(1.0 - schedule.alpha_bar), t, x0)
    return mean, variance, log_variance


def q_sample(schedule: Schedule, x0: Any, t: Any, eps: Any):
    """Sample x_t ~ q(x_t | x0) in closed form.

    Math: x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps          (Ho et al. 2020, eq. 4)

    x0: (N, ...) data; t: (N,) integer steps in [0, T); eps: like x0, standard normal.
    Returns x_t like x0 (same library, device and dtype).
    """
    _check_float("x0", x0)
    _check_like("eps", eps, x0)
    check_t(schedule, t, x0)
    return gather(schedule.sqrt_alpha_bar, t, x0) * x0 + gather(schedule.sqrt_one_minus_alpha_bar, t, x0) * eps


def q_step(schedule: Schedule, x_prev: Any, t: Any, noise: Any):
    """One Markov transition x_{t-1} -> x_t of the forward chain.

    Math: x_t = sqrt(1 - beta_t) * x_{t-1} + sqrt(beta_t) * noise              (Ho et al. 2020, eq. 2)

    x_prev: (N, ...) is x_{t-1} (x0 when t = 0); t: (N,); noise: like x_prev. Returns x_t.
    """
    _check_float("x_prev", x_prev)
    _check_like("noise", noise, x_prev)
    check_t(schedule, t, x_prev)
    return gather(np.sqrt(schedule.alphas), t, x_prev) * x_prev + gather(np.sqrt(schedule.betas), t, x_prev) * noise


def q_posterior(schedule: Schedule, x0: Any, xt: Any, t: Any):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0).

    Math: mu~_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) * x0
                + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) * x_t      (Ho et al. 2020, eq. 7)
          beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
    The variance at t = 0 is exactly 0; its log is replaced by the log of beta~_1 (improved DDPM).

    x0, xt: (N, ...); t: (N,). Returns mean like xt and variance, log-variance (N, 1, ..., 1).
    """
    _check_float("xt", xt)
    _check_like("x0", x0, xt)
    check_t(schedule, t, xt)
    variance = gather(schedule.posterior_variance, t, xt)
    log_variance = gather(schedule.posterior_log_variance_clipped, t, xt)
    return _q_posterior_mean(schedule, x0, xt, t), variance, log_variance


def _q_posterior_mean(schedule: Schedule, x0: Any, xt: Any, t: Any):
    """mu~_t(x0, x_t) (Ho et al. 2020, eq. 7), for callers that validated t already."""
    return gather(schedule.posterior_mean_coef1, t, xt) * x0 + gather(schedule.posterior_mean_coef2, t, xt) * xt


# Parameterizations. With a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t):
#   x_t = a x0 + b eps,   v = a eps - b x0,   so   x0 = a x_t - b v,   eps = b x_t + a v.


def predict_x0_from_eps(schedule: Schedule, xt: Any, t: Any, eps: Any):
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)          (Ho et al. 2020, eq. 15)

    Written as sqrt(1 / alpha_bar) x_t - sqrt(1 / alpha_bar - 1) eps, from float64 tables.
    """
    return gather(schedule.sqrt_recip_alpha_bar, t, xt) * xt - gather(schedule.sqrt_recipm1_alpha_bar, t, xt) * eps


def predict_eps_from_x0(schedule: Schedule, xt: Any, t: Any, x0: Any):
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
    return (xt - gather(schedule.sqrt_alpha_bar, t, xt) * x0) / gather(schedule.sqrt_one_minus_alpha_bar, t, xt)


def predict_x0_from_v(schedule: Schedule, xt: Any, t: Any, v: Any):
    """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v                 (Salimans & Ho 2022)"""
    return gather(schedule.sqrt_alpha_bar, t, xt) * xt - gather(schedule.sqrt_one_minus_alpha_bar, t, xt) * v


def predict_eps_from_v(schedule: Schedule, xt: Any, t: Any, v: Any):
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v              (Salimans & Ho 2022)"""
    return gather(schedule.sqrt_one_minus_alpha_bar, t, xt) * xt + gather(schedule.sqrt_alpha_bar, t, xt) * v


def predict_v(schedule: Schedule, x0: Any, t: Any, eps: Any):
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0: the v target (Salimans & Ho 2022, Sec. 4)."""
    return gather(schedule.sqrt_alpha_bar, t, x0) * eps - gather(schedule.sqrt_one_minus_alpha_bar, t, x0) * x0


def predict_v_from_eps(schedule: Schedule, xt: Any, t: Any, eps: Any):
    """v from (x_t, eps): v = (eps - sqrt(1 - alpha_bar_t) x_t) / sqrt(alpha_bar_t)."""
    return predict_v(schedule, predict_x0_from_eps(schedule, xt, t, eps), t, eps)


def predict_v_from_x0(schedule: Schedule, xt: Any, t: Any, x0: Any):
    """v from (x_t, x0): v = (sqrt(alpha_bar_t) x_t - x0) / sqrt(1 - alpha_bar_t)."""
    return predict_v(schedule, x0, t, predict_eps_from_x0(schedule, xt, t, x0))


def dynamic_threshold(x0: Any, p: float):
    """Dynamic thresholding of a predicted x0 (Saharia et al. 2022, Sec. 2.3).

    Math: s = max(quantile_p(|x0_n|), 1) per sample n;  x0_n <- clip(x0_n, -s, s) / s

    The quantile is NumPy's default (linear interpolation between order statistics), computed with
    a sort so it runs on every Array API backend. x0: (N, ...). Returns like x0.
    """
    xp = namespace(x0)
    N = x0.shape[0]
    flat = xp.sort(xp.reshape(xp.abs(x0), (N, -1)), axis=1)  # (N, M) ascending
    pos = p * (flat.shape[1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, flat.shape[1] - 1)
    s = flat[:, lo] + (pos - lo) * (flat[:, hi] - flat[:, lo])  # (N,)
    s = xp.reshape(xp.maximum(s, xp.ones_like(s)), (N,) + (1,) * (x0.ndim - 1))
    return xp.minimum(xp.maximum(x0, -s), s) / s


class PMeanVariance(NamedTuple):
    """The Gaussian p(x_{t-1} | x_t) a model defines, with the x0 and eps it implies."""

    mean: Any           # (N, ...) mu~_t(x0_hat, x_t)
    variance: Any       # (N, 1, ..., 1) for fixed variances, (N, ...) for learned ones
    log_variance: Any   # like variance
    x0: Any             # (N, ...) predicted x0, after clipping or thresholding
    eps: Any            # (N, ...) eps implied by the raw prediction (before clipping)


def _fixed_variance(schedule: Schedule, param: Parameterization):
    """(T,) variance and log-variance tables of the fixed reverse variances.

    fixed_small = beta~_t (the posterior's); fixed_large = beta_t (Ho et al. 2020, Sec. 3.2).
    At t = 0: OpenAI uses beta~_1 in the log of fixed_small and in both of fixed_large;
    diffusers floors beta~_0 at 1e-20 and keeps beta_0.
    """
    if param.variance == "fixed_small":
        if param.convention == "openai":
            return schedule.posterior_variance, schedule.posterior_log_variance_clipped
        variance = np.maximum(schedule.posterior_variance, DIFFUSERS_MIN_VARIANCE)
        return variance, np.log(variance)
    if param.convention == "openai":
        variance = np.append(schedule.posterior_variance_clipped[0], schedule.betas[1:])
        return variance, np.log(variance)
    return schedule.betas, np.log(schedule.betas)


def learned_range_bounds(schedule: Schedule, param: Parameterization) -> tuple[np.ndarray, np.ndarray]:
    """(T,) float64 (min_log, max_log): the two ends of the learned-range log-variance.

    Math: max_log_t = log beta_t,  min_log_t = log beta~_t          (Nichol & Dhariwal 2021, eq. 15)
    beta~_0 = 0, so t = 0 follows param.convention: "openai" uses log beta~_1 there (the schedule's
    clipped log), "diffusers" log max(beta~_t, 1e-20).
    """
    if param.convention == "openai":
        min_log = schedule.posterior_log_variance_clipped
    else:
        min_log = np.log(np.maximum(schedule.posterior_variance, DIFFUSERS_MIN_VARIANCE))
    return min_log, np.log(schedule.betas)


def _learned_log_variance(schedule: Schedule, param: Parameterization, out: Any, t: Any):
    """Log-variance from the model's variance channels (Nichol & Dhariwal 2021, eq. 15).

    learned:        log var_t = out
    learned_range:  log var_t = f max_log_t + (1 - f) min_log_t,  f = (out + 1) / 2
                    with (min_log, max_log) = (log beta~_t, log beta_t) (``learned_range_bounds``)
    """
    if param.variance == "learned":
        return out
    min_log, max_log = learned_range_bounds(schedule, param)
    frac = (out + 1.0) / 2.0
    return frac * gather(max_log, t, out) + (1.0 - frac) * gather(min_log, t, out)


def _x0_and_eps(schedule: Schedule, param: Parameterization, out: Any, xt: Any, t: Any):
    """The x0 and eps a prediction of kind ``param.prediction`` implies at (x_t, t)."""
    if param.prediction == "eps":
        return predict_x0_from_eps(schedule, xt, t, out), out
    if param.prediction == "x0":
        return out, predict_eps_from_x0(schedule, xt, t, out)
    return predict_x0_from_v(schedule, xt, t, out), predict_eps_from_v(schedule, xt, t, out)


def p_mean_variance(
    schedule: Schedule,
    model_output: Any,
    xt: Any,
    t: Any,
    param: Parameterization = Parameterization(),
    clip_x0: float | None = None,
    threshold: float | None = None,
) -> PMeanVariance:
    """The reverse step p(x_{t-1} | x_t) = N(mu~_t(x0_hat, x_t), var_t I) a model's output defines.

    Math: x0_hat from the prediction (eps / x0 / v), optionally clipped to [-clip_x0, clip_x0] or
          dynamically thresholded at quantile ``threshold``; mean = mu~_t(x0_hat, x_t) (Ho et al.
          2020, eq. 7); variance fixed (beta~_t or beta_t) or learned (Nichol & Dhariwal 2021, eq. 15).

    model_output: (N, C, ...) for fixed variances, (N, 2C, ...) for learned ones (prediction in the
    first C channels, variance values in the last C); xt: (N, C, ...); t: (N,).
    ``param`` says what the output means, and which variance t = 0 takes (docs/conventions.md).
    """
    check_options(param, clip_x0, threshold)
    _check_float("xt", xt)
    check_t(schedule, t, xt)
    expected = param.output_shape(tuple(xt.shape))
    if model_output.shape != expected or model_output.dtype != xt.dtype:
        raise ValueError(f"model_output must have shape {expected} and dtype {xt.dtype} "
                         f"for variance={param.variance!r}, got {model_output.shape}, {model_output.dtype}")
    xp = namespace(xt, model_output)
    if param.learned:
        C = xt.shape[1]
        out, var_out = model_output[:, :C, ...], model_output[:, C:, ...]
        log_var = _learned_log_variance(schedule, param, var_out, t)
        var = xp.exp(log_var)
    else:
        out = model_output
        table, log_table = _fixed_variance(schedule, param)
        var, log_var = gather(table, t, xt), gather(log_table, t, xt)
    x0, eps = _x0_and_eps(schedule, param, out, xt, t)
    if threshold is not None:
        x0 = dynamic_threshold(x0, threshold)
    elif clip_x0 is not None:
        x0 = xp.clip(x0, -clip_x0, clip_x0)
    return PMeanVariance(_q_posterior_mean(schedule, x0, xt, t), var, log_var, x0, eps)


def check_options(param: Parameterization, clip_x0: float | None = None, threshold: float | None = None) -> None:
    """Raise unless param is a Parameterization and the x0 bounds are valid (naming each argument)."""
    if not isinstance(param, Parameterization):
        raise TypeError(f"param must be a refdiff.diffusion.Parameterization, got {param!r}")
    if clip_x0 is not None and not 0 < clip_x0 < math.inf:
        raise ValueError(f"clip_x0 must be None or a positive finite bound, got {clip_x0!r}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold must be None or a quantile in (0, 1], got {threshold!r}")
    if clip_x0 is not None and threshold is not None:
        raise ValueError("clip_x0 and threshold are exclusive: dynamic thresholding already bounds x0")
