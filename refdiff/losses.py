"""Training objectives and their gradients with respect to the model output.

L_simple for eps / x0 / v targets (Ho et al. 2020, eq. 14; Salimans & Ho 2022), min-SNR weighting
(Hang et al. 2023, gamma = 5), the hybrid L_simple + lambda L_vlb and the pure L_vlb with learned
variances (Nichol & Dhariwal 2021, Sec. 3.1, eq. 16), with the importance weights of t drawn by
refdiff.timesteps (Sec. 3.3). Every loss returns d loss / d model_output, derived by hand in
docs/derivations/losses.md, which the model's backward then takes; the VLB term and its gradients
w.r.t. the mean and log-variance are refdiff.likelihood's. (The classifier's loss,
``cross_entropy``, is a layer: refdiff.layers.cross_entropy.)

Units: the VLB term L_t is in bits/dim (``likelihood.vlb_term_bpd``). One draw of t estimates
L_vlb = sum_t L_t as T * L_t, so per sample the hybrid loss is mse + vlb_weight * T * L_t and the
"kl" loss is T * L_t: improved DDPM's RESCALED_MSE (its ``vb * num_timesteps / 1000`` is lambda * T
with lambda = 0.001) and RESCALED_KL.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import asarray, gather, namespace
from refdiff.diffusion import (
    LEARNED_VARIANCES,
    Parameterization,
    check_options,
    check_t,
    learned_range_bounds,
    p_mean_variance,
    predict_v,
    q_sample,
)
from refdiff.likelihood import CDFS, vlb_backward, vlb_term_bpd
from refdiff.schedules import Schedule

LOSSES = ("mse", "hybrid", "kl")
WEIGHTINGS = ("none", "min_snr")
MIN_SNR_GAMMA = 5.0  # the gamma Hang et al. 2023 recommend


class LossTerms(NamedTuple):
    """Per-sample terms of a training loss, for logging and for the importance sampler."""

    loss: Any  # (N,) per-sample loss before the importance weights (timesteps.LossSecondMomentSampler.update)
    mse: Any   # (N,) mean over non-batch axes of (prediction - target)^2, unweighted
    vlb: Any   # (N,) the VLB term L_t in bits/dim; None for loss="mse"


def training_loss(schedule: Schedule, model_output: Any, x0: Any, t: Any, eps: Any,
                  param: Parameterization = Parameterization(), loss: str = "mse", weighting: str = "none",
                  vlb_weight: float = 0.001, levels: int = 256, *, weights: Any = None,
                  snr_gamma: float = MIN_SNR_GAMMA, cdf: str = "approx"):
    """The training loss at x_t = q_sample(x0, t, eps), and its gradient w.r.t. model_output.

    Math, per sample n (w_n the min-SNR weight or 1, c_n the importance weight or 1):
      mse:     L_n = w_n mean((out_n - target_n)^2)                      (Ho et al. 2020, eq. 14)
      hybrid:  L_n = w_n mse_n + vlb_weight * T * L_t(sg[mean], var)     (Nichol & Dhariwal, eq. 16)
      kl:      L_n = T * L_t(mean, var)
      loss = (1/N) sum_n c_n L_n
    sg[.] stops the gradient: the VLB term of the hybrid loss trains only the variance channels.

    model_output: (N, C, ...) for "mse", (N, 2C, ...) for "hybrid" / "kl" (prediction in the first
    C channels, variance values in the last C, read as param.variance, which these two losses need
    learned); param: what the output means (refdiff.diffusion.Parameterization); x0, eps: (N, C, ...);
    t: (N,) int; weights: (N,) like x0's dtype, e.g. from ``timesteps.sample_timesteps``.
    Returns (loss 0-d, dout like model_output, LossTerms of (N,) arrays), on x0's backend.
    """
    _check_loss_args(schedule, model_output, x0, t, eps, param, loss, weighting, vlb_weight,
                     levels, weights, snr_gamma, cdf)
    xp = namespace(x0, model_output)
    C = x0.shape[1]
    out = model_output[:, :C, ...] if loss != "mse" else model_output
    mse, dmse = mse_with_grad(out, mse_target(schedule, param, x0, t, eps))
    w = min_snr_weights(schedule, t, x0, param, snr_gamma) if weighting == "min_snr" else None
    per_sample = mse if w is None else w * mse
    dout = dmse if w is None else _per_sample(w, dmse) * dmse
    vlb = None
    if loss != "mse":
        xt = q_sample(schedule, x0, t, eps)
        vlb, dmean_out, dvar_out = vlb_with_grad(schedule, model_output, x0, xt, t, param, levels, cdf)
        scale = schedule.T * (vlb_weight if loss == "hybrid" else 1.0)
        if loss == "hybrid":  # the mean is a constant here: only the variance channels learn from L_vlb
            per_sample = per_sample + scale * vlb
        else:
            per_sample, dout = scale * vlb, scale * dmean_out
        dout = xp.concat([dout, scale * dvar_out], axis=1)                     # (N, 2C, ...)
    # loss = (1/N) sum_n c_n L_n: each sample's gradient carries c_n / N.
    weighted = per_sample if weights is None else weights * per_sample
    coef = 1.0 / x0.shape[0] if weights is None else _per_sample(weights, dout) / x0.shape[0]
    return xp.mean(weighted), coef * dout, LossTerms(per_sample, mse, vlb)


def mse_target(schedule: Schedule, param: Parameterization, x0: Any, t: Any, eps: Any):
    """The regression target of param.prediction: eps, x0, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
    if param.prediction == "eps":
        return eps
    if param.prediction == "x0":
        return x0
    return predict_v(schedule, x0, t, eps)


def mse_with_grad(out: Any, target: Any):
    """Per-sample mean squared error and its gradient w.r.t. out.

    Math: mse_n = (1/M) sum_i (out_ni - target_ni)^2,  d mse_n / d out_ni = (2/M) (out_ni - target_ni)
    out, target: (N, ...), M = prod of the non-batch axes. Returns ((N,), like out).
    """
    xp = namespace(out)
    diff = out - target
    M = math.prod(out.shape[1:])
    return xp.mean(diff * diff, axis=tuple(range(1, out.ndim))), (2.0 / M) * diff


def min_snr_weight_table(schedule: Schedule, param: Parameterization, gamma: float = MIN_SNR_GAMMA) -> np.ndarray:
    """(T,) float64 min-SNR-gamma weights of each step for param.prediction (Hang et al. 2023).

    Math: eps: min(SNR_t, gamma) / SNR_t;  x0: min(SNR_t, gamma);  v: min(SNR_t, gamma) / (SNR_t + 1)
    Each turns its target's squared error into min(SNR_t, gamma) ||x0 - x0_hat||^2, since
    ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2.
    The eps weight is computed as min(1, gamma / SNR_t): 1 where SNR_t = 0 (zero terminal SNR).
    """
    snr = schedule.snr
    if param.prediction == "eps":
        with np.errstate(divide="ignore"):
            return np.minimum(1.0, gamma / snr)
    if param.prediction == "x0":
        return np.minimum(snr, gamma)
    return np.minimum(snr, gamma) / (snr + 1.0)


def min_snr_weights(schedule: Schedule, t: Any, like: Any, param: Parameterization, gamma: float = MIN_SNR_GAMMA):
    """(N,) min-SNR weights at t (see ``min_snr_weight_table``), in like's library, device and dtype."""
    xp = namespace(like)
    return xp.take(asarray(min_snr_weight_table(schedule, param, gamma), like=like, dtype=like.dtype), t)


def _per_sample(w: Any, x: Any):
    """(N,) -> (N, 1, ..., 1) to broadcast against x."""
    xp = namespace(w)
    return xp.reshape(w, (w.shape[0],) + (1,) * (x.ndim - 1))


# --- the VLB term and its gradient ------------------------------------------------------------


def vlb_with_grad(schedule: Schedule, model_output: Any, x0: Any, xt: Any, t: Any, param: Parameterization,
                  levels: int, cdf: str):
    """The VLB term L_t in bits/dim and its gradients w.r.t. both halves of a learned-variance output.

    Math (docs/derivations/losses.md): mean = A_t out + B_t (mu~_t of the predicted x0, eq. 7 of
    Ho et al. 2020, linear in out), log_var = a_t + S_t var_out (eq. 15 of Nichol & Dhariwal), so
      d L_t / d out     = A_t * d L_t / d mean
      d L_t / d var_out = S_t * d L_t / d log_var

    model_output: (N, 2C, ...), read as param says (a learned variance); x0, xt: (N, C, ...); t: (N,).
    Returns (vlb (N,), d vlb / d out (N, C, ...), d vlb / d var_out (N, C, ...)).
    """
    p = p_mean_variance(schedule, model_output, xt, t, param)
    vlb = vlb_term_bpd(schedule, x0, xt, t, p.mean, p.log_variance, levels, cdf)
    dmean, dlog_var = vlb_backward(schedule, x0, xt, t, p.mean, p.log_variance, levels, cdf)
    dout = gather(mean_slope_table(schedule, param), t, x0) * dmean
    if param.variance == "learned":
        return vlb, dout, dlog_var                                                  # log_var = var_out
    return vlb, dout, gather(learned_range_slope_table(schedule, param), t, x0) * dlog_var


def mean_slope_table(schedule: Schedule, param: Parameterization) -> np.ndarray:
    """(T,) float64 A_t = d mean / d out: mean = coef1 x0_hat + coef2 x_t with x0_hat linear in out.

    Math: eps: x0_hat = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) out  -> A = -coef1 sqrt(1/alpha_bar - 1)
          x0:  x0_hat = out                                                -> A = coef1
          v:   x0_hat = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) out      -> A = -coef1 sqrt(1 - alpha_bar)
    coef1 = posterior_mean_coef1 (Ho et al. 2020, eq. 7). No clipping of x0_hat in training.
    """
    coef1 = schedule.posterior_mean_coef1
    if param.prediction == "eps":
        return -coef1 * schedule.sqrt_recipm1_alpha_bar
    if param.prediction == "x0":
        return coef1
    return -coef1 * schedule.sqrt_one_minus_alpha_bar


def learned_range_slope_table(schedule: Schedule, param: Parameterization) -> np.ndarray:
    """(T,) float64 S_t = d log_var / d var_out of the learned-range variance (Nichol & Dhariwal, eq. 15).

    Math: log_var = f max_log_t + (1 - f) min_log_t, f = (var_out + 1) / 2
          -> S_t = (max_log_t - min_log_t) / 2
    with (min_log, max_log) = (log beta~_t, log beta_t) from ``diffusion.learned_range_bounds``
    (its t = 0 value per param.convention).
    """
    min_log, max_log = learned_range_bounds(schedule, param)
    return 0.5 * (max_log - min_log)


# --- validation at the boundary ---------------------------------------------------------------


def _check_loss_args(schedule, model_output, x0, t, eps, param, loss, weighting, vlb_weight,
                     levels, weights, snr_gamma, cdf) -> None:
    check_options(param)
    for name, value, allowed in (("loss", loss, LOSSES), ("weighting", weighting, WEIGHTINGS),
                                 ("cdf", cdf, tuple(CDFS))):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    if weighting == "min_snr" and loss == "kl":
        raise ValueError("weighting='min_snr' reweights the MSE term; loss='kl' has none: use weighting='none'")
    if loss != "mse" and not param.learned:
        raise ValueError(f"loss={loss!r} trains the variance channels: param.variance must be one of "
                         f"{', '.join(LEARNED_VARIANCES)}, got {param.variance!r}")
    if isinstance(vlb_weight, bool) or not 0.0 <= vlb_weight < math.inf:
        raise ValueError(f"vlb_weight must be a finite number >= 0, got {vlb_weight!r}")
    if not snr_gamma > 0:
        raise ValueError(f"snr_gamma must be > 0 (math.inf allowed), got {snr_gamma!r}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    _check_loss_arrays(schedule, model_output, x0, t, eps, loss, weights)


def _check_loss_arrays(schedule, model_output, x0, t, eps, loss, weights) -> None:
    xp = namespace(x0)
    if not xp.isdtype(x0.dtype, "real floating") or x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a real floating (N, C, ...) array with N >= 1, got shape {x0.shape}, "
                         f"dtype {x0.dtype}")
    if eps.shape != x0.shape or eps.dtype != x0.dtype:
        raise ValueError(f"eps must match x0's shape {x0.shape} and dtype {x0.dtype}, got {eps.shape}, {eps.dtype}")
    channels = x0.shape[1] if loss == "mse" else 2 * x0.shape[1]
    expected = (x0.shape[0], channels, *x0.shape[2:])
    if model_output.shape != expected or model_output.dtype != x0.dtype:
        raise ValueError(f"model_output must have shape {expected} and dtype {x0.dtype} for loss={loss!r} "
                         f"({'C' if loss == 'mse' else '2C'} channels), got {model_output.shape}, "
                         f"{model_output.dtype}")
    if weights is not None and (weights.shape != (x0.shape[0],) or weights.dtype != x0.dtype):
        raise ValueError(f"weights must be None or ({x0.shape[0]},) of dtype {x0.dtype}, "
                         f"got {weights.shape}, {weights.dtype}")
    check_t(schedule, t, x0)
