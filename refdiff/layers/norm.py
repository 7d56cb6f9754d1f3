"""Group normalization (Wu & He 2018) and scale-shift (AdaGN) modulation (Dhariwal & Nichol 2021).

Channels-last activations (N, ..., C). The backward of group norm is derived step by step in
docs/derivations/group_norm.md; the numbered steps there are the numbered comments here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.layers.basic import check_shape, column_sums


class GroupNormCache(NamedTuple):
    xc: Any  # (N, S, G, C/G) the input minus its group mean
    rstd: Any  # (N, 1, G, 1) 1 / sqrt(var + eps) per sample and group
    gamma: Any  # (C,)
    x_shape: tuple[int, ...]  # (N, ..., C)


def _check_group_norm(x: Any, gamma: Any, beta: Any, groups: int, eps: float) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must be (N, ..., C) with at least 2 axes, got shape {tuple(x.shape)}")
    C = x.shape[-1]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or C % groups != 0:
        raise ValueError(f"groups must be a positive integer dividing C = {C}, got {groups!r}")
    if not (isinstance(eps, (int, float)) and eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    check_shape("gamma", gamma, (C,))
    check_shape("beta", beta, (C,))


def _group_sum(a: Any, groups: int) -> Any:
    """sum over the spatial axis and the channels of each group: (N, S, C) -> (N, 1, G, 1).

    Two reductions, each over one axis: first over space (every channel separately, column_sums),
    then over the C/G channels of each group in the small (N, G, C/G) result. The same sum as one
    reduction over the (S, C/G) axes of (N, S, G, C/G), which NumPy runs 3-10x slower.
    """
    xp = namespace(a)
    N, C = a.shape[0], a.shape[-1]
    per_channel = xp.reshape(column_sums(a), (N, 1, groups, C // groups))  # (N, 1, G, C/G)
    return xp.sum(per_channel, axis=3, keepdims=True)  # (N, 1, G, 1)


def group_norm_forward(x: Any, gamma: Any, beta: Any, groups: int,
                       eps: float = 1e-5) -> tuple[Any, GroupNormCache]:
    """Group normalization, as torch.nn.GroupNorm (biased variance, eps inside the square root).

    Math: for each sample n and group g, over its M = S * C/G entries (S = prod of spatial axes):
          mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
          y = xhat * gamma + beta                                            (Wu & He 2018, eqs. 1-3)

    x: (N, ..., C) with C divisible by groups; gamma, beta: (C,). Returns y like x.
    eps keeps 1 / sqrt(var + eps) finite for a constant group (var = 0); 1e-5 is torch's default.
    """
    _check_group_norm(x, gamma, beta, groups, eps)
    xp = namespace(x, gamma, beta)
    N, C = x.shape[0], x.shape[-1]
    S, Cg = math.prod(x.shape[1:-1]), C // groups
    M = S * Cg
    x3 = xp.reshape(x, (N, S, C))  # step 1: (N, S, C), spatial axes flattened
    mu = _group_sum(x3, groups) / M  # step 2: (N, 1, G, 1)
    xc = xp.reshape(x3, (N, S, groups, Cg)) - mu  # step 3: (N, S, G, C/G)
    var = _group_sum(xp.reshape(xc * xc, (N, S, C)), groups) / M  # step 4: (N, 1, G, 1), biased
    rstd = 1.0 / xp.sqrt(var + eps)  # step 5: (N, 1, G, 1)
    # steps 6-7: y = xc * (rstd * gamma) + beta; the (N, 1, G, C/G) factor is formed first, so the
    # activation-sized arrays are touched twice instead of three times.
    y = xc * (rstd * xp.reshape(gamma, (groups, Cg)))  # (N, S, G, C/G)
    y += xp.reshape(beta, (groups, Cg))
    return xp.reshape(y, tuple(x.shape)), GroupNormCache(xc, rstd, gamma, tuple(x.shape))


def group_norm_backward(dy: Any, cache: GroupNormCache) -> tuple[Any, Any, Any]:
    """Gradients of group_norm_forward: returns (dx, dgamma, dbeta).

    Math (docs/derivations/group_norm.md derives it step by step through the forward's steps 7 to 1),
    per sample and group, means over its M entries, dxhat = dy * gamma:
          dgamma = sum over (N, ...) of dy * xhat,  dbeta = sum over (N, ...) of dy
          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    computed from two per-channel sums over space, sum(dy) and sum(dy * xc); with xhat = xc * rstd
    the last line is dx = (rstd * gamma) * dy + b * xc + c, b and c one number per sample and group
    (three passes over the activation instead of the step-by-step chain's dozen).

    dy: (N, ..., C). Returns dx (N, ..., C), dgamma (C,), dbeta (C,).
    """
    xp = namespace(dy)
    xc, rstd, gamma, x_shape = cache
    N, S, G, Cg = xc.shape
    M = S * Cg
    dy4 = xp.reshape(dy, (N, S, G, Cg))  # (N, S, G, C/G)
    sum_dy = xp.reshape(column_sums(xp.reshape(dy, (N, S, G * Cg))), (N, 1, G, Cg))  # per channel
    sum_dy_xc = xp.reshape(column_sums(xp.reshape(dy4 * xc, (N, S, G * Cg))), (N, 1, G, Cg))
    # step 7: the parameters' gradients sum over samples and space; sum(dy * xhat) = rstd * sum(dy * xc)
    dbeta = xp.reshape(xp.sum(sum_dy, axis=0), (G * Cg,))  # (C,)
    dgamma = xp.reshape(xp.sum(sum_dy_xc * rstd, axis=0), (G * Cg,))  # (C,)
    # steps 6-1 in closed form: mean(dxhat) and mean(dxhat * xhat) per sample and group
    a = rstd * xp.reshape(gamma, (G, Cg))  # (N, 1, G, C/G): rstd * dxhat = a * dy
    mean_a_dy = xp.sum(sum_dy * a, axis=3, keepdims=True) / M  # rstd * mean(dxhat): (N, 1, G, 1)
    mean_dxhat_xhat = rstd * xp.sum(sum_dy_xc * a, axis=3, keepdims=True) / M  # rstd * mean(dxhat * xhat)
    dx = dy4 * a  # (N, S, G, C/G); a * dy - mean(a * dy) cancels exactly for M = 1
    dx += xc * (-rstd * mean_dxhat_xhat)  # - rstd * xhat * mean(dxhat * xhat)
    dx += -mean_a_dy  # - rstd * mean(dxhat)
    return xp.reshape(dx, x_shape), dgamma, dbeta


# ------------------------------------------------------------------------------------ scale-shift

class ScaleShiftCache(NamedTuple):
    h: Any  # (N, S, C) the normalized activation, spatial axes flattened
    scale: Any  # (N, 1, C)
    h_shape: tuple[int, ...]  # (N, ..., C)


def scale_shift_forward(h: Any, scale: Any, shift: Any) -> tuple[Any, ScaleShiftCache]:
    """AdaGN modulation of a normalized activation by per-sample scale and shift.

    Math: y = h * (1 + scale) + shift, scale and shift broadcast over space
          (Dhariwal & Nichol 2021, Sec. 3: AdaGN(h, y) = y_s GroupNorm(h) + y_b, with y_s = 1 + scale
          as in guided-diffusion's ResBlock with use_scale_shift_norm)

    h: (N, H, W, C) (any number of spatial axes, or none); scale, shift: (N, C). Returns y like h.
    """
    if h.ndim < 2:
        raise ValueError(f"h must be (N, ..., C) with at least 2 axes, got shape {tuple(h.shape)}")
    N, C = h.shape[0], h.shape[-1]
    check_shape("scale", scale, (N, C))
    check_shape("shift", shift, (N, C))
    xp = namespace(h, scale, shift)
    h3 = xp.reshape(h, (N, math.prod(h.shape[1:-1]), C))  # (N, S, C)
    scale3 = xp.reshape(scale, (N, 1, C))  # (N, 1, C): broadcast over S
    y3 = h3 * (1.0 + scale3) + xp.reshape(shift, (N, 1, C))  # (N, S, C)
    return xp.reshape(y3, tuple(h.shape)), ScaleShiftCache(h3, scale3, tuple(h.shape))


def scale_shift_backward(dy: Any, cache: ScaleShiftCache) -> tuple[Any, Any, Any]:
    """Gradients of scale_shift_forward: returns (dh, dscale, dshift).

    Math: dh = dy * (1 + scale),  dscale = sum over space of dy * h,  dshift = sum over space of dy

    dy: like h. Returns dh like h, dscale (N, C), dshift (N, C).
    """
    xp = namespace(dy)
    h3, scale3, h_shape = cache
    dy3 = xp.reshape(dy, tuple(h3.shape))  # (N, S, C)
    dh = xp.reshape(dy3 * (1.0 + scale3), h_shape)  # (N, ..., C)
    dscale = column_sums(dy3 * h3)  # (N, C), summed over space
    dshift = column_sums(dy3)  # (N, C)
    return dh, dscale, dshift
