"""Layer normalization over the last axis (Ba et al. 2016), as a forward/backward pair.

Every token (or vector) of an (..., C) activation is normalized over its own C channels: the
normalization of the transformer's blocks (Vaswani et al. 2017; pre-norm as in GPT-2 and GLIDE's text
encoder). It is group norm with one group and no spatial axes (refdiff.layers.norm), written out on its
own because the transformer reads it per token. The backward is derived step by step in
docs/derivations/layer_norm.md; the numbered steps there are the numbered comments here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.layers.basic import check_shape


class LayerNormCache(NamedTuple):
    xc: Any  # (M, C) the input minus its per-row mean, leading axes flattened
    rstd: Any  # (M, 1) 1 / sqrt(var + eps) per row
    gamma: Any  # (C,)
    x_shape: tuple[int, ...]  # (..., C)


def _check_layer_norm(x: Any, gamma: Any, beta: Any, eps: float) -> None:
    if x.ndim < 1:
        raise ValueError("x must have a channel axis (..., C), got a 0-d array")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    check_shape("gamma", gamma, (x.shape[-1],))
    check_shape("beta", beta, (x.shape[-1],))


def layer_norm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, LayerNormCache]:
    """Layer normalization of the last axis, as torch.nn.LayerNorm(C) (biased variance, eps inside the root).

    Math: for each row (one token's C channels):
          mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
          y = xhat * gamma + beta                                             (Ba et al. 2016, eqs. 3-4)

    x: (..., C); gamma, beta: (C,). Returns y like x. eps keeps 1 / sqrt(var + eps) finite for a
    constant row (var = 0); 1e-5 is torch's default and GLIDE's.
    """
    _check_layer_norm(x, gamma, beta, eps)
    xp = namespace(x, gamma, beta)
    C = x.shape[-1]
    x2 = xp.reshape(x, (math.prod(x.shape[:-1]), C))  # step 1: (M, C), leading axes flattened
    mu = xp.mean(x2, axis=1, keepdims=True)  # step 2: (M, 1)
    xc = x2 - mu  # step 3: (M, C)
    var = xp.mean(xc * xc, axis=1, keepdims=True)  # step 4: (M, 1), biased
    rstd = 1.0 / xp.sqrt(var + eps)  # step 5: (M, 1)
    xhat = xc * rstd  # step 6: (M, C)
    y = xhat * gamma + beta  # step 7: (M, C)
    return xp.reshape(y, tuple(x.shape)), LayerNormCache(xc, rstd, gamma, tuple(x.shape))


def layer_norm_backward(dy: Any, cache: LayerNormCache) -> tuple[Any, Any, Any]:
    """Gradients of layer_norm_forward: returns (dx, dgamma, dbeta), through its steps 7 to 1.

    Math (docs/derivations/layer_norm.md), mean_c over the C channels of one row:
          dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy,  dxhat = dy * gamma
          dxc = dxhat * rstd + (2 / C) xc dvar,  dvar = -rstd^3 / 2 * sum_c(dxhat * xc)
          dx = dxc - mean_c(dxc)
    which adds up to dx = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat)).

    dy: like x. Returns dx like x, dgamma (C,), dbeta (C,).
    """
    xp = namespace(dy)
    xc, rstd, gamma, x_shape = cache
    C = xc.shape[1]
    dy2 = xp.reshape(dy, tuple(xc.shape))  # (M, C)
    xhat = xc * rstd  # the forward's step 6 again: (M, C)
    # step 7: y = xhat * gamma + beta; gamma and beta are shared by all rows
    dgamma = xp.sum(dy2 * xhat, axis=0)  # (C,)
    dbeta = xp.sum(dy2, axis=0)  # (C,)
    dxhat = dy2 * gamma  # (M, C)
    # step 6: xhat = xc * rstd, two paths to x
    dxc = dxhat * rstd  # (M, C)
    drstd = xp.sum(dxhat * xc, axis=1, keepdims=True)  # (M, 1)
    # step 5: rstd = (var + eps)^(-1/2)
    dvar = -0.5 * rstd**3 * drstd  # (M, 1)
    # step 4: var = mean_c(xc^2)
    dxc = dxc + (2.0 / C) * xc * dvar  # (M, C)
    # step 3: xc = x2 - mu
    dmu = -xp.sum(dxc, axis=1, keepdims=True)  # (M, 1)
    # step 2: mu = mean_c(x2)
    dx2 = dxc + dmu / C  # (M, C)
    # step 1: x2 = reshape(x)
    return xp.reshape(dx2, x_shape), dgamma, dbeta
