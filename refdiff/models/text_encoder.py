"""Transformer text encoder of GLIDE (Nichol et al. 2021, Sec. 2.3 and App.), with hand-derived backprop.

A caption's tokens (N, L) become features (N, L, C) that a text-conditional U-Net reads (its time
embedding adds the last position's feature, its attention layers concatenate the projected sequence to
their keys and values; that is the U-Net's business, not this module's). The architecture is GLIDE's
(glide_text2im/xf.py, itself CLIP's), at toy scale (N tokens sequences, C = width, r = mlp_ratio):

    h_0   = table[tokens] + P[:L]                            token + learned position embeddings (N, L, C)
    h     = h + attn(LN_1(h), mask)                          pre-norm block, for each of cfg.layers
    h     = h + proj(gelu(fc(LN_2(h))))                      MLP of width r C
    out   = LN_f(h)                                          the final layer norm                (N, L, C)

Padding. Captions are shorter than the context; the tokenizer pads them and gives ``mask`` (N, L), True
at real tokens. ``cfg.padding`` says what the encoder does with it:

- ``"mask"`` (the default): a key padding mask in every self-attention (refdiff.layers.masked_attention).
  Chosen because (1) the real tokens' features are then independent of the padding: the same caption
  padded to any length gives the same features at its words (tested); (2) the empty caption that
  classifier-free guidance trains with has no key at all, so every query attends to nothing (the layer's
  defined behaviour, no NaN) and the encoder's output is a function of the positions alone: a null text
  that carries no word; (3) it adds no parameter. Its cost: a reader of the features (the U-Net's
  context attention) must mask the padded positions too, with the same mask.
- ``"embedding"``: GLIDE's way (its ``xf_padding``): the input at every padded position l is replaced by
  a learned vector padding_embed[l], no attention is masked, and padded positions carry learned content
  that a reader attends to without a mask. Offered as the switch that matches GLIDE's weights.

Parameter keys (flat dict, dotted): token_embed.table (V, C), position_embed.table (ctx, C),
padding_embed.table (ctx, C) with padding="embedding", blocks.<i>.ln1.{gamma,beta},
blocks.<i>.attn.{w_qkv,b_qkv,w_out,b_out}, blocks.<i>.ln2.{gamma,beta}, blocks.<i>.mlp.fc.{w,b},
blocks.<i>.mlp.proj.{w,b}, final_ln.{gamma,beta}. Not in the model registry yet: it is a part of the
text-conditional U-Net, not a model trained on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, device, namespace
from refdiff.layers.basic import LinearCache, linear_backward, linear_forward
from refdiff.layers.embed import TokenEmbeddingCache, token_embedding_backward, token_embedding_forward
from refdiff.layers.gelu import APPROXIMATIONS, GeluCache, gelu_backward, gelu_forward
from refdiff.layers.layer_norm import LayerNormCache, layer_norm_backward, layer_norm_forward
from refdiff.layers.masked_attention import (MaskedAttentionCache, masked_self_attention_backward,
                                             masked_self_attention_forward)
from refdiff.models.common import check_init, check_int, check_params, count_params, same_library

PADDINGS = ("mask", "embedding")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Architecture of the text encoder; validated on construction."""

    vocab_size: int = 32          # V, rows of the token table (the tokenizer's vocabulary, padding token included)
    context_length: int = 8       # ctx, the longest token sequence (rows of the position table)
    width: int = 64               # C, the width of the residual stream and of the features
    layers: int = 2               # pre-norm transformer blocks
    heads: int = 4                # attention heads; divides width
    mlp_ratio: int = 4            # r: each block's MLP is C -> r C -> C (4 in GLIDE and GPT)
    padding: str = "mask"         # "mask" (key padding mask) or "embedding" (GLIDE's learned padding)
    gelu: str = "tanh"            # GELU form: "tanh" (GPT-2's approximation) or "none" (exact, GLIDE's code)
    eps: float = 1e-5             # the layer norms' eps (torch's and GLIDE's)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "width", "layers", "heads", "mlp_ratio"):
            check_int(name, getattr(self, name), 0 if name == "layers" else 1)
        if self.width % self.heads:
            raise ValueError(f"heads must divide width = {self.width}, got {self.heads}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        if self.gelu not in APPROXIMATIONS:
            raise ValueError(f"gelu must be one of {', '.join(APPROXIMATIONS)}, got {self.gelu!r}")
        e = self.eps
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not (e > 0 and math.isfinite(e)):
            raise ValueError(f"eps must be a positive finite float, got {e!r}")


def param_shapes(cfg: TextEncoderConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order init_params, text_encoder_backward and param_count use."""
    C, R = cfg.width, cfg.mlp_ratio * cfg.width
    shapes = {"token_embed.table": (cfg.vocab_size, C), "position_embed.table": (cfg.context_length, C)}
    if cfg.padding == "embedding":
        shapes["padding_embed.table"] = (cfg.context_length, C)
    for i in range(cfg.layers):
        b = f"blocks.{i}."
        shapes.update({b + "ln1.gamma": (C,), b + "ln1.beta": (C,),
                       b + "attn.w_qkv": (C, 3 * C), b + "attn.b_qkv": (3 * C,),
                       b + "attn.w_out": (C, C), b + "attn.b_out": (C,),
                       b + "ln2.gamma": (C,), b + "ln2.beta": (C,),
                       b + "mlp.fc.w": (C, R), b + "mlp.fc.b": (R,), b + "mlp.proj.w": (R, C), b + "mlp.proj.b": (C,)})
    shapes["final_ln.gamma"], shapes["final_ln.beta"] = (C,), (C,)
    return shapes


def param_count(cfg: TextEncoderConfig) -> int:
    """Number of scalar parameters of the encoder ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: TextEncoderConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``.

    Math: token, position and padding tables ~ N(0, 1)   (nn.Embedding's default: unit-scale tokens)
          weights w ~ N(0, 1 / fan_in)                     (LeCun normal, as refdiff.models.common.lecun_init)
          biases = 0;  layer norm gamma = 1, beta = 0

    Draws are made in float64 and cast, so float32 and float64 parameters from one seed agree to float32
    rounding.
    """
    dt = check_init(cfg, TextEncoderConfig, generator, dtype)
    params = {}
    for key, shape in param_shapes(cfg).items():
        if key.endswith(".table"):
            params[key] = generator.normal(shape, dtype=np.float64).astype(dt)
        elif key.endswith((".w", ".w_qkv", ".w_out")):
            params[key] = (generator.normal(shape, dtype=np.float64) / math.sqrt(shape[0])).astype(dt)
        elif key.endswith(".gamma"):
            params[key] = np.ones(shape, dtype=dt)
        else:
            params[key] = np.zeros(shape, dtype=dt)
    return params


# ------------------------------------------------------------------------------------ forward

class BlockCache(NamedTuple):
    ln1: LayerNormCache
    attn: MaskedAttentionCache
    ln2: LayerNormCache
    fc: LinearCache
    gelu: GeluCache
    proj: LinearCache


class TextEncoderCache(NamedTuple):
    cfg: TextEncoderConfig
    tokens: TokenEmbeddingCache
    keep: Any  # (N, L, 1) bool, True at real tokens, with padding="embedding"; else None
    blocks: tuple[BlockCache, ...]
    final: LayerNormCache
    out_shape: tuple[int, int, int]  # (N, L, C)
    dtype: Any


def _embed(params: dict, cfg: TextEncoderConfig, tokens: Any, mask: Any) -> tuple[Any, TokenEmbeddingCache, Any]:
    """Step 1: h_0 = table[tokens] + P[:L], with GLIDE's padding embeddings where cfg.padding says so."""
    xp = namespace(params["position_embed.table"])
    L = tokens.shape[1]
    e, tok = token_embedding_forward(tokens, params["token_embed.table"])  # (N, L, C)
    h = e + params["position_embed.table"][None, :L, :]  # (N, L, C), positions broadcast over N
    keep = None
    if cfg.padding == "embedding":
        keep = xp.ones(e.shape[:2], dtype=xp.bool, device=device(e)) if mask is None else mask  # (N, L)
        keep = keep[:, :, None]  # (N, L, 1): broadcast over C
        h = xp.where(keep, h, params["padding_embed.table"][None, :L, :])  # GLIDE: th.where(mask, x, padding)
    return h, tok, keep


def text_encoder_forward(params: dict, cfg: TextEncoderConfig, tokens: Any,
                         mask: Any = None) -> tuple[Any, TextEncoderCache]:
    """The features of a batch of token sequences.

    Math (module docstring):  h = table[tokens] + P;  per block  h = h + attn(LN_1(h), mask),
          h = h + proj(gelu(fc(LN_2(h))));  out = LN_f(h)                 (GLIDE, after GPT-2 and CLIP)

    params: dict of param_shapes(cfg), arrays of one library, device and real floating dtype; tokens:
    (N, L) integer ids in [0, V) of that library and device, 1 <= L <= context_length; mask: (N, L) bool,
    True at real tokens, or None (no padding). Returns features (N, L, C) in the parameters' dtype.
    """
    _check_forward(params, cfg, tokens, mask)
    h, tok, keep = _embed(params, cfg, tokens, mask)  # step 1: (N, L, C)
    attn_mask = mask if cfg.padding == "mask" else None
    blocks = []
    for i in range(cfg.layers):  # step 2: the pre-norm blocks
        p = {k[len(f"blocks.{i}."):]: v for k, v in params.items() if k.startswith(f"blocks.{i}.")}
        a, ln1 = layer_norm_forward(h, p["ln1.gamma"], p["ln1.beta"], cfg.eps)  # 2a
        a, attn = masked_self_attention_forward(a, p["attn.w_qkv"], p["attn.b_qkv"], p["attn.w_out"],
                                                p["attn.b_out"], cfg.heads, mask=attn_mask)  # 2b
        h = h + a  # 2c: the first residual
        a, ln2 = layer_norm_forward(h, p["ln2.gamma"], p["ln2.beta"], cfg.eps)  # 2d
        a, fc = linear_forward(a, p["mlp.fc.w"], p["mlp.fc.b"])  # 2e: (N, L, r C)
        a, gelu = gelu_forward(a, cfg.gelu)  # 2f
        a, proj = linear_forward(a, p["mlp.proj.w"], p["mlp.proj.b"])  # 2g: (N, L, C)
        h = h + a  # 2h: the second residual
        blocks.append(BlockCache(ln1, attn, ln2, fc, gelu, proj))
    out, final = layer_norm_forward(h, params["final_ln.gamma"], params["final_ln.beta"], cfg.eps)  # step 3
    return out, TextEncoderCache(cfg, tok, keep, tuple(blocks), final, tuple(out.shape), out.dtype)


# ----------------------------------------------------------------------------------- backward

def text_encoder_backward(dfeatures: Any, cache: TextEncoderCache) -> dict:
    """Gradients of text_encoder_forward with respect to every parameter: the forward's steps in reverse.

    Math: every layer's own backward (refdiff.layers); the sums are the residual stream's (dh flows into
    the skip and the branch of each residual, and their gradients add) and the embedding's (d h_0 reaches
    the token table, by a scatter-add, and the position table, summed over the batch).

    dfeatures: (N, L, C) like the features. Returns grads, a dict with the keys of param_shapes(cfg) in
    its order. (No gradient for the tokens: they are integers.)
    """
    if not isinstance(cache, TextEncoderCache):
        raise ValueError(f"cache must be the TextEncoderCache of text_encoder_forward, got {type(cache).__name__}")
    if tuple(dfeatures.shape) != cache.out_shape or dfeatures.dtype != cache.dtype:
        raise ValueError(f"dfeatures must have the features' shape {cache.out_shape} and dtype {cache.dtype}, "
                         f"got shape {tuple(dfeatures.shape)} and dtype {dfeatures.dtype}")
    cfg, grads = cache.cfg, {}
    dh, grads["final_ln.gamma"], grads["final_ln.beta"] = layer_norm_backward(dfeatures, cache.final)  # step 3
    for i in reversed(range(cfg.layers)):  # step 2, last block first
        c, b = cache.blocks[i], f"blocks.{i}."
        da, grads[b + "mlp.proj.w"], grads[b + "mlp.proj.b"] = linear_backward(dh, c.proj)  # 2g
        da = gelu_backward(da, c.gelu)  # 2f
        da, grads[b + "mlp.fc.w"], grads[b + "mlp.fc.b"] = linear_backward(da, c.fc)  # 2e
        da, grads[b + "ln2.gamma"], grads[b + "ln2.beta"] = layer_norm_backward(da, c.ln2)  # 2d
        dh = dh + da  # 2h: the skip's gradient and the MLP branch's add up
        da, *attn = masked_self_attention_backward(dh, c.attn)  # 2b
        for name, g in zip(("w_qkv", "b_qkv", "w_out", "b_out"), attn):
            grads[b + "attn." + name] = g
        da, grads[b + "ln1.gamma"], grads[b + "ln1.beta"] = layer_norm_backward(da, c.ln1)  # 2a
        dh = dh + da  # 2c: the skip's gradient and the attention branch's add up
    grads.update(_embed_backward(dh, cache))  # step 1
    return {key: grads[key] for key in param_shapes(cfg)}  # params' order


def _embed_backward(dh: Any, cache: TextEncoderCache) -> dict:
    """Step 1 back: the tables' gradients from d h_0 (N, L, C); rows of positions >= L get 0."""
    xp = namespace(dh)
    cfg, grads = cache.cfg, {}
    N, L, C = dh.shape
    pad_rows = xp.zeros((cfg.context_length - L, C), dtype=dh.dtype, device=device(dh))  # positions not used
    if cache.keep is not None:  # h_0 = where(keep, e + P, padding): each position's gradient goes one way
        zero = xp.zeros_like(dh)
        grads["padding_embed.table"] = xp.concat((xp.sum(xp.where(cache.keep, zero, dh), axis=0), pad_rows))
        dh = xp.where(cache.keep, dh, zero)  # (N, L, C)
    grads["position_embed.table"] = xp.concat((xp.sum(dh, axis=0), pad_rows))  # (ctx, C), summed over N
    grads["token_embed.table"] = token_embedding_backward(dh, cache.tokens)  # (V, C), the scatter-add
    return grads


# ------------------------------------------------------------------------------------- checks

def _check_forward(params: Any, cfg: Any, tokens: Any, mask: Any) -> None:
    check_params(params, cfg, TextEncoderConfig, param_shapes)
    table = params["token_embed.table"]
    xp = namespace(table)
    if not xp.isdtype(table.dtype, "real floating"):
        raise ValueError(f"params must be real floating arrays, got dtype {table.dtype}")
    for key, p in params.items():
        if not same_library(p, table) or p.dtype != table.dtype:
            raise ValueError(f"params[{key!r}] must be an array of the library, device and dtype of "
                             f"params['token_embed.table'] ({table.dtype}), got {type(p).__name__} of dtype {p.dtype}")
    if (not same_library(tokens, table) or tokens.ndim != 2 or not 1 <= tokens.shape[1] <= cfg.context_length
            or not xp.isdtype(tokens.dtype, "integral")):
        raise ValueError(f"tokens must be an (N, L) integer array of the parameters' library and device with "
                         f"1 <= L <= context_length = {cfg.context_length}, got {type(tokens).__name__} of shape "
                         f"{tuple(tokens.shape)} and dtype {tokens.dtype}")
    if mask is not None and (not same_library(mask, table) or tuple(mask.shape) != tuple(tokens.shape)
                             or not xp.isdtype(mask.dtype, "bool")):
        raise ValueError(f"mask must be None or a bool array of tokens' shape {tuple(tokens.shape)}, library and "
                         f"device (True at real tokens), got {type(mask).__name__} of shape {tuple(mask.shape)} "
                         f"and dtype {mask.dtype}")
