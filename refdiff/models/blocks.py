"""The U-Net's building blocks as forward/backward pairs: ADM's ResBlock, AttentionBlock, Downsample,
Upsample and output head (Dhariwal & Nichol 2021; improved DDPM's ``unet.py``, Nichol & Dhariwal 2021).

Every block takes ``p``, a dict of its own parameters under short keys ("conv1.w", "norm.gamma", ...;
``*_shapes`` lists them), and an NHWC activation (N, H, W, C). ``*_forward`` returns (y, cache);
``*_backward(dy, cache)`` returns dx and a dict of gradients under the same short keys. The model
(refdiff.models.unet) puts the block's prefix in front ("down.0.res.0" + "." + "conv1.w").

    ResBlock:   y = skip(x) + conv2(dropout(silu(AdaGN(conv1(silu(GN1(x))), emb))))
                AdaGN(h, emb) = GN2(h) * (1 + scale) + shift, [scale | shift] = emb @ W_emb + b_emb
                (scale_shift_norm), or GN2(h + emb @ W_emb + b_emb) (the embedding added)
    AttnBlock:  y = x + self_attention(GN(x))
    ContextAttnBlock (GLIDE): y = x + attention of GN(x) over its own keys and values and a context's,
                projected by the block's own w_kv (the caption's token features, masked at padding)
    Downsample: y = conv3x3_stride2(x)           Upsample: y = conv3x3(nearest_2x(x))
    Head:       y = conv3x3(silu(GN(x)))
"""

from __future__ import annotations

from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.layers.attention import AttentionCache, self_attention_backward, self_attention_forward
from refdiff.layers.basic import (DropoutCache, LinearCache, SiluCache, dropout_backward, dropout_forward,
                                  linear_backward, linear_forward, silu_backward, silu_forward)
from refdiff.layers.conv import Conv2dCache, conv2d_backward, conv2d_forward, upsample2x_conv
from refdiff.layers.masked_attention import (MaskedAttentionCache, context_attention_backward,
                                             context_attention_forward)
from refdiff.layers.norm import (GroupNormCache, ScaleShiftCache, group_norm_backward, group_norm_forward,
                                 group_norm_silu, scale_shift_backward, scale_shift_forward, sum_over_space)
from refdiff.layers.resample import Resample2xCache, upsample2x_backward, upsample2x_forward


def conv_shapes(c_in: int, c_out: int, k: int = 3) -> dict[str, tuple[int, ...]]:
    """A k x k convolution's parameters: w (k, k, C_in, C_out), b (C_out,)."""
    return {"w": (k, k, c_in, c_out), "b": (c_out,)}


def _prefixed(prefix: str, shapes: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


# ------------------------------------------------------------------------------------- ResBlock

class ResBlockCache(NamedTuple):
    norm1: GroupNormCache
    silu1: SiluCache
    conv1: Conv2dCache
    emb: LinearCache               # the block's projection of the shared embedding
    norm2: GroupNormCache
    modulate: ScaleShiftCache | None  # AdaGN, or None when the embedding is added before GN2
    silu2: SiluCache
    dropout: DropoutCache
    conv2: Conv2dCache
    skip: Conv2dCache | None       # the 1x1 conv when C_in != C_out, None for the identity


def resblock_shapes(c_in: int, c_out: int, emb_dim: int, scale_shift: bool) -> dict[str, tuple[int, ...]]:
    """ResBlock parameters; "emb" projects the embedding to [scale | shift] (2 C_out) or C_out."""
    shapes = {"norm1.gamma": (c_in,), "norm1.beta": (c_in,), **_prefixed("conv1", conv_shapes(c_in, c_out)),
              "emb.w": (emb_dim, 2 * c_out if scale_shift else c_out), "emb.b": (2 * c_out if scale_shift else c_out,),
              "norm2.gamma": (c_out,), "norm2.beta": (c_out,), **_prefixed("conv2", conv_shapes(c_out, c_out))}
    if c_in != c_out:
        shapes.update(_prefixed("skip", conv_shapes(c_in, c_out, k=1)))
    return shapes


def _norm_silu(x: Any, gamma: Any, beta: Any, groups: int, keep_cache: bool, scale: Any = None,
               shift: Any = None):
    """silu(GN(x)), or silu(GN(x) * (1 + scale) + shift) (AdaGN): returns (y, the GN, AdaGN and SiLU
    caches). keep_cache=False (a sampling forward) runs group_norm_silu, which keeps none (three Nones)."""
    if not keep_cache:
        return group_norm_silu(x, gamma, beta, groups, scale=scale, shift=shift), None, None, None
    h, norm = group_norm_forward(x, gamma, beta, groups)
    modulate = None
    if scale is not None:
        h, modulate = scale_shift_forward(h, scale, shift)
    h, silu = silu_forward(h)
    return h, norm, modulate, silu


def resblock_forward(p: dict, x: Any, emb: Any, groups: int, scale_shift: bool, dropout: float = 0.0,
                     train: bool = False, generator: Any = None, keep_cache: bool = True):
    """ADM's ResBlock with the timestep (+ label) embedding injected between its two convolutions.

    Math: h = conv1(silu(GN1(x)));  e = emb @ W_emb + b_emb
          scale_shift: h = GN2(h) * (1 + e[:, :C]) + e[:, C:]   (AdaGN, Dhariwal & Nichol 2021, Sec. 3)
          else:        h = GN2(h + e)                           (improved DDPM, Ho et al. 2020)
          y = skip(x) + conv2(dropout(silu(h))),  skip = identity or a 1x1 conv when C_in != C_out

    x: (N, H, W, C_in); emb: (N, E), the embedding after ADM's SiLU (shared by every block).
    Returns y (N, H, W, C_out) like x, and a ResBlockCache (keep_cache=False: the normalizations' and
    SiLUs' entries None, for a forward whose caches are dropped).
    """
    xp = namespace(x)
    N, C = x.shape[0], p["conv1.b"].shape[0]
    h, norm1, _, silu1 = _norm_silu(x, p["norm1.gamma"], p["norm1.beta"], groups, keep_cache)
    h, conv1 = conv2d_forward(h, p["conv1.w"], p["conv1.b"])  # (N, H, W, C_out)
    e, emb_cache = linear_forward(emb, p["emb.w"], p["emb.b"])  # (N, 2 C_out) or (N, C_out)
    if scale_shift:  # [scale | shift], ADM's chunk(2, dim=1)
        h, norm2, modulate, silu2 = _norm_silu(h, p["norm2.gamma"], p["norm2.beta"], groups, keep_cache,
                                               e[:, :C], e[:, C:])
    else:  # (N, 1, 1, C_out): broadcast over space
        h, norm2, modulate, silu2 = _norm_silu(h + xp.reshape(e, (N, 1, 1, C)), p["norm2.gamma"], p["norm2.beta"],
                                               groups, keep_cache)
    h, drop = dropout_forward(h, dropout, generator, train)
    h, conv2 = conv2d_forward(h, p["conv2.w"], p["conv2.b"])  # (N, H, W, C_out)
    s, skip = x, None
    if "skip.w" in p:
        s, skip = conv2d_forward(x, p["skip.w"], p["skip.b"])  # 1x1: (N, H, W, C_out)
    return s + h, ResBlockCache(norm1, silu1, conv1, emb_cache, norm2, modulate, silu2, drop, conv2, skip)


def resblock_backward(dy: Any, c: ResBlockCache):
    """Gradients of resblock_forward: returns (dx, demb, grads) with grads under resblock_shapes' keys.

    Math: y = skip(x) + branch(x, emb): dy reaches both terms, and dx = dskip + dbranch (they add up).
          The embedding path: de = sum over space of dh (added), or [dscale | dshift] (AdaGN).
    dy: (N, H, W, C_out). dx (N, H, W, C_in), demb (N, E).
    """
    xp = namespace(dy)
    g = {}
    dh, g["conv2.w"], g["conv2.b"] = conv2d_backward(dy, c.conv2)
    dh = silu_backward(dropout_backward(dh, c.dropout), c.silu2)
    if c.modulate is not None:
        dh, dscale, dshift = scale_shift_backward(dh, c.modulate)
        dh, g["norm2.gamma"], g["norm2.beta"] = group_norm_backward(dh, c.norm2)
        de = xp.concat((dscale, dshift), axis=1)  # (N, 2 C_out)
    else:
        dh, g["norm2.gamma"], g["norm2.beta"] = group_norm_backward(dh, c.norm2)
        de = sum_over_space(dh)  # (N, C_out): e was broadcast over (H, W)
    demb, g["emb.w"], g["emb.b"] = linear_backward(de, c.emb)
    dh, g["conv1.w"], g["conv1.b"] = conv2d_backward(dh, c.conv1)
    dh = silu_backward(dh, c.silu1)
    dx, g["norm1.gamma"], g["norm1.beta"] = group_norm_backward(dh, c.norm1)
    if c.skip is None:
        dx = dx + dy  # identity skip: the residual's gradient adds to the branch's
    else:
        dskip, g["skip.w"], g["skip.b"] = conv2d_backward(dy, c.skip)
        dx = dx + dskip
    return dx, demb, g


# ---------------------------------------------------------------------------------- AttnBlock

class AttnBlockCache(NamedTuple):
    norm: GroupNormCache
    attention: AttentionCache


def attnblock_shapes(c: int) -> dict[str, tuple[int, ...]]:
    """AttentionBlock parameters: GN, qkv projection (C, 3C) and output projection (C, C)."""
    return {"norm.gamma": (c,), "norm.beta": (c,), "w_qkv": (c, 3 * c), "b_qkv": (3 * c,),
            "w_out": (c, c), "b_out": (c,)}


def attnblock_forward(p: dict, x: Any, heads: int, groups: int):
    """ADM's AttentionBlock: multi-head self-attention over the H W positions, residual.

    Math: y = x + self_attention(GN(x))   (refdiff.layers.attention; Vaswani et al. 2017)

    x: (N, H, W, C). Returns y like x and an AttnBlockCache.
    """
    h, norm = group_norm_forward(x, p["norm.gamma"], p["norm.beta"], groups)
    h, attention = self_attention_forward(h, p["w_qkv"], p["b_qkv"], p["w_out"], p["b_out"], heads)
    return x + h, AttnBlockCache(norm, attention)


def attnblock_backward(dy: Any, c: AttnBlockCache):
    """Gradients of attnblock_forward: returns (dx, grads); dx = dy (residual) + the branch's gradient."""
    g = {}
    dh, g["w_qkv"], g["b_qkv"], g["w_out"], g["b_out"] = self_attention_backward(dy, c.attention)
    dx, g["norm.gamma"], g["norm.beta"] = group_norm_backward(dh, c.norm)
    return dx + dy, g


# --------------------------------------------------------------------------- ContextAttnBlock

class ContextAttnBlockCache(NamedTuple):
    norm: GroupNormCache
    attention: MaskedAttentionCache


def context_attnblock_shapes(c: int, c_ctx: int) -> dict[str, tuple[int, ...]]:
    """AttentionBlock parameters and the context's key/value projection w_kv (C_ctx, 2C), GLIDE's encoder_kv."""
    return {**attnblock_shapes(c), "w_kv": (c_ctx, 2 * c), "b_kv": (2 * c,)}


def context_attnblock_forward(p: dict, x: Any, context: Any, context_mask: Any, heads: int, groups: int):
    """GLIDE's AttentionBlock with encoder_out: the H W positions attend to themselves and to the context.

    Math: y = x + attn(GN(x); K = [k_c ; k], V = [v_c ; v]),  [k_c | v_c] = context @ w_kv + b_kv
          (Nichol et al. 2021, Sec. 2.3; refdiff.layers.masked_attention.context_attention_forward)

    x: (N, H, W, C); context: (N, Lc, C_ctx); context_mask: (N, Lc) bool, True at keys to attend to, or
    None. Returns y like x and a ContextAttnBlockCache.
    """
    xp = namespace(x)
    N, H, W, C = x.shape
    h, norm = group_norm_forward(x, p["norm.gamma"], p["norm.beta"], groups)
    h = xp.reshape(h, (N, H * W, C))  # (N, H W, C): the pixels as a sequence
    h, attention = context_attention_forward(h, context, p["w_qkv"], p["b_qkv"], p["w_kv"], p["b_kv"], p["w_out"],
                                             p["b_out"], heads, context_mask=context_mask)
    return x + xp.reshape(h, (N, H, W, C)), ContextAttnBlockCache(norm, attention)


def context_attnblock_backward(dy: Any, c: ContextAttnBlockCache):
    """Gradients of context_attnblock_forward: returns (dx, dcontext, grads); dx = dy (residual) + the
    branch's gradient; dcontext (N, Lc, C_ctx) is the gradient of the context through this block's keys
    and values."""
    xp = namespace(dy)
    N, H, W, C = dy.shape
    g = {}
    dh, dcontext, *weights = context_attention_backward(xp.reshape(dy, (N, H * W, C)), c.attention)
    for name, grad in zip(("w_qkv", "b_qkv", "w_kv", "b_kv", "w_out", "b_out"), weights):
        g[name] = grad
    dx, g["norm.gamma"], g["norm.beta"] = group_norm_backward(xp.reshape(dh, (N, H, W, C)), c.norm)
    return dx + dy, dcontext, g


# -------------------------------------------------------------------------- Downsample, Upsample

class UpsampleCache(NamedTuple):
    upsample: Resample2xCache
    conv: Conv2dCache


def downsample_forward(p: dict, x: Any):
    """ADM's Downsample with conv_resample: y = conv3x3(x, stride 2, padding 1).

    x: (N, H, W, C), H and W even. Returns y (N, H/2, W/2, C) and the Conv2dCache.
    """
    return conv2d_forward(x, p["conv.w"], p["conv.b"], stride=2)


def downsample_backward(dy: Any, cache: Conv2dCache):
    """Gradients of downsample_forward: returns (dx, grads)."""
    dx, dw, db = conv2d_backward(dy, cache)
    return dx, {"conv.w": dw, "conv.b": db}


def upsample_forward(p: dict, x: Any, keep_cache: bool = True):
    """ADM's Upsample with conv_resample: y = conv3x3(nearest_2x(x)).

    x: (N, H, W, C). Returns y (N, 2H, 2W, C) and an UpsampleCache; keep_cache=False (a sampling
    forward) runs upsample2x_conv, which keeps none (None).
    """
    if not keep_cache:
        return upsample2x_conv(x, p["conv.w"], p["conv.b"]), None
    h, up = upsample2x_forward(x)  # (N, 2H, 2W, C)
    y, conv = conv2d_forward(h, p["conv.w"], p["conv.b"])
    return y, UpsampleCache(up, conv)


def upsample_backward(dy: Any, c: UpsampleCache):
    """Gradients of upsample_forward: returns (dx, grads)."""
    dh, dw, db = conv2d_backward(dy, c.conv)
    return upsample2x_backward(dh, c.upsample), {"conv.w": dw, "conv.b": db}


# ----------------------------------------------------------------------------------------- Head

class HeadCache(NamedTuple):
    norm: GroupNormCache
    silu: SiluCache
    conv: Conv2dCache


def head_shapes(c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
    """Output head parameters: GN over C_in, then a 3x3 conv to C_out."""
    return {"norm.gamma": (c_in,), "norm.beta": (c_in,), **_prefixed("conv", conv_shapes(c_in, c_out))}


def head_forward(p: dict, x: Any, groups: int, keep_cache: bool = True):
    """ADM's ``out``: y = conv3x3(silu(GN(x))), the conv zero-initialised (a fresh model outputs 0).

    x: (N, H, W, C_in). Returns y (N, H, W, C_out) and a HeadCache (keep_cache=False: norm and silu None).
    """
    h, norm, _, silu = _norm_silu(x, p["norm.gamma"], p["norm.beta"], groups, keep_cache)
    y, conv = conv2d_forward(h, p["conv.w"], p["conv.b"])
    return y, HeadCache(norm, silu, conv)


def head_backward(dy: Any, c: HeadCache):
    """Gradients of head_forward: returns (dx, grads)."""
    g = {}
    dh, g["conv.w"], g["conv.b"] = conv2d_backward(dy, c.conv)
    dx, g["norm.gamma"], g["norm.beta"] = group_norm_backward(silu_backward(dh, c.silu), c.norm)
    return dx, g
