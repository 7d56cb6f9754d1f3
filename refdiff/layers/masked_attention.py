"""Multi-head attention over a token sequence with a key padding mask, and with extra context keys and values.

Two forward/backward pairs on sequences x (N, L, C) (Vaswani et al. 2017, eqs. 1-2):

- ``masked_self_attention_*``: the self-attention of refdiff.layers.attention with a key padding mask
  (True where a key is a real token): masked keys get the score -inf before the softmax, so they get no
  weight. A query whose keys are all masked attends to nothing: its weights are all 0, its attention
  output is 0 (the layer returns b_out there) and no gradient flows through it. (The plain softmax of a
  row of -inf is 0/0 = NaN; torch 2.13's scaled_dot_product_attention also gives such a row zero weights.)
- ``context_attention_*``: the keys and values are the concatenation of a context's, projected by this
  layer's own w_kv, in front of the sequence's own: GLIDE's ``encoder_kv`` (Nichol et al. 2021, Sec. 2.3:
  the text encoder's token sequence, projected per attention layer, is concatenated to its keys and
  values). Its backward returns the gradient of the context too.

The channel layouts are refdiff.layers.attention's: qkv = [q | k | v], the context's kv = [k | v], head h
owning channels h*d .. (h+1)*d of each block, d = C / heads. The derivation is the section "Masked
attention and context keys" of docs/derivations/attention.md, whose numbered steps are the comments here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import device, namespace, to_numpy
from refdiff.layers.attention import attend_backward, softmax
from refdiff.layers.basic import LinearCache, check_shape, linear_backward, linear_forward


def masked_softmax(s: Any, keep: Any) -> Any:
    """Softmax over the last axis over the kept entries only; a row with none kept is all zeros.

    Math: A_ij = exp(s_ij - m_i) / sum_{j kept} exp(s_ij - m_i) where keep_ij, else 0;
          m_i = max_{j kept} s_ij (s := -inf at masked entries, then m_i := 0 for a row with none kept)

    s: (..., Lk) scores; keep: bool, broadcasting against s. Returns A like s: rows sum to 1, or to 0
    where no entry is kept (never NaN).
    """
    xp = namespace(s)
    s = xp.where(keep, s, xp.asarray(-math.inf, dtype=s.dtype, device=device(s)))  # masked -> -inf
    has_key = xp.any(keep, axis=-1, keepdims=True)  # False for a row with no key to attend to
    m = xp.where(has_key, xp.max(s, axis=-1, keepdims=True), xp.zeros_like(s[..., :1]))  # no -inf - -inf
    e = xp.exp(s - m)  # exp(-inf) = 0 at masked entries
    z = xp.sum(e, axis=-1, keepdims=True)  # >= 1 where a key is kept, 0 where none is
    return e / xp.where(has_key, z, xp.ones_like(z))


class MaskedAttentionCache(NamedTuple):
    qkv_cache: LinearCache  # input projection: x (N*L, C), w_qkv
    kv_cache: LinearCache | None  # context projection: context (N*Lc, C_ctx), w_kv; None without context
    out_cache: LinearCache  # output projection: merged heads (N*L, C), w_out
    q: Any  # (N, heads, L, d)
    k: Any  # (N, heads, Lc + L, d): the context's keys first, then the sequence's own
    v: Any  # (N, heads, Lc + L, d)
    A: Any  # (N, heads, L, Lc + L) attention weights, 0 at masked keys
    scale: float  # 1 / sqrt(d)
    x_shape: tuple[int, ...]  # (N, L, C)
    context_shape: tuple[int, ...] | None  # (N, Lc, C_ctx), or None


# ------------------------------------------------------------------------------------- forward

def _split_heads(t2: Any, N: int, L: int, parts: int, heads: int) -> list:
    """(N*L, parts*C) projections -> ``parts`` arrays (N, heads, L, d), in the [q | k | v] layout."""
    xp = namespace(t2)
    d = t2.shape[1] // (parts * heads)
    t = xp.reshape(t2, (N, L, parts, heads, d))  # (N, L, parts, heads, d)
    t = xp.permute_dims(t, (2, 0, 3, 1, 4))  # (parts, N, heads, L, d)
    return [t[i, ...] for i in range(parts)]


def _attend(q: Any, k: Any, v: Any, keep: Any, scale: float) -> tuple[Any, Any]:
    """Steps 4-6: o = softmax(q k^T * scale) v per head, with masked keys given no weight."""
    xp = namespace(q, k, v)
    s = xp.matmul(q, xp.matrix_transpose(k)) * scale  # step 4: (N, heads, L, Lk)
    A = softmax(s) if keep is None else masked_softmax(s, keep)  # step 5: (N, heads, L, Lk)
    return xp.matmul(A, v), A  # step 6: (N, heads, L, d)


def _merge_and_project(o: Any, w_out: Any, b_out: Any) -> tuple[Any, LinearCache]:
    """Steps 7-8: merge the heads of o (N, heads, L, d) and project: y (N, L, C)."""
    xp = namespace(o)
    N, heads, L, d = o.shape
    o2 = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (N * L, heads * d))  # step 7: (N, L, heads, d) -> (N*L, C)
    y2, out_cache = linear_forward(o2, w_out, b_out)  # step 8: (N*L, C)
    return xp.reshape(y2, (N, L, heads * d)), out_cache  # (N, L, C)


def _keep(x: Any, mask: Any, context: Any, context_mask: Any) -> Any:
    """The kept keys (N, 1, 1, Lc + L), context's first, or None when nothing is masked."""
    if mask is None and context_mask is None:
        return None
    xp = namespace(x)
    N, L = x.shape[0], x.shape[1]
    own = xp.ones((N, L), dtype=xp.bool, device=device(x)) if mask is None else mask  # (N, L)
    parts = [own]
    if context is not None:
        Lc = context.shape[1]
        parts.insert(0, xp.ones((N, Lc), dtype=xp.bool, device=device(x)) if context_mask is None else context_mask)
    keep = xp.concat(parts, axis=1)  # (N, Lc + L)
    return xp.reshape(keep, (N, 1, 1, keep.shape[1]))  # broadcast over heads and queries


def masked_self_attention_forward(x: Any, w_qkv: Any, b_qkv: Any, w_out: Any, b_out: Any, heads: int,
                                  mask: Any = None) -> tuple[Any, MaskedAttentionCache]:
    """Multi-head self-attention over a sequence with a key padding mask.

    Math: [q | k | v] = x @ w_qkv + b_qkv;  per head h (d = C / heads channels):
          s_h = q_h k_h^T / sqrt(d),  s_h[i, j] = -inf where mask[j] is False
          A_h = softmax(s_h) (a row with no key: A_h = 0),  o_h = A_h v_h    (Vaswani et al. 2017, eqs. 1-2)
          y = concat_h(o_h) @ w_out + b_out

    x: (N, L, C); w_qkv: (C, 3C); b_qkv: (3C,); w_out: (C, C); b_out: (C,); heads divides C;
    mask: (N, L) bool, True where a key is a real token, or None (every key kept). Returns y like x.
    """
    _check(x, w_qkv, b_qkv, w_out, b_out, heads, mask)
    xp = namespace(x, w_qkv, b_qkv, w_out, b_out)
    N, L, C = x.shape
    scale = 1.0 / math.sqrt(C // heads)
    qkv, qkv_cache = linear_forward(xp.reshape(x, (N * L, C)), w_qkv, b_qkv)  # steps 1-2: (N*L, 3C)
    q, k, v = _split_heads(qkv, N, L, 3, heads)  # step 3: each (N, heads, L, d)
    o, A = _attend(q, k, v, _keep(x, mask, None, None), scale)  # steps 4-6
    y, out_cache = _merge_and_project(o, w_out, b_out)  # steps 7-8: (N, L, C)
    return y, MaskedAttentionCache(qkv_cache, None, out_cache, q, k, v, A, scale, tuple(x.shape), None)


def context_attention_forward(x: Any, context: Any, w_qkv: Any, b_qkv: Any, w_kv: Any, b_kv: Any, w_out: Any,
                              b_out: Any, heads: int, mask: Any = None,
                              context_mask: Any = None) -> tuple[Any, MaskedAttentionCache]:
    """Multi-head attention of a sequence over its own keys and a context's (GLIDE's encoder_kv).

    Math: [q | k | v] = x @ w_qkv + b_qkv,  [k_c | v_c] = context @ w_kv + b_kv
          K = [k_c ; k],  V = [v_c ; v]   (concatenated along the key axis, the context's first)
          per head: A_h = softmax(q_h K_h^T / sqrt(d)) with masked keys at -inf,  o_h = A_h V_h
          y = concat_h(o_h) @ w_out + b_out                                  (Nichol et al. 2021, Sec. 2.3)

    x: (N, L, C); context: (N, Lc, C_ctx); w_kv: (C_ctx, 2C); b_kv: (2C,); the rest as in
    masked_self_attention_forward; mask: (N, L) and context_mask: (N, Lc), bool or None. Returns y like x.
    """
    _check(x, w_qkv, b_qkv, w_out, b_out, heads, mask)
    _check_context(x, context, w_kv, b_kv, context_mask)
    xp = namespace(x, context, w_qkv, b_qkv, w_kv, b_kv, w_out, b_out)
    (N, L, C), Lc = x.shape, context.shape[1]
    scale = 1.0 / math.sqrt(C // heads)
    qkv, qkv_cache = linear_forward(xp.reshape(x, (N * L, C)), w_qkv, b_qkv)  # steps 1-2: (N*L, 3C)
    q, k, v = _split_heads(qkv, N, L, 3, heads)  # step 3a: each (N, heads, L, d)
    kv, kv_cache = linear_forward(xp.reshape(context, (N * Lc, context.shape[2])), w_kv, b_kv)  # (N*Lc, 2C)
    k_c, v_c = _split_heads(kv, N, Lc, 2, heads)  # step 3b: each (N, heads, Lc, d)
    K, V = xp.concat((k_c, k), axis=2), xp.concat((v_c, v), axis=2)  # step 3c: (N, heads, Lc + L, d)
    o, A = _attend(q, K, V, _keep(x, mask, context, context_mask), scale)  # steps 4-6
    y, out_cache = _merge_and_project(o, w_out, b_out)  # steps 7-8: (N, L, C)
    return y, MaskedAttentionCache(qkv_cache, kv_cache, out_cache, q, K, V, A, scale, tuple(x.shape),
                                   tuple(context.shape))


# ------------------------------------------------------------------------------------ backward

def _attend_backward(dy: Any, cache: MaskedAttentionCache) -> tuple[Any, Any, Any, Any, Any]:
    """Steps 8-4 back: returns (dq, dK, dV, dw_out, db_out), dK and dV over all Lc + L keys.

    Math: do = dy w_out^T;  dA = do V^T,  dV = A^T do;  ds = A * (dA - rowsum(dA * A));
          dq = ds K / sqrt(d),  dK = ds^T q / sqrt(d)
    A is 0 at masked keys and in rows with no key, so ds is 0 there: no mask is needed here.
    """
    xp = namespace(dy)
    q, K, V, A, scale = cache.q, cache.k, cache.v, cache.A, cache.scale
    N, heads, L, d = q.shape
    do2, dw_out, db_out = linear_backward(xp.reshape(dy, (N * L, heads * d)), cache.out_cache)  # step 8
    do = xp.permute_dims(xp.reshape(do2, (N, L, heads, d)), (0, 2, 1, 3))  # step 7: (N, heads, L, d)
    dq, dK, dV = attend_backward(do, q, K, V, A, scale)  # steps 6-4
    return dq, dK, dV, dw_out, db_out


def _merge_heads(parts: tuple, N: int, L: int) -> Any:
    """The inverse of _split_heads: ``parts`` arrays (N, heads, L, d) -> (N*L, parts*C)."""
    xp = namespace(*parts)
    heads, d = parts[0].shape[1], parts[0].shape[3]
    t = xp.permute_dims(xp.stack(parts, axis=0), (1, 3, 0, 2, 4))  # (parts, N, heads, L, d) -> (N, L, parts, heads, d)
    return xp.reshape(t, (N * L, len(parts) * heads * d))


def masked_self_attention_backward(dy: Any, cache: MaskedAttentionCache) -> tuple[Any, Any, Any, Any, Any]:
    """Gradients of masked_self_attention_forward: returns (dx, dw_qkv, db_qkv, dw_out, db_out).

    Math (docs/derivations/attention.md), per head: the steps of self_attention_backward, with A = 0 at
    masked keys. dy: (N, L, C). Returns dx like x, dw_qkv (C, 3C), db_qkv (3C,), dw_out (C, C), db_out (C,).
    """
    xp = namespace(dy)
    N, L, C = cache.x_shape
    dq, dk, dv, dw_out, db_out = _attend_backward(dy, cache)  # steps 8-4
    dqkv = _merge_heads((dq, dk, dv), N, L)  # step 3: (N*L, 3C)
    dx2, dw_qkv, db_qkv = linear_backward(dqkv, cache.qkv_cache)  # steps 2-1: (N*L, C)
    return xp.reshape(dx2, (N, L, C)), dw_qkv, db_qkv, dw_out, db_out


def context_attention_backward(dy: Any, cache: MaskedAttentionCache) -> tuple[Any, ...]:
    """Gradients of context_attention_forward: returns
    (dx, dcontext, dw_qkv, db_qkv, dw_kv, db_kv, dw_out, db_out).

    Math (docs/derivations/attention.md): steps 8-4 over all Lc + L keys; step 3c splits dK, dV back into
    the context's first Lc keys and the sequence's own L; steps 3b and 3a-1 are the two projections'
    backwards. dy: (N, L, C). Returns dx like x, dcontext like context, and each weight's gradient.
    """
    xp = namespace(dy)
    N, L, C = cache.x_shape
    Lc, C_ctx = cache.context_shape[1], cache.context_shape[2]
    dq, dK, dV, dw_out, db_out = _attend_backward(dy, cache)  # steps 8-4
    dk_c, dk = dK[:, :, :Lc, :], dK[:, :, Lc:, :]  # step 3c: (N, heads, Lc, d), (N, heads, L, d)
    dv_c, dv = dV[:, :, :Lc, :], dV[:, :, Lc:, :]
    dkv = _merge_heads((dk_c, dv_c), N, Lc)  # step 3b: (N*Lc, 2C)
    dcontext2, dw_kv, db_kv = linear_backward(dkv, cache.kv_cache)  # (N*Lc, C_ctx)
    dqkv = _merge_heads((dq, dk, dv), N, L)  # step 3a: (N*L, 3C)
    dx2, dw_qkv, db_qkv = linear_backward(dqkv, cache.qkv_cache)  # steps 2-1: (N*L, C)
    dx, dcontext = xp.reshape(dx2, (N, L, C)), xp.reshape(dcontext2, (N, Lc, C_ctx))
    return dx, dcontext, dw_qkv, db_qkv, dw_kv, db_kv, dw_out, db_out


# -------------------------------------------------------------------------------------- checks

def _check_mask(name: str, mask: Any, N: int, L: int) -> None:
    if mask is None:
        return
    if tuple(mask.shape) != (N, L) or not namespace(mask).isdtype(mask.dtype, "bool"):
        raise ValueError(f"{name} must be None or an ({N}, {L}) bool array (True where a key is a real token), "
                         f"got shape {tuple(mask.shape)} and dtype {mask.dtype}")


def _check(x: Any, w_qkv: Any, b_qkv: Any, w_out: Any, b_out: Any, heads: int, mask: Any) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must be a sequence (N, L, C), got shape {tuple(x.shape)}")
    N, L, C = x.shape
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or C % heads != 0:
        raise ValueError(f"heads must be a positive integer dividing C = {C}, got {heads!r}")
    check_shape("w_qkv", w_qkv, (C, 3 * C))
    check_shape("b_qkv", b_qkv, (3 * C,))
    check_shape("w_out", w_out, (C, C))
    check_shape("b_out", b_out, (C,))
    _check_mask("mask", mask, N, L)


def _check_context(x: Any, context: Any, w_kv: Any, b_kv: Any, context_mask: Any) -> None:
    N, C = x.shape[0], x.shape[2]
    if context.ndim != 3 or context.shape[0] != N or context.shape[1] < 1:
        raise ValueError(f"context must be a sequence (N, Lc, C_ctx) with N = {N} (x's batch) and Lc >= 1, "
                         f"got shape {tuple(context.shape)}")
    check_shape("w_kv", w_kv, (context.shape[2], 2 * C))
    check_shape("b_kv", b_kv, (2 * C,))
    _check_mask("context_mask", context_mask, N, context.shape[1])


# ------------------------------------------------------------------------------------- the oracle

def context_attention_forward_naive(x: Any, w_qkv: Any, b_qkv: Any, w_out: Any, b_out: Any, heads: int,
                                    mask: Any = None, context: Any = None, w_kv: Any = None, b_kv: Any = None,
                                    context_mask: Any = None) -> np.ndarray:
    """Masked (context) attention as a loop over samples, heads and queries on host NumPy: the test oracle.

    Inputs of any backend are copied to the host; returns y (N, L, C) as a NumPy array of x's dtype. Each
    query's softmax runs over the list of its kept keys only (the context's, then its own); a query with
    none gets o = 0. No -inf, no batching, no permutes: q, k, v are column slices of the projections.
    """
    host = [None if a is None else to_numpy(a) for a in (x, w_qkv, b_qkv, w_out, b_out, mask, context, w_kv,
                                                         b_kv, context_mask)]
    x, w_qkv, b_qkv, w_out, b_out, mask, context, w_kv, b_kv, context_mask = host
    N, L, C = x.shape
    d = C // heads
    y = np.empty_like(x)
    for n in range(N):
        qkv = x[n] @ w_qkv + b_qkv  # (L, 3C) = [q | k | v]
        keys, values, kept = qkv[:, C:2 * C], qkv[:, 2 * C:], np.ones(L, bool) if mask is None else mask[n]
        if context is not None:
            kv = context[n] @ w_kv + b_kv  # (Lc, 2C) = [k | v]
            keys, values = np.concatenate([kv[:, :C], keys]), np.concatenate([kv[:, C:], values])
            kept_c = np.ones(len(kv), bool) if context_mask is None else context_mask[n]
            kept = np.concatenate([kept_c, kept])
        o = np.zeros((L, C), dtype=x.dtype)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(L):
                js = [j for j in range(len(kept)) if kept[j]]
                if not js:
                    continue  # no key to attend to: o stays 0
                s = np.array([qkv[i, cols] @ keys[j, cols] for j in js]) / math.sqrt(d)
                a = np.exp(s - s.max())
                o[i, cols] = sum(w * values[j, cols] for w, j in zip(a / a.sum(), js))
        y[n] = o @ w_out + b_out
    return y
