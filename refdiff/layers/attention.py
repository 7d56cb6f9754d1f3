"""Multi-head self-attention over spatial positions (Vaswani et al. 2017; ADM's AttentionBlock).

x (N, H, W, C) is read as a sequence of L = H * W tokens of C channels. The qkv projection's 3C
outputs are laid out as [q | k | v], each split into heads of d = C / heads channels: the order of
guided-diffusion's ``QKVAttention`` (its "new order") and of torch.nn.MultiheadAttention's
``in_proj_weight`` (transposed: ours is (C_in, C_out)). The residual connection and the group norm in
front belong to the model, not to this layer. The backward is derived in docs/derivations/attention.md,
whose numbered steps are the numbered comments here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import namespace, to_numpy
from refdiff.layers.basic import LinearCache, check_shape, linear_backward, linear_forward


def softmax(s: Any) -> Any:
    """Softmax over the last axis, with the row max subtracted.

    Math: A_ij = exp(s_ij - m_i) / sum_j exp(s_ij - m_i),  m_i = max_j s_ij

    Subtracting m_i changes nothing mathematically and makes every exponent <= 0, so logits of
    1e4 (exp overflows float32 past 88) give exp values in (0, 1] and a row sum >= 1: no inf, no NaN.
    """
    xp = namespace(s)
    e = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


class AttentionCache(NamedTuple):
    qkv_cache: LinearCache  # input projection: x (N*L, C), w_qkv
    out_cache: LinearCache  # output projection: merged heads (N*L, C), w_out
    q: Any  # (N, heads, L, d)
    k: Any  # (N, heads, L, d)
    v: Any  # (N, heads, L, d)
    A: Any  # (N, heads, L, L) attention weights
    scale: float  # 1 / sqrt(d)
    x_shape: tuple[int, ...]  # (N, H, W, C)


def _check_attention(x: Any, w_qkv: Any, b_qkv: Any, w_out: Any, b_out: Any, heads: int) -> None:
    if x.ndim < 3:
        raise ValueError(f"x must be (N, H, W, C) (at least one spatial axis), got shape {tuple(x.shape)}")
    C = x.shape[-1]
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or C % heads != 0:
        raise ValueError(f"heads must be a positive integer dividing C = {C}, got {heads!r}")
    check_shape("w_qkv", w_qkv, (C, 3 * C))
    check_shape("b_qkv", b_qkv, (3 * C,))
    check_shape("w_out", w_out, (C, C))
    check_shape("b_out", b_out, (C,))


def self_attention_forward(x: Any, w_qkv: Any, b_qkv: Any, w_out: Any, b_out: Any,
                           heads: int) -> tuple[Any, AttentionCache]:
    """Multi-head scaled dot-product self-attention with input and output projections.

    Math: [q | k | v] = x @ w_qkv + b_qkv;  per head h (d = C / heads channels):
          A_h = softmax(q_h k_h^T / sqrt(d)),  o_h = A_h v_h      (Vaswani et al. 2017, eqs. 1-2)
          y = concat_h(o_h) @ w_out + b_out

    x: (N, H, W, C); w_qkv: (C, 3C); b_qkv: (3C,); w_out: (C, C); b_out: (C,); heads divides C.
    Returns y like x (no residual: the model adds x).
    """
    _check_attention(x, w_qkv, b_qkv, w_out, b_out, heads)
    xp = namespace(x, w_qkv, b_qkv, w_out, b_out)
    N, C = x.shape[0], x.shape[-1]
    L, d = math.prod(x.shape[1:-1]), C // heads
    scale = 1.0 / math.sqrt(d)
    x2 = xp.reshape(x, (N * L, C))  # step 1: (N*L, C), tokens as rows
    qkv, qkv_cache = linear_forward(x2, w_qkv, b_qkv)  # step 2: (N*L, 3C)
    qkv = xp.reshape(qkv, (N, L, 3, heads, d))  # step 3: (N, L, 3, heads, d)
    qkv = xp.permute_dims(qkv, (2, 0, 3, 1, 4))  # (3, N, heads, L, d)
    q, k, v = qkv[0, ...], qkv[1, ...], qkv[2, ...]  # each (N, heads, L, d)
    s = xp.matmul(q, xp.matrix_transpose(k)) * scale  # step 4: (N, heads, L, L)
    A = softmax(s)  # step 5: (N, heads, L, L), rows sum to 1
    o = xp.matmul(A, v)  # step 6: (N, heads, L, d)
    o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (N * L, C))  # step 7: (N, L, heads, d) -> (N*L, C)
    y, out_cache = linear_forward(o, w_out, b_out)  # step 8: (N*L, C)
    y = xp.reshape(y, tuple(x.shape))  # (N, H, W, C)
    return y, AttentionCache(qkv_cache, out_cache, q, k, v, A, scale, tuple(x.shape))


def self_attention_backward(dy: Any, cache: AttentionCache) -> tuple[Any, Any, Any, Any, Any]:
    """Gradients of self_attention_forward: returns (dx, dw_qkv, db_qkv, dw_out, db_out).

    Math (docs/derivations/attention.md), per head:
          dA = do v^T,  dv = A^T do
          ds = A * (dA - rowsum(dA * A))          (softmax's Jacobian, applied row by row)
          dq = ds k / sqrt(d),  dk = ds^T q / sqrt(d)

    dy: (N, H, W, C). Returns dx like x, dw_qkv (C, 3C), db_qkv (3C,), dw_out (C, C), db_out (C,).
    """
    xp = namespace(dy)
    qkv_cache, out_cache, q, k, v, A, scale, x_shape = cache
    N, heads, L, d = q.shape
    C = heads * d
    dy2 = xp.reshape(dy, (N * L, C))  # step 8: (N*L, C)
    do, dw_out, db_out = linear_backward(dy2, out_cache)  # (N*L, C)
    do = xp.permute_dims(xp.reshape(do, (N, L, heads, d)), (0, 2, 1, 3))  # step 7: (N, heads, L, d)
    dq, dk, dv = attend_backward(do, q, k, v, A, scale)  # steps 6-4
    dqkv = xp.stack((dq, dk, dv), axis=0)  # step 3: (3, N, heads, L, d)
    dqkv = xp.permute_dims(dqkv, (1, 3, 0, 2, 4))  # (N, L, 3, heads, d)
    dqkv = xp.reshape(dqkv, (N * L, 3 * C))  # (N*L, 3C)
    dx2, dw_qkv, db_qkv = linear_backward(dqkv, qkv_cache)  # step 2: (N*L, C)
    dx = xp.reshape(dx2, x_shape)  # step 1: (N, H, W, C)
    return dx, dw_qkv, db_qkv, dw_out, db_out


def attend_backward(do: Any, q: Any, k: Any, v: Any, A: Any, scale: float) -> tuple[Any, Any, Any]:
    """Steps 6-4 of attention's backward, from do = dL/d(A v) to (dq, dk, dv); shared by every attention.

    Math: dA = do v^T,  dv = A^T do;  ds = A * (dA - rowsum(dA * A));  dq = ds k s,  dk = ds^T q s
    do, q: (N, heads, L, d); k, v: (N, heads, Lk, d); A: (N, heads, L, Lk); s = scale = 1 / sqrt(d).
    """
    xp = namespace(do)
    dA = xp.matmul(do, xp.matrix_transpose(v))  # step 6: (N, heads, L, Lk)
    dv = xp.matmul(xp.matrix_transpose(A), do)  # (N, heads, Lk, d)
    ds = A * (dA - xp.sum(dA * A, axis=-1, keepdims=True))  # step 5: (N, heads, L, Lk)
    dq = xp.matmul(ds, k) * scale  # step 4: (N, heads, L, d)
    dk = xp.matmul(xp.matrix_transpose(ds), q) * scale  # (N, heads, Lk, d)
    return dq, dk, dv


def self_attention_forward_naive(x: Any, w_qkv: Any, b_qkv: Any, w_out: Any, b_out: Any,
                                 heads: int) -> np.ndarray:
    """The same attention as a per-sample, per-head Python loop on host NumPy: the test oracle.

    Inputs of any backend are copied to the host; returns y (N, H, W, C) as a NumPy array of x's
    dtype. No batching, no permutes: q, k, v of one head are column slices of the qkv matrix.
    """
    _check_attention(x, w_qkv, b_qkv, w_out, b_out, heads)
    x, w_qkv, b_qkv, w_out, b_out = (to_numpy(a) for a in (x, w_qkv, b_qkv, w_out, b_out))
    N, C = x.shape[0], x.shape[-1]
    d = C // heads
    y = np.empty(x.shape[:1] + (math.prod(x.shape[1:-1]), C), dtype=x.dtype)  # (N, L, C)
    for n in range(N):
        tokens = x[n].reshape(-1, C)  # (L, C)
        qkv = tokens @ w_qkv + b_qkv  # (L, 3C) = [q | k | v]
        o = np.empty_like(tokens)  # (L, C)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            q, k, v = qkv[:, cols], qkv[:, C:][:, cols], qkv[:, 2 * C:][:, cols]  # each (L, d)
            s = q @ k.T / math.sqrt(d)  # (L, L)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            o[:, cols] = (e / e.sum(axis=1, keepdims=True)) @ v  # (L, d)
        y[n] = o @ w_out + b_out
    return y.reshape(x.shape)
