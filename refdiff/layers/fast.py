"""The speed layer of refdiff.layers: faster forms of the textbook layer functions, each tested equal
to the function it speeds up (tests/test_layers_fast.py).

The textbook form is the one a reader meets: a public function of refdiff.layers.basic or .norm that
starts with ``if speed.enabled(): return fast.<its name>(...)`` and then computes its math one
derivative step a line. The forms here compute the same numbers with fewer passes over memory
(measurements: docs/performance.md):

- sums over rows as a product with a ones vector (``column_sums``): BLAS streams the rows at memory
  speed, where NumPy's reduction along a non-last axis is 2-9x slower;
- in-place arithmetic in one temporary (``sigmoid``, ``silu_backward``);
- group norm's fused forward and closed-form backward: three passes over the activation where the
  step-by-step chain makes a dozen (docs/derivations/group_norm.md, "The speed form");
- a sampling forward's group norm, AdaGN and SiLU in one (``group_norm_silu``): one affine map, one
  tanh, passes on rows of several pixels; seven passes where the three layers make eleven
  (docs/derivations/group_norm.md, "Normalize and activate in one").

conv2d's speed forms (im2col for thin inputs, the backward as long products) share the window
geometry of its textbook forms, so they stay in refdiff/layers/conv.py, in its "speed layer" section;
the flat grid they compute on at stride 1 is refdiff/layers/conv_grid.py.
Which form runs is refdiff.speed's switch: ``REFDIFF_REFERENCE=1`` or ``with speed.reference_path():``
selects the textbook forms. The public function validates its arguments; the forms here trust them.
"""

from __future__ import annotations

import math
from typing import Any

from refdiff.backend import device, namespace


def column_sums(a: Any) -> Any:
    """Speed form of ``xp.sum(a, axis=-2)``: sums over the second-to-last axis, (..., M, C) -> (..., C).

    Math: out[..., c] = sum_m a[..., m, c] = (1^T a)[..., c], a product with a ones vector

    The product also rounds less than a sequential sum: BLAS accumulates in blocks.
    """
    xp = namespace(a)
    ones = xp.ones((1, a.shape[-2]), dtype=a.dtype, device=device(a))  # (1, M)
    return (ones @ a)[..., 0, :]  # (..., 1, C) -> (..., C)


def linear_backward(dy: Any, cache: Any) -> tuple[Any, Any, Any]:
    """Speed form of refdiff.layers.basic.linear_backward: db = sum over rows of dy by column_sums."""
    xp = namespace(dy)
    x2, w, x_shape = cache
    dy2 = xp.reshape(dy, (x2.shape[0], w.shape[1]))  # (M, C_out)
    dx = xp.reshape(xp.matmul(dy2, xp.matrix_transpose(w)), x_shape)  # (M, C_in) -> (..., C_in)
    dw = xp.matmul(xp.matrix_transpose(x2), dy2)  # (C_in, C_out)
    return dx, dw, column_sums(dy2)


def sigmoid(x: Any) -> Any:
    """Speed form of refdiff.layers.basic.sigmoid: the same (1 + tanh(x / 2)) / 2, in place in one
    temporary (the same operations in the same order, so the same numbers)."""
    s = namespace(x).tanh(x * 0.5)
    s *= 0.5
    s += 0.5
    return s


def silu_backward(dy: Any, cache: Any) -> Any:
    """Speed form of refdiff.layers.basic.silu_backward: dx = sig * (1 + x * (1 - sig)) * dy, the
    textbook's dy * (sig + x * sig * (1 - sig)) with sig factored out, built in place in one temporary."""
    x, sig = cache
    g = 1.0 - sig
    g *= x
    g += 1.0
    g *= sig
    g *= dy
    return g


def sum_over_space(a: Any) -> Any:
    """Speed form of refdiff.layers.norm.sum_over_space: (N, ..., C) -> (N, C) by column_sums."""
    xp = namespace(a)
    N, C = a.shape[0], a.shape[-1]
    return column_sums(xp.reshape(a, (N, math.prod(a.shape[1:-1]), C)))  # (N, S, C) -> (N, C)


def scale_shift_backward(dy: Any, cache: Any) -> tuple[Any, Any, Any]:
    """Speed form of refdiff.layers.norm.scale_shift_backward: the sums over space by column_sums."""
    xp = namespace(dy)
    h3, scale3, h_shape = cache
    dy3 = xp.reshape(dy, tuple(h3.shape))  # (N, S, C)
    dh = xp.reshape(dy3 * (1.0 + scale3), h_shape)  # (N, ..., C)
    return dh, column_sums(dy3 * h3), column_sums(dy3)  # dscale, dshift: (N, C)


def _group_sum(a: Any, groups: int) -> Any:
    """sum over the spatial axis and the channels of each group: (N, S, C) -> (N, 1, G, 1).

    Two reductions, each over one axis: over space (every channel separately, column_sums), then
    over the C/G channels of each group in the small (N, G, C/G) result. The same sum as one
    reduction over the (S, C/G) axes of (N, S, G, C/G), which NumPy runs 3-10x slower.
    """
    xp = namespace(a)
    N, C = a.shape[0], a.shape[-1]
    per_channel = xp.reshape(column_sums(a), (N, 1, groups, C // groups))  # (N, 1, G, C/G)
    return xp.sum(per_channel, axis=3, keepdims=True)  # (N, 1, G, 1)


def _per_channel(a: Any, Cg: int) -> Any:
    """A per-group value (N, 1, G, 1) repeated for each of the group's C/G channels: (N, 1, C).

    Elementwise passes over (N, S, C) against an (N, 1, C) factor run along all C channels at once;
    against (N, 1, G, 1) they would run along C/G (2-12 in the U-Nets), 1.1-3.4x slower (measured
    in docs/performance.md).
    """
    xp = namespace(a)
    N, _, G, _ = a.shape
    return xp.reshape(xp.broadcast_to(a, (N, 1, G, Cg)), (N, 1, G * Cg))  # (N, 1, G, C/G) -> (N, 1, C)


# Elementwise passes against a per-sample, per-channel factor run on rows of up to this many numbers
# where the spatial size allows (_long_rows). Whole sampling forwards, one thread (docs/performance.md):
# 64 and 128 measured fastest, 256 and 512 1-2% slower (the repeated factors cost more), rows of one
# pixel 2-3% slower.
LONG_ROW = 128


def _long_rows(S: int, C: int) -> int:
    """R, the largest divisor of S with R C <= LONG_ROW (1 when none above 1 fits): an (N, S, C)
    activation viewed as (N, S / R, R C) rows of R pixels.

    NumPy's elementwise loops run along the last axis only: against an (N, 1, C) factor an (N, S, C)
    pass makes N S loops of C numbers (16-64 in the U-Nets), 2-4x a same-shape pass. Rows R times
    longer take the factor repeated R times (along_rows): N R C numbers to copy, next to the pass's N S C.
    """
    return max(R for R in range(1, max(1, LONG_ROW // C) + 1) if S % R == 0)


def along_rows(f: Any, R: int) -> Any:
    """A per-channel factor f (..., C) against rows of R pixels: (..., R C), f repeated R times along
    its last axis (a bias (C,), or a per-sample factor (N, 1, C))."""
    xp = namespace(f)
    lead, C = tuple(f.shape[:-1]), f.shape[-1]
    return xp.reshape(xp.broadcast_to(xp.reshape(f, lead + (1, C)), lead + (R, C)), lead + (R * C,))


def _centred(x: Any, groups: int) -> tuple[Any, Any]:
    """Group norm's steps 1-4 on x (N, ..., C): xc = x - mu as (N, S / R, R C) rows of R pixels (R from
    _long_rows, read back as xc.shape[-1] // C), and var (N, 1, G, 1), the biased variance of each
    sample's groups; the means by _group_sum."""
    xp = namespace(x)
    N, C = x.shape[0], x.shape[-1]
    S, Cg = math.prod(x.shape[1:-1]), C // groups
    M, R = S * Cg, _long_rows(S, C)
    mu = _group_sum(xp.reshape(x, (N, S, C)), groups) / M  # step 2: (N, 1, G, 1)
    xc = xp.reshape(x, (N, S // R, R * C)) - along_rows(_per_channel(mu, Cg), R)  # step 3: (N, S / R, R C)
    return xc, _group_sum(xp.reshape(xc * xc, (N, S, C)), groups) / M  # step 4


def group_norm_silu(x: Any, gamma: Any, beta: Any, groups: int, eps: float, scale: Any, shift: Any) -> Any:
    """Speed form of refdiff.layers.norm.group_norm_silu: silu(GN(x) [* (1 + scale) + shift]), no cache.

    Math (docs/derivations/group_norm.md, "Normalize and activate in one"): per sample n and channel c,
          h = xc * a + b,   a = rstd * gamma * (1 + scale),   b = beta * (1 + scale) + shift
    (GN's affine and AdaGN's in one; scale = shift = 0 without AdaGN), and with u = h / 2
          silu(h) = h * (1 + tanh(h / 2)) / 2 = u + u * tanh(u)
    (the sigmoid as refdiff.layers.basic.sigmoid writes it). The per-group statistics as in
    group_norm_forward (_centred); the passes against a, b and mu on rows of R pixels (_long_rows). Seven passes over
    the activation where the three layers make eleven (nine without AdaGN), three arrays allocated where
    they allocate eight (six).
    """
    xp = namespace(x, gamma, beta)
    N, C, Cg = x.shape[0], x.shape[-1], x.shape[-1] // groups
    xc, var = _centred(x, groups)  # (N, S / R, R C) rows, (N, 1, G, 1)
    R = xc.shape[-1] // C
    a = _per_channel(1.0 / xp.sqrt(var + eps), Cg) * gamma  # (N, 1, C): rstd * gamma
    b = xp.broadcast_to(beta, (N, 1, C))
    if scale is not None:  # AdaGN folded into GN's affine map
        scale, shift = xp.reshape(scale, (N, 1, C)), xp.reshape(shift, (N, 1, C))
        a, b = a * (1.0 + scale), b * (1.0 + scale) + shift
    u = xc  # in place: u = (xc * a + b) / 2
    u *= along_rows(0.5 * a, R)
    u += along_rows(0.5 * b, R)
    y = xp.tanh(u)
    y *= u
    y += u
    return xp.reshape(y, tuple(x.shape))


def group_norm_forward(x: Any, gamma: Any, beta: Any, groups: int, eps: float) -> tuple[Any, Any]:
    """Speed form of refdiff.layers.norm.group_norm_forward (its steps 1-7, the same cache).

    The means of steps 2 and 4 by _group_sum; steps 6-7 fused as y = xc * (rstd * gamma) + beta,
    the per-channel factor formed first, so the activation-sized arrays are touched twice instead of
    three times. The per-group values are repeated per channel (_per_channel) and the passes against
    them run on rows of R pixels (_long_rows); the cache holds xc as the (N, S, G, C/G) view the
    textbook form keeps.
    """
    from refdiff.layers.norm import GroupNormCache  # imported here: refdiff.layers.norm imports this module

    xp = namespace(x, gamma, beta)
    N, C = x.shape[0], x.shape[-1]
    S, Cg = math.prod(x.shape[1:-1]), C // groups
    xc, var = _centred(x, groups)  # steps 1-4: (N, S / R, R C) rows, (N, 1, G, 1)
    R = xc.shape[-1] // C
    rstd = 1.0 / xp.sqrt(var + eps)  # step 5: (N, 1, G, 1)
    y = xc * along_rows(_per_channel(rstd, Cg) * gamma, R)  # steps 6-7: (N, S / R, R C)
    y += along_rows(beta, R)
    return xp.reshape(y, tuple(x.shape)), GroupNormCache(xp.reshape(xc, (N, S, groups, Cg)), rstd, gamma,
                                                         tuple(x.shape))


def group_norm_backward(dy: Any, cache: Any) -> tuple[Any, Any, Any]:
    """Speed form of refdiff.layers.norm.group_norm_backward: steps 6-1 in closed form.

    Math (docs/derivations/group_norm.md, "The speed form"), per sample and group, dxhat = dy * gamma:
          dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
             = (rstd * gamma) * dy + b * xc + c,  b and c one number per sample and group
    from two per-channel sums over space, sum(dy) and sum(dy * xc), which also give dgamma and dbeta
    (sum(dy * xhat) = rstd * sum(dy * xc)): three passes over the activation, on rows of R pixels.
    """
    xp = namespace(dy)
    xc, rstd, gamma, x_shape = cache
    N, S, G, Cg = xc.shape
    C, M = G * Cg, S * Cg
    dy3, xc3 = xp.reshape(dy, (N, S, C)), xp.reshape(xc, (N, S, C))  # (N, S, C)
    sum_dy = xp.reshape(column_sums(dy3), (N, 1, G, Cg))  # per channel
    sum_dy_xc = xp.reshape(column_sums(dy3 * xc3), (N, 1, G, Cg))
    # step 7: the parameters' gradients sum over samples and space
    dbeta = xp.reshape(xp.sum(sum_dy, axis=0), (C,))  # (C,)
    dgamma = xp.reshape(xp.sum(sum_dy_xc * rstd, axis=0), (C,))  # (C,)
    # steps 6-1: mean(dxhat) and mean(dxhat * xhat) per sample and group
    a = rstd * xp.reshape(gamma, (G, Cg))  # (N, 1, G, C/G): rstd * dxhat = a * dy
    mean_a_dy = xp.sum(sum_dy * a, axis=3, keepdims=True) / M  # rstd * mean(dxhat): (N, 1, G, 1)
    mean_dxhat_xhat = rstd * xp.sum(sum_dy_xc * a, axis=3, keepdims=True) / M  # rstd * mean(dxhat * xhat)
    R = _long_rows(S, C)
    dy_r, xc_r = xp.reshape(dy, (N, S // R, R * C)), xp.reshape(xc, (N, S // R, R * C))  # rows of R pixels
    dx = dy_r * along_rows(xp.reshape(a, (N, 1, C)), R)  # a * dy - mean(a * dy) cancels exactly for M = 1
    dx += xc_r * along_rows(_per_channel(-rstd * mean_dxhat_xhat, Cg), R)  # - rstd xhat mean(dxhat xhat)
    dx += along_rows(_per_channel(-mean_a_dy, Cg), R)  # - rstd * mean(dxhat)
    return xp.reshape(dx, x_shape), dgamma, dbeta
