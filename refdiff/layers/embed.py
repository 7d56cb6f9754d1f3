"""Conditioning inputs: sinusoidal timestep embeddings, class-label embeddings and token embeddings.

The timestep embedding is the transformer's positional encoding (Vaswani et al. 2017, Sec. 3.5) as
DDPM and ADM use it for t; its [cos, sin] vs [sin, cos] order is a switch (docs/design.md rule 7,
docs/conventions.md). The label embedding has one row more than there are classes: label K is the
"null" label that classifier-free guidance trains with and samples with (Ho & Salimans 2022). The
token embedding is the same lookup over an (N, L) array of token ids (a text encoder's input); both
backwards are the scatter-add of the output's gradient into the table's rows.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import asarray, device, namespace

ORDERS = ("cos_sin", "sin_cos")


def timestep_embedding(t: Any, dim: int, max_period: float = 10000, order: str = "cos_sin",
                       dtype: Any = None) -> Any:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Math: half = dim // 2,  freqs_i = exp(-log(max_period) * i / half) for i in [0, half)
          args = t[:, None] * freqs[None, :]
          "cos_sin": [cos(args), sin(args)]  (OpenAI's improved/guided-diffusion; the default)
          "sin_cos": [sin(args), cos(args)]  (diffusers' get_timestep_embedding with its default
                      flip_sin_to_cos=False, when called with downscale_freq_shift=0)
          an odd dim gets one zero column at the end.

    t: (N,) integer or float steps, any backend; dim >= 1; dtype: a real floating dtype of t's
    namespace, float32 if None. Returns (N, dim) of that dtype on t's device. The frequencies are
    computed once on the host in float64 and cast there, so a float32 request creates no float64
    array on the device (docs/design.md rule 6). No gradient: t is not a learned input.
    """
    xp = namespace(t)
    dtype = xp.float32 if dtype is None else dtype
    if not xp.isdtype(dtype, "real floating"):
        raise ValueError(f"dtype must be a real floating dtype of t's namespace, got {dtype}")
    if t.ndim != 1 or not (xp.isdtype(t.dtype, "integral") or xp.isdtype(t.dtype, "real floating")):
        raise ValueError(f"t must be an (N,) integer or float array, got shape {tuple(t.shape)}, dtype {t.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not (isinstance(max_period, (int, float)) and max_period > 0 and math.isfinite(max_period)):
        raise ValueError(f"max_period must be a positive finite number, got {max_period!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / max(half, 1))  # (half,)
    freqs = asarray(freqs, like=t, dtype=dtype)  # (half,) cast on the host, then moved to t's device
    args = xp.astype(t, dtype)[:, None] * freqs[None, :]  # (N, half)
    first, second = (xp.cos(args), xp.sin(args)) if order == "cos_sin" else (xp.sin(args), xp.cos(args))
    parts = [first, second]
    if dim % 2:
        parts.append(xp.zeros((t.shape[0], 1), dtype=dtype, device=device(t)))  # (N, 1) pad
    return xp.concat(parts, axis=1)  # (N, dim)


class EmbeddingCache(NamedTuple):
    y: Any  # (N,) integer labels
    rows: int  # K + 1, the table's row count


def _check_labels(y: Any, table: Any) -> None:
    xp = namespace(y, table)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"table must be (K + 1, C) (K classes plus the null label), got shape {tuple(table.shape)}")
    K = table.shape[0] - 1
    if y.ndim != 1 or not xp.isdtype(y.dtype, "integral"):
        raise ValueError(f"y must be an (N,) integer array of labels, got shape {tuple(y.shape)}, dtype {y.dtype}")
    if y.shape[0] > 0 and bool(xp.any((y < 0) | (y > K))):  # one device-to-host read on a GPU
        raise ValueError(f"y must hold labels in [0, {K}] ({K} classes, {K} = the null label), "
                         f"got values in [{int(xp.min(y))}, {int(xp.max(y))}]")


def embedding_forward(y: Any, table: Any) -> tuple[Any, EmbeddingCache]:
    """Look up one learned row per class label; label K is the null label (no class).

    Math: out[n] = table[y[n]]

    y: (N,) integer labels in [0, K]; table: (K + 1, C). Returns (N, C) like table.
    """
    _check_labels(y, table)
    xp = namespace(y, table)
    return xp.take(table, y, axis=0), EmbeddingCache(y, table.shape[0])  # (N, C)


def embedding_backward(dout: Any, cache: EmbeddingCache) -> Any:
    """Gradient of embedding_forward with respect to the table: returns dtable.

    Math: dtable[k] = sum over n with y[n] == k of dout[n],  i.e.  dtable = onehot(y)^T @ dout

    The one-hot matmul adds the rows of repeated labels without a scatter-add (which the Array API
    does not have, and whose atomics would make GPU results order dependent).
    dout: (N, C). Returns dtable (K + 1, C).
    """
    xp = namespace(dout)
    y, rows = cache
    onehot = xp.astype(y[:, None] == xp.arange(rows, device=device(y)), dout.dtype)  # (N, K + 1)
    return xp.matmul(xp.matrix_transpose(onehot), dout)  # (K + 1, N) @ (N, C) -> (K + 1, C)


class TokenEmbeddingCache(NamedTuple):
    ids: Any  # (N*L,) the token ids, flattened
    rows: int  # V, the vocabulary size
    shape: tuple[int, int]  # (N, L)


def token_embedding_forward(tokens: Any, table: Any) -> tuple[Any, TokenEmbeddingCache]:
    """Look up one learned row per token of a sequence.

    Math: out[n, l] = table[tokens[n, l]]

    tokens: (N, L) integer ids in [0, V); table: (V, C). Returns (N, L, C) like table.
    """
    xp = namespace(tokens, table)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"table must be (V, C) (one row per token id), got shape {tuple(table.shape)}")
    V = table.shape[0]
    if tokens.ndim != 2 or not xp.isdtype(tokens.dtype, "integral"):
        raise ValueError(f"tokens must be an (N, L) integer array of token ids, got shape {tuple(tokens.shape)}, "
                         f"dtype {tokens.dtype}")
    if tokens.size > 0 and bool(xp.any((tokens < 0) | (tokens >= V))):  # one device-to-host read on a GPU
        raise ValueError(f"tokens must hold ids in [0, {V - 1}] (V = {V} rows of table), "
                         f"got values in [{int(xp.min(tokens))}, {int(xp.max(tokens))}]")
    N, L = tokens.shape
    ids = xp.reshape(tokens, (N * L,))  # (N*L,)
    out = xp.reshape(xp.take(table, ids, axis=0), (N, L, table.shape[1]))  # (N*L, C) -> (N, L, C)
    return out, TokenEmbeddingCache(ids, V, (N, L))


def token_embedding_backward(dout: Any, cache: TokenEmbeddingCache) -> Any:
    """Gradient of token_embedding_forward with respect to the table: returns dtable.

    Math: dtable[v] = sum over (n, l) with tokens[n, l] == v of dout[n, l]  (a scatter-add)

    embedding_backward's one-hot product over the N*L flattened tokens: a word that occurs several times
    adds up all its rows' gradients. dout: (N, L, C). Returns dtable (V, C).
    """
    xp = namespace(dout)
    ids, rows, (N, L) = cache
    dout2 = xp.reshape(dout, (N * L, dout.shape[-1]))  # (N*L, C)
    return embedding_backward(dout2, EmbeddingCache(ids, rows))  # (V, C)
