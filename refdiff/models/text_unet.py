"""Text-conditional U-Net of GLIDE (Nichol et al. 2021, Sec. 2.3) with hand-derived backprop: the U-Net
of refdiff.models.unet reads a caption through the transformer of refdiff.models.text_encoder, two ways.

    tokens (N, L) -> padded to the context: (N, ctx), mask = tokens != pad_token   (True at words)
    f     = text_encoder(tokens, mask)                                  (N, ctx, C_t), the caption's features
    emb   = silu(time_mlp(t) + f[:, -1] @ W_t + b_t)                     (a) the summary slot, projected, added
                                                                         to the timestep embedding (xf_proj)
    every attention block:  y = x + attn(GN(x); K = [f W_k ; k], V = [f W_v ; v])
                                                                         (b) the whole sequence, projected per
                                                                         layer, in front of its keys and values
                                                                         (encoder_kv), masked at padding
    with position_embedding:  h = conv_in(x) + P                         (c) a learned (H, W, C) table P, set
                                                                         to the 2-D sinusoid at init: every
                                                                         pixel knows where it is
    everything else: the U-Net's plan (unet_plan), run by unet.plan_forward / plan_backward

The summary slot is the last position, always padding (refdiff.data.captions.tokenize): with the key mask
it attends to every word and to no padding. The model pads shorter token arrays to the context itself,
so the summary slot is always position ctx - 1 and a caption gives the same output however it was
padded. y = None is the empty caption (all padding): classifier-free guidance's null input. With the
encoder's padding="mask" the U-Net's attention masks the padded positions too (context_mask = mask);
with GLIDE's padding="embedding" nothing is masked.

Parameter keys: "text.<encoder key>" (refdiff.models.text_encoder), "text_embed.{w,b}" (C_t, E), the
U-Net's keys (refdiff.models.unet, without a label table), "input.position" (H, W, C) after the input
conv's with position_embedding, and "<attention block>.{w_kv,b_kv}" (C_t, 2C) after each attention block's
own. The derivation: docs/glide.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, device, namespace
from refdiff.layers.basic import LinearCache, linear_backward, linear_forward
from refdiff.layers.embed import timestep_embedding
from refdiff.models import blocks as B
from refdiff.models import text_encoder as TE
from refdiff.models import unet as U
from refdiff.models.common import (check_backward, check_generator, check_image, check_init, check_inputs, check_int,
                                   check_params, check_sized_image, count_params, same_library)
from refdiff.models.text_encoder import TextEncoderConfig
from refdiff.models.unet_plan import UNetConfig, unet_plan
from refdiff.parallel import forward_in_parts


def _config(name: str, value: Any, cfg_type: type) -> Any:
    """value as a cfg_type: itself, or built from the dict of its fields (a checkpoint's JSON: lists -> tuples)."""
    if isinstance(value, dict):
        return cfg_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    if not isinstance(value, cfg_type):
        raise ValueError(f"{name} must be a {cfg_type.__name__} or the dict of its fields, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TextUNetConfig:
    """Architecture of the text-conditional U-Net: the U-Net's and the text encoder's configs, and the
    padding token; validated on construction (either config may be given as the dict of its fields)."""

    unet: UNetConfig = UNetConfig(in_channels=3, out_channels=3, image_size=16, channel_mult=(1, 2),
                                  attention_resolutions=(8,))
    text: TextEncoderConfig = TextEncoderConfig()
    pad_token: int = 0  # the tokenizer's padding id: mask = tokens != pad_token; the empty caption is all of it
    inpaint: bool = False  # GLIDE's inpainting model: x is x_t and C + 1 more channels, the known image x0 * keep
    #                        and the mask keep, so unet.in_channels = 2 C + 1 (refdiff.models.text_inpaint)
    # A learned position table added to the input conv's output, (c) of the module docstring. Off by default:
    # GLIDE has none (its attention is blind to place), and checkpoints saved before the field load as they were.
    position_embedding: bool = False

    def __post_init__(self):
        object.__setattr__(self, "unet", _config("unet", self.unet, UNetConfig))
        object.__setattr__(self, "text", _config("text", self.text, TextEncoderConfig))
        if self.unet.num_classes is not None:
            raise ValueError(f"unet.num_classes must be None (the caption is the condition), "
                             f"got {self.unet.num_classes}")
        check_int("pad_token", self.pad_token, 0)
        if not isinstance(self.position_embedding, bool):
            raise ValueError(f"position_embedding must be True or False, got {self.position_embedding!r}")
        if self.pad_token >= self.text.vocab_size:
            raise ValueError(f"pad_token must be in [0, text.vocab_size) = [0, {self.text.vocab_size}), "
                             f"got {self.pad_token}")
        C = self.unet.out_channels
        if not isinstance(self.inpaint, bool) or (self.inpaint and self.unet.in_channels != 2 * C + 1):
            raise ValueError(f"inpaint must be a bool, and True only with unet.in_channels = 2 unet.out_channels + 1 "
                             f"= {2 * C + 1} (x_t, x0 * keep, keep), got {self.inpaint!r} with unet.in_channels = "
                             f"{self.unet.in_channels}")

    @property
    def in_channels(self) -> int:
        """The image's channels C (what generic code reads of any image model's config): the U-Net's input
        channels, or for an inpainting model its output's (the input is x_t and C + 1 conditioning channels)."""
        return self.unet.out_channels if self.inpaint else self.unet.in_channels

    @property
    def dropout(self) -> float:
        """The U-Net's dropout probability (refdiff.parallel keeps one batch part when it is on)."""
        return self.unet.dropout


# --------------------------------------------------------------------------------- parameters

def _attention_steps(cfg: TextUNetConfig) -> dict[str, int]:
    """{attention block name: its channels C} of the U-Net's plan: the blocks that read the caption."""
    return {step.name: step.c_in for step in unet_plan(cfg.unet) if step.kind == "attn"}


def param_shapes(cfg: TextUNetConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and text_unet_backward (module docstring)."""
    C_t, E, attention = cfg.text.width, cfg.unet.time_embed_dim, _attention_steps(cfg)
    shapes = {f"text.{k}": v for k, v in TE.param_shapes(cfg.text).items()}
    shapes["text_embed.w"], shapes["text_embed.b"] = (C_t, E), (E,)  # GLIDE's transformer_proj
    for key, shape in U.param_shapes(cfg.unet).items():
        shapes[key] = shape
        if key == "input.conv.b" and cfg.position_embedding:  # (c): NHWC, the layout of h inside the U-Net
            shapes["input.position"] = (cfg.unet.image_size, cfg.unet.image_size, cfg.unet.base_channels)
        name = key[:-len(".b_out")]
        if key.endswith(".b_out") and name in attention:  # GLIDE's encoder_kv of this block
            shapes[f"{name}.w_kv"], shapes[f"{name}.b_kv"] = (C_t, 2 * attention[name]), (2 * attention[name],)
    return shapes


def param_count(cfg: TextUNetConfig) -> int:
    """Number of scalar parameters of the model ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: TextUNetConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: the encoder's init_params, then the U-Net's (zero output conv: a fresh model outputs 0), then
          the text projections w ~ N(0, 1 / C_t) (LeCun normal), biases 0; the position table, if any,
          the 2-D sinusoid (position_sinusoid: no draws, so the other parameters are those of the same
          seed without it). Draws in float64, cast.
    """
    dt = check_init(cfg, TextUNetConfig, generator, dtype)
    params = {f"text.{k}": v for k, v in TE.init_params(cfg.text, generator, dt).items()}
    params.update(U.init_params(cfg.unet, generator, dt))
    for key, shape in param_shapes(cfg).items():
        if key in params:
            continue
        if key == "input.position":
            params[key] = position_sinusoid(*shape).astype(dt)
        elif key.endswith((".w", ".w_kv")):
            params[key] = (generator.normal(shape, dtype=np.float64) / math.sqrt(shape[0])).astype(dt)
        else:
            params[key] = np.zeros(shape, dtype=dt)
    return {k: params[k] for k in param_shapes(cfg)}


def position_sinusoid(H: int, W: int, C: int) -> np.ndarray:
    """The 2-D sinusoidal position embedding (MAE's get_2d_sincos_pos_embed, He et al. 2022): the
    timestep sinusoid of the row in the first C // 2 channels and of the column in the rest.

    Math: P[i, j] = [sinusoid(i, C // 2) | sinusoid(j, C - C // 2)], sinusoid of
          refdiff.layers.embed.timestep_embedding (cos, sin of i * 10000^(-k / half)).
    Returns (H, W, C) float64.
    """
    rows = timestep_embedding(np.arange(H), C // 2, dtype=np.float64)  # (H, C // 2)
    cols = timestep_embedding(np.arange(W), C - C // 2, dtype=np.float64)  # (W, C - C // 2)
    return np.concatenate((np.broadcast_to(rows[:, None], (H, W, C // 2)),
                           np.broadcast_to(cols[None], (H, W, C - C // 2))), axis=-1)  # (H, W, C)


# ------------------------------------------------------------------------------------ forward

class TextUNetCache(NamedTuple):
    cfg: TextUNetConfig
    text: TE.TextEncoderCache
    summary: LinearCache  # the summary slot's projection f[:, -1] @ W_t + b_t
    embed: U.EmbedCache
    steps: tuple  # one block cache per unet_plan(cfg.unet) step
    dtype: Any    # the forward's dtype, for checking dout
    out_shape: tuple[int, ...]  # (N, C_out, H, W)


def _prefixed(params: dict, prefix: str) -> dict:
    """The parameters under ``prefix`` with it removed: params["text.final_ln.gamma"] -> "final_ln.gamma"."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _padded_tokens(cfg: TextUNetConfig, x: Any, y: Any) -> Any:
    """y (N, L) padded with pad_token to (N, ctx); y = None is the empty caption (all padding)."""
    xp, N, ctx = namespace(x), x.shape[0], cfg.text.context_length
    L = 0 if y is None else y.shape[1]
    pad = xp.full((N, ctx - L), cfg.pad_token, dtype=xp.int64, device=device(x))  # (N, ctx - L)
    return pad if y is None else xp.concat((xp.astype(y, xp.int64), pad), axis=1)  # (N, ctx)


def text_unet_forward(params: dict, cfg: TextUNetConfig, x: Any, t: Any, y: Any = None, train: bool = False,
                      generator: Generator | None = None, keep_cache: bool = True):
    """The text-conditional U-Net's prediction (eps, x0 or v, then the variance channels if learn_sigma).

    Math (module docstring; Nichol et al. 2021, Sec. 2.3):
          f = text_encoder(tokens, mask);  emb = silu(time_mlp(t) + f[:, -1] W_t + b_t)
          every attention block attends over [f W_kv ; its own k, v], masked where mask is False
          with position_embedding, h = conv_in(x) + P (x must then be image_size square)

    params: dict of param_shapes(cfg), arrays of x's library, device and dtype; x: (N, C_in, H, W);
    t: (N,) steps; y: (N, L) integer tokens in [0, V) of x's library and device, 1 <= L <= context_length
    (padded to the context here), or None (the empty caption); train, generator, keep_cache: as in
    unet_forward. Returns out (N, output_channels, H, W) like x, and a TextUNetCache (None without
    keep_cache).
    """
    _check_forward(params, cfg, x, t, y, train, generator)
    tokens = _padded_tokens(cfg, x, y)  # (N, ctx)
    mask = tokens != cfg.pad_token  # (N, ctx): True at words
    f, text_cache = TE.text_encoder_forward(_prefixed(params, "text."), cfg.text, tokens, mask)  # (N, ctx, C_t)
    s, summary = linear_forward(f[:, -1, :], params["text_embed.w"], params["text_embed.b"])  # (a): (N, E)
    emb, embed_cache = U.embed_forward(params, cfg.unet, x, t, None, extra=s)  # (N, E)
    context_mask = mask if cfg.text.padding == "mask" else None

    def run_step(step, p, unet_cfg, h, e, *options):  # (b): the attention blocks read f; train, generator, keep_cache
        if step.kind == "conv_in" and cfg.position_embedding:  # (c): (N, H, W, C) + (H, W, C)
            h, conv = U.step_forward(step, p, unet_cfg, h, e, *options)
            return h + p["input.position"], conv
        if step.kind != "attn":
            return U.step_forward(step, p, unet_cfg, h, e, *options)
        block = _prefixed(p, f"{step.name}.")
        return B.context_attnblock_forward(block, h, f, context_mask, unet_cfg.heads, unet_cfg.groups)

    out, caches = U.plan_forward(params, cfg.unet, x, emb, train, generator, keep_cache, run_step)
    if not keep_cache:
        return out, None
    return out, TextUNetCache(cfg, text_cache, summary, embed_cache, caches, x.dtype, tuple(out.shape))


# ----------------------------------------------------------------------------------- backward

def text_unet_backward(dout: Any, cache: TextUNetCache, need_dx: bool = False):
    """Gradients of text_unet_forward, through both text paths into the encoder.

    Math: the U-Net's blocks in reverse (unet.plan_backward: skips and the shared embedding add up);
          every attention block reads the same features f, so df = sum over blocks of dcontext, plus,
          at the summary slot, df[:, -1] += ds W_t^T with ds = d(time_mlp + s) (the SiLU's input), which
          is also the time MLP's; then the encoder's backward of df. The position table P is added to
          every image's conv_in output: dP = sum_n dh_n, dh passing on to the conv unchanged.

    dout: (N, output_channels, H, W) like the output. Returns grads (params' keys and order); with
    need_dx also dx (N, C_in, H, W). (No gradient for the tokens: they are integers.)
    """
    check_backward("dout", dout, cache, TextUNetCache, "text_unet_forward", "output's")
    xp, cfg = namespace(dout), cache.cfg
    dcontexts, extra = [], {}

    def run_step(step, dh, c):
        if step.kind == "conv_in" and cfg.position_embedding:
            extra["input.position"] = xp.sum(dh, axis=0)  # (N, H, W, C) -> (H, W, C)
        if step.kind != "attn":
            return U.step_backward(step, dh, c)
        dx, dcontext, g = B.context_attnblock_backward(dh, c)
        dcontexts.append(dcontext)  # (N, ctx, C_t) from this block's keys and values
        return dx, None, g

    grads, demb, dx = U.plan_backward(cfg.unet, dout, cache.steps, run_step)
    grads.update(extra)
    embed_grads, ds = U.embed_backward(demb, cache.embed)  # ds: (N, E), the gradient of s = f[:, -1] W_t + b_t
    grads.update(embed_grads)
    dsummary, grads["text_embed.w"], grads["text_embed.b"] = linear_backward(ds, cache.summary)  # (N, C_t)
    df = dcontexts[0]
    for dcontext in dcontexts[1:]:  # every attention block's gradient of f adds up
        df = df + dcontext
    N, ctx, C_t = df.shape
    zeros = xp.zeros((N, ctx - 1, C_t), dtype=df.dtype, device=device(df))
    df = df + xp.concat((zeros, dsummary[:, None, :]), axis=1)  # (N, ctx, C_t): the summary slot's share
    grads.update({f"text.{k}": v for k, v in TE.text_encoder_backward(df, cache.text).items()})
    grads = {k: grads[k] for k in param_shapes(cfg)}  # params' order
    return (grads, dx) if need_dx else grads


# --------------------------------------------------------------------------- sampling adapter

def text_unet_model(params: dict, cfg: TextUNetConfig):
    """The sampler protocol ``model(xt, t, y=None) -> output`` with y the (N, L) tokens (None: the empty
    caption): evaluation mode, no activations kept, the batch in parts on the host's cores. params must
    already be arrays of the library, device and dtype the sampler's xt will have."""
    check_params(params, cfg, TextUNetConfig, param_shapes)

    def model(xt: Any, t: Any, y: Any = None):
        return forward_in_parts(text_unet_forward, params, cfg, xt, t, y, keep_cache=False)[0]

    return model


# ------------------------------------------------------------------------------- FLOPs, summary

def flops(cfg: TextUNetConfig, image_size: int | None = None) -> tuple[list[tuple[str, int]], int]:
    """Multiply-adds of one forward pass for one image and its caption, per layer (unet.flops' counting).

    The encoder over L = ctx tokens of C_t channels: per block L 3C_t^2 (qkv) + 2 L^2 C_t (attention)
    + L C_t^2 (out) + 2 r L C_t^2 (MLP); the summary's projection C_t E; the U-Net's layers, and for each
    attention block over P pixels of C channels also L C_t 2C (its encoder_kv) and 2 P L C (the pixels'
    scores and weighted sum over the L extra keys).
    Returns ([(layer name, multiply-adds), ...], total).
    """
    S = cfg.unet.image_size if image_size is None else image_size
    L, C_t, r = cfg.text.context_length, cfg.text.width, cfg.text.mlp_ratio
    layers = []
    for i in range(cfg.text.layers):
        b = f"text.blocks.{i}"
        layers += [(f"{b}.qkv", L * C_t * 3 * C_t), (f"{b}.attention", 2 * L * L * C_t), (f"{b}.out", L * C_t * C_t),
                   (f"{b}.mlp", 2 * r * L * C_t * C_t)]
    layers.append(("text_embed", C_t * cfg.unet.time_embed_dim))
    unet_layers, _ = U.flops(cfg.unet, S)
    attention = _attention_steps(cfg)
    levels = {step.name: step.level for step in unet_plan(cfg.unet)}
    for name, count in unet_layers:
        layers.append((name, count))
        block = name[:-len(".out")]
        if name.endswith(".out") and block in attention:
            C, P = attention[block], (S // 2 ** levels[block]) ** 2
            layers += [(f"{block}.kv", L * C_t * 2 * C), (f"{block}.context", 2 * P * L * C)]
    return layers, sum(count for _, count in layers)


def summary(cfg: TextUNetConfig, image_size: int | None = None) -> str:
    """A text report of the config, its parameter count and its per-layer multiply-adds
    (what ``refdiff info --model NAME`` prints)."""
    S = cfg.unet.image_size if image_size is None else image_size
    return U.report(cfg, param_count(cfg), *flops(cfg, S), S)


# ------------------------------------------------------------------------------------- checks

def _check_forward(params, cfg, x, t, y, train, generator) -> None:
    check_params(params, cfg, TextUNetConfig, param_shapes)
    if cfg.inpaint and x.ndim == 4 and x.shape[1] == cfg.in_channels:
        raise ValueError(f"x must be (N, {cfg.unet.in_channels}, H, W) for an inpainting model: x_t and its "
                         f"conditioning channels (refdiff.models.text_inpaint.inpaint_model adds them; `refdiff "
                         f"inpaint` samples it), got x_t alone, of shape {tuple(x.shape)}")
    check_image(x, cfg.unet.in_channels, cfg.unet.downsample_factor)
    if cfg.position_embedding:  # the table is (image_size, image_size, C): x must be that size
        check_sized_image(x, cfg.unet)
    check_inputs(params, x, t)
    ctx = cfg.text.context_length
    if y is not None and (not same_library(y, x) or y.ndim != 2 or y.shape[0] != x.shape[0]
                          or not 1 <= y.shape[1] <= ctx or not namespace(y).isdtype(y.dtype, "integral")):
        raise ValueError(f"y must be None or (N, L) integer tokens of x's library and device with N = {x.shape[0]} "
                         f"(x's batch) and 1 <= L <= text.context_length = {ctx}, got {type(y).__name__} of shape "
                         f"{tuple(y.shape)} and dtype {getattr(y, 'dtype', None)}")
    check_generator(train, cfg.unet.dropout, generator)
