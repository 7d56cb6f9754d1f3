"""Group normalization (Wu & He 2018) and scale-shift (AdaGN) modulation (Dhariwal & Nichol 2021),
and both followed by SiLU as one step for a sampling forward (group_norm_silu).

Channels-last activations (N, ..., C). The backward of group norm is derived step by step in
docs/derivations/group_norm.md; the numbered steps there are the numbered comments here.

Each function here is the textbook form, one step a line. The speed forms of group norm's forward and
backward (the sums over a group as per-channel sums over space, steps 6-7 fused, the backward in
closed form), of the sums over space and of group_norm_silu (one affine map, one tanh) are in
refdiff/layers/fast.py; each function that has one starts by handing over to it on the speed layer
(refdiff.speed).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff import speed
from refdiff.backend import namespace
from refdiff.layers import fast
from refdiff.layers.basic import check_shape, silu_forward


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
    if speed.enabled():
        return fast.group_norm_forward(x, gamma, beta, groups, eps)
    xp = namespace(x, gamma, beta)
    N, C = x.shape[0], x.shape[-1]
    S, Cg = math.prod(x.shape[1:-1]), C // groups
    xg = xp.reshape(x, (N, S, groups, Cg))  # step 1: (N, S, G, C/G), spatial axes flattened
    mu = xp.mean(xg, axis=(1, 3), keepdims=True)  # step 2: (N, 1, G, 1)
    xc = xg - mu  # step 3: (N, S, G, C/G)
    var = xp.mean(xc * xc, axis=(1, 3), keepdims=True)  # step 4: (N, 1, G, 1), biased
    rstd = 1.0 / xp.sqrt(var + eps)  # step 5: (N, 1, G, 1)
    xhat = xp.reshape(xc * rstd, tuple(x.shape))  # step 6: (N, ..., C)
    y = xhat * gamma + beta  # step 7: (N, ..., C)
    return y, GroupNormCache(xc, rstd, gamma, tuple(x.shape))


def group_norm_backward(dy: Any, cache: GroupNormCache) -> tuple[Any, Any, Any]:
    """Gradients of group_norm_forward: returns (dx, dgamma, dbeta), through its steps 7 to 1.

    Math (docs/derivations/group_norm.md), sum_g and mean_g over the M entries of a sample and group:
          dgamma = sum over (N, ...) of dy * xhat,  dbeta = sum over (N, ...) of dy,  dxhat = dy * gamma
          dxc = dxhat * rstd + (2 / M) xc dvar,  dvar = -rstd^3 / 2 * sum_g(dxhat * xc)
          dx = dxc - mean_g(dxc)
    which adds up to dx = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)).

    dy: (N, ..., C). Returns dx (N, ..., C), dgamma (C,), dbeta (C,).
    """
    if speed.enabled():
        return fast.group_norm_backward(dy, cache)
    xp = namespace(dy)
    xc, rstd, gamma, x_shape = cache
    N, S, G, Cg = xc.shape
    M = S * Cg
    dy4 = xp.reshape(dy, (N, S, G, Cg))  # (N, S, G, C/G), like xc
    xhat = xc * rstd  # the forward's step 6 again: (N, S, G, C/G)
    # step 7: y = xhat * gamma + beta; gamma and beta are shared by all samples and positions
    dgamma = xp.reshape(xp.sum(dy4 * xhat, axis=(0, 1)), (G * Cg,))  # (C,)
    dbeta = xp.reshape(xp.sum(dy4, axis=(0, 1)), (G * Cg,))  # (C,)
    dxhat = dy4 * xp.reshape(gamma, (G, Cg))  # (N, S, G, C/G)
    # step 6: xhat = xc * rstd, two paths to x
    dxc = dxhat * rstd  # (N, S, G, C/G)
    drstd = xp.sum(dxhat * xc, axis=(1, 3), keepdims=True)  # (N, 1, G, 1)
    # step 5: rstd = (var + eps)^(-1/2)
    dvar = -0.5 * rstd**3 * drstd  # (N, 1, G, 1)
    # step 4: var = mean_g(xc^2)
    dxc = dxc + (2.0 / M) * xc * dvar  # (N, S, G, C/G)
    # step 3: xc = xg - mu
    dmu = -xp.sum(dxc, axis=(1, 3), keepdims=True)  # (N, 1, G, 1)
    # step 2: mu = mean_g(xg)
    dxg = dxc + dmu / M  # (N, S, G, C/G)
    # step 1: xg = reshape(x)
    return xp.reshape(dxg, x_shape), dgamma, dbeta


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
    if speed.enabled():
        return fast.scale_shift_backward(dy, cache)
    xp = namespace(dy)
    h3, scale3, h_shape = cache
    dy3 = xp.reshape(dy, tuple(h3.shape))  # (N, S, C)
    dh = xp.reshape(dy3 * (1.0 + scale3), h_shape)  # (N, ..., C)
    dscale = xp.sum(dy3 * h3, axis=1)  # (N, C), summed over space
    dshift = xp.sum(dy3, axis=1)  # (N, C)
    return dh, dscale, dshift


def group_norm_silu(x: Any, gamma: Any, beta: Any, groups: int, eps: float = 1e-5, scale: Any = None,
                    shift: Any = None) -> Any:
    """A block's normalize-and-activate step with no cache (a sampling forward): silu of group norm,
    modulated by AdaGN when scale and shift are given.

    Math: y = silu(h),  h = GN(x) (group_norm_forward),  or h = GN(x) * (1 + scale) + shift
          (scale_shift_forward),  silu(h) = h * sigmoid(h)

    x: (N, ..., C); gamma, beta: (C,); scale, shift: (N, C), both or neither. Returns y like x. The
    textbook form runs the layers' forwards in turn and drops their caches; the speed form
    (refdiff.layers.fast.group_norm_silu) folds the two affine maps into one and computes the SiLU
    with one tanh, in seven passes over the activation.
    """
    _check_group_norm(x, gamma, beta, groups, eps)
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift must be given together (AdaGN) or both be None, got "
                         f"scale {'None' if scale is None else tuple(scale.shape)}, "
                         f"shift {'None' if shift is None else tuple(shift.shape)}")
    if scale is not None:
        check_shape("scale", scale, (x.shape[0], x.shape[-1]))
        check_shape("shift", shift, (x.shape[0], x.shape[-1]))
    if speed.enabled():
        return fast.group_norm_silu(x, gamma, beta, groups, eps, scale, shift)
    h, _ = group_norm_forward(x, gamma, beta, groups, eps)
    if scale is not None:
        h, _ = scale_shift_forward(h, scale, shift)
    return silu_forward(h)[0]


def sum_over_space(a: Any) -> Any:
    """Sum of an (N, ..., C) activation over its spatial axes: the gradient of a per-sample (N, C)
    vector broadcast over space (a ResBlock's embedding added to h).

    Math: out[n, c] = sum over (...) of a[n, ..., c]

    a: (N, ..., C) (any number of spatial axes, or none). Returns (N, C) like a.
    """
    if speed.enabled():
        return fast.sum_over_space(a)
    xp = namespace(a)
    N, C = a.shape[0], a.shape[-1]
    return xp.sum(xp.reshape(a, (N, math.prod(a.shape[1:-1]), C)), axis=1)  # (N, S, C) -> (N, C)
