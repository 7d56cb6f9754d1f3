"""Group normalization (Wu & He 2018) and scale-shift (AdaGN) modulation (Dhariwal & Nichol 2021).

Channels-last activations (N, ..., C). The backward of group norm is derived step by step in
docs/derivations/group_norm.md; the numbered steps there are the numbered comments here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.layers.basic import check_shape


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
    S = math.prod(x.shape[1:-1])
    xg = xp.reshape(x, (N, S, groups, C // groups))  # step 1: (N, S, G, C/G)
    mu = xp.mean(xg, axis=(1, 3), keepdims=True)  # step 2: (N, 1, G, 1)
    xc = xg - mu  # step 3: (N, S, G, C/G)
    var = xp.mean(xc * xc, axis=(1, 3), keepdims=True)  # step 4: (N, 1, G, 1), biased
    rstd = 1.0 / xp.sqrt(var + eps)  # step 5: (N, 1, G, 1)
    xhat = xp.reshape(xc * rstd, tuple(x.shape))  # step 6: (N, ..., C)
    y = xhat * gamma + beta  # step 7: (N, ..., C)
    return y, GroupNormCache(xc, rstd, gamma, tuple(x.shape))


def group_norm_backward(dy: Any, cache: GroupNormCache) -> tuple[Any, Any, Any]:
    """Gradients of group_norm_forward: returns (dx, dgamma, dbeta).

    Math (docs/derivations/group_norm.md), per sample and group, means over its M entries:
          dxhat = dy * gamma
          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    computed here as the chain rule through steps 7 to 1 of the forward, one step per line.

    dy: (N, ..., C). Returns dx (N, ..., C), dgamma (C,), dbeta (C,).
    """
    xp = namespace(dy)
    xc, rstd, gamma, x_shape = cache
    N, S, G, Cg = xc.shape
    M = S * Cg
    # step 7: y = xhat * gamma + beta
    xhat = xp.reshape(xc * rstd, (N * S, G * Cg))  # (N*S, C)
    dy2 = xp.reshape(dy, (N * S, G * Cg))  # (N*S, C)
    dgamma = xp.sum(dy2 * xhat, axis=0)  # (C,)
    dbeta = xp.sum(dy2, axis=0)  # (C,)
    dxhat = xp.reshape(dy2 * gamma, (N, S, G, Cg))  # step 6 input: (N, S, G, C/G)
    # step 6: xhat = xc * rstd  (xc and rstd both depend on x)
    dxc = dxhat * rstd  # direct path, (N, S, G, C/G)
    drstd = xp.sum(dxhat * xc, axis=(1, 3), keepdims=True)  # (N, 1, G, 1)
    # step 5: rstd = (var + eps)^(-1/2)
    dvar = -0.5 * rstd * rstd * rstd * drstd  # (N, 1, G, 1)
    # step 4: var = mean(xc^2)
    dxc = dxc + (2.0 / M) * xc * dvar
    # step 3: xc = xg - mu
    dmu = -xp.sum(dxc, axis=(1, 3), keepdims=True)  # (N, 1, G, 1)
    # step 2: mu = mean(xg)
    dxg = dxc + dmu / M  # (N, S, G, C/G)
    # step 1: xg = reshape(x)
    dx = xp.reshape(dxg, x_shape)  # (N, ..., C)
    return dx, dgamma, dbeta


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
    dscale = xp.sum(dy3 * h3, axis=1)  # (N, C)
    dshift = xp.sum(dy3, axis=1)  # (N, C)
    return dh, dscale, dshift
