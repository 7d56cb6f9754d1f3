"""Guidance: classifier-free guidance of a conditional model (Ho & Salimans 2022; Nichol et al. 2021,
GLIDE) and classifier guidance by a noisy classifier's input gradient (Dhariwal & Nichol 2021, Alg. 1-2).

Both are wrappers, so every sampler takes them unchanged: ``classifier_free_guidance`` turns a model
into a guided model; ``classifier_guidance`` turns grad_x log p(y | x_t) into the ``cond_fn`` the loops
accept (the DDPM mean shift and the DDIM eps shift live in ``ddpm_step`` and ``ddim_step``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from refdiff.backend import device, namespace
from refdiff.samplers.common import Model, check_finite


def classifier_free_guidance(model: Model, scale: float, null_label: int) -> Model:
    """The classifier-free guided model: one model call on [x; x] with conditions [y; null].

    Math: out_hat = out_u + s * (out_c - out_u),  out_c = model(x_t, t, y), out_u = model(x_t, t, null)
                                  (GLIDE, Sec. 2.3; Ho & Salimans 2022, eq. 6 with s = 1 + w)
    s = 1 is the conditional model, s = 0 the unconditional one; as scores, s aims at
    p(x_t | y) p(y | x_t)^(s - 1).
    With learned variances (output (N, 2C, ...)) only the first C channels are combined; the
    variance channels come from the conditional branch (GLIDE's choice).

    The combination may be applied to eps, x0 or v outputs alike: at fixed (x_t, t) each conversion
    between them is affine (x0 = (x_t - b eps) / a, v = a eps - b x0), and an affine map f commutes
    with (1 - s) u + s c because the weights sum to 1: f((1 - s) u + s c) = (1 - s) f(u) + s f(c).
    So a guided x0- or v-model gives the same sampler as the guided eps-model (up to rounding).

    The null input is y's shape filled with null_label: for a class-conditional model, y (N,) labels
    and null_label K (the null label); for a text-conditional one, y (N, L) caption tokens and null_label
    the padding token, so that null is the empty caption (GLIDE's unconditional input).
    (refdiff.models.registry.null_condition(cfg) gives the value for a model config.)

    model: model(xt, t, y) with y (N,) labels or (N, L) tokens, integers; scale: finite s; null_label:
    the integer that fills the input the model was trained to read as "no condition" (dropped labels or
    captions). The guided model takes xt (N, C, ...), t (N,), y like the model's and returns the model's
    output shape for batch N, in xt's library, device and dtype.
    """
    scale = check_finite("scale", scale)
    if isinstance(null_label, bool) or not isinstance(null_label, (int, np.integer)) or null_label < 0:
        raise ValueError(f"null_label must be an integer >= 0, got {null_label!r}")
    null_label = int(null_label)

    def guided(xt: Any, t: Any, y: Any = None):
        if y is None:
            raise ValueError("y must be an (N,) array of labels or an (N, L) array of tokens for classifier-free "
                             "guidance, got None")
        xp = namespace(xt, y)
        N, C = xt.shape[0], xt.shape[1]
        null = xp.full(y.shape, null_label, dtype=y.dtype, device=device(y))  # the null label, or the empty caption
        out = model(xp.concat([xt, xt], axis=0), xp.concat([t, t], axis=0), xp.concat([y, null], axis=0))
        if out.shape[0] != 2 * N or out.shape[1] not in (C, 2 * C):
            raise ValueError(f"model output for the doubled batch must have shape (2N, C or 2C, ...) = "
                             f"({2 * N}, {C} or {2 * C}, ...), got {out.shape}")
        cond, uncond = out[:N, ...], out[N:, ...]                   # (N, C or 2C, ...) each
        guided_out = uncond[:, :C, ...] + scale * (cond[:, :C, ...] - uncond[:, :C, ...])   # eq. 6
        if out.shape[1] == C:
            return guided_out
        return xp.concat([guided_out, cond[:, C:, ...]], axis=1)   # learned variance: conditional branch

    return guided


def classifier_guidance(grad_log_prob: Callable, scale: float) -> Callable | None:
    """The loops' ``cond_fn`` for classifier guidance with scale s: cond_fn(xt, t, y) = s * grad.

    Math: grad = grad_{x_t} log p_phi(y | x_t), the noisy classifier's input gradient; the samplers
          shift the DDPM mean by Sigma * s * grad (Dhariwal & Nichol 2021, Alg. 1) and DDIM's eps by
          -sqrt(1 - alpha_bar) * s * grad (Alg. 2), which samples p(x) p(y | x)^s.

    grad_log_prob: grad_log_prob(xt, t, y) -> (N, ...) like xt (for a trained classifier, its
    ``classifier_backward`` with dlogits = onehot(y) - softmax(logits)); scale: finite s.
    Returns cond_fn, or None when s = 0: the loops read None as "no guidance", so s = 0 reproduces
    unguided sampling bit for bit and never evaluates the classifier.
    """
    scale = check_finite("scale", scale)
    if scale == 0.0:
        return None

    def cond_fn(xt: Any, t: Any, y: Any = None):
        return scale * grad_log_prob(xt, t, y)

    return cond_fn
