"""ADM-style U-Net denoiser with hand-derived backprop (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021).

The architecture of guided-diffusion's ``UNetModel`` with conv resampling, composed of the blocks of
refdiff.models.blocks; the data flow, where gradients add up and what the caches hold are drawn in
docs/derivations/unet.md. In short (L = len(channel_mult) levels, R = num_res_blocks):

    emb = silu(fc2(silu(fc1(sinusoid(t, base)))) [+ table[y]])            (N, E), shared by all ResBlocks
    h = conv_in(x)                                              skips = [h]
    level l = 0..L-1:  R x (ResBlock [+ Attn]) -> push; Downsample -> push (but after the last level)
    middle:            ResBlock, Attn, ResBlock
    level l = L-1..0:  (R + 1) x (concat(h, skips.pop()) -> ResBlock [+ Attn]); Upsample (but at l = 0)
    out = conv(silu(GN(h)))                                                (N, C_out or 2 C_out, H, W)

Images are NCHW at the boundary (the data's and the samplers' layout) and NHWC inside (the layers'
layout): x is permuted once on the way in and the output once on the way out. Parameters are a
flat dict with dotted keys (param_shapes): "time_embed.fc1.w", "label_embed.table", "input.conv.w",
"down.<level>.res.<i>.conv1.w", "down.<level>.attn.<i>.w_qkv", "down.<level>.downsample.conv.w",
"mid.res.0...", "mid.attn...", "mid.res.1...", "up.<level>.res.<i>...", "up.<level>.upsample.conv.w",
"out.norm.gamma", "out.conv.w". Levels are numbered by resolution (H / 2^level) on both paths.
The config, the plan of blocks, the parameter shapes and the FLOP count live in
refdiff.models.unet_plan (re-exported here); this module builds, runs and differentiates the plan.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from refdiff.backend import Generator, asarray, device, host_dtype, namespace, to_numpy
from refdiff.layers.basic import (
    LinearCache,
    SiluCache,
    linear_backward,
    linear_forward,
    silu_backward,
    silu_forward,
)
from refdiff.layers.conv import conv2d_backward, conv2d_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward, timestep_embedding
from refdiff.models import blocks as B
from refdiff.models.common import (check_backward, check_generator, check_image, check_init, check_inputs, check_params,
                                   lecun_init)
# The architecture from the config alone, re-exported: refdiff.models.unet is the U-Net's public module.
from refdiff.models.unet_plan import (KINDS, Step, UNetConfig, _param_shapes, _step_shapes, flops,  # noqa: F401
                                      param_count, param_shapes, report, summary, unet_plan)
from refdiff.parallel import forward_in_parts


# --------------------------------------------------------------------------------- parameters

def _block_params(params: dict, step: Step, cfg: UNetConfig) -> dict:
    """The step's parameters under the block's short keys: params[name + "." + key]."""
    return {k: params[f"{step.name}.{k}"] for k in _step_shapes(step, cfg)}


# --------------------------------------------------------------------------------- parameters

def _zero_init(key: str) -> bool:
    """ADM's zero_module: each ResBlock's last conv, each AttnBlock's output projection, the output conv."""
    return key.endswith((".conv2.w", ".w_out")) or key == "out.conv.w"


def init_params(cfg: UNetConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: refdiff.models.common.lecun_init: w ~ N(0, 1 / fan_in), fan_in = k k C_in (conv) or C_in
          (linear); biases = 0;  GN gamma = 1, beta = 0;  label_embed.table ~ N(0, 1)
          zero (ADM's zero_module): "*.conv2.w" of every ResBlock, "*.w_out" of every AttnBlock and
          "out.conv.w", so every residual branch starts as the identity and a fresh model outputs 0.

    Draws are made in float64 and cast, so float32 and float64 parameters from one seed agree to
    float32 rounding. ``params_to(params, like)`` moves them to another backend.
    """
    dt = check_init(cfg, UNetConfig, generator, dtype)
    return lecun_init(_param_shapes(cfg), generator, dt, _zero_init)


def params_to(params: dict, like: Any) -> dict:
    """Parameters moved to the library, device and dtype of the array ``like`` (cast on the host)."""
    return {k: asarray(to_numpy(v), like=like, dtype=like.dtype) for k, v in params.items()}


# ------------------------------------------------------------------------------------ forward

class EmbedCache(NamedTuple):
    fc1: LinearCache
    silu1: SiluCache
    fc2: LinearCache
    label: EmbeddingCache | None  # None for an unconditional model
    silu2: SiluCache              # ADM's emb_layers' SiLU, applied once for every ResBlock


class UNetCache(NamedTuple):
    cfg: UNetConfig
    embed: EmbedCache
    steps: tuple  # one block cache per unet_plan(cfg) step
    dtype: Any    # the forward's dtype, for checking dout
    out_shape: tuple[int, ...]  # (N, C_out, H, W)


def embed_forward(params: dict, cfg: UNetConfig, x: Any, t: Any, y: Any, extra: Any = None):
    """emb = silu(fc2(silu(fc1(sinusoid(t)))) + table[y] + extra): ADM's time_embed, label_emb and the
    SiLU that starts every ResBlock's emb_layers, computed once. extra: (N, E) added before the SiLU (the
    text-conditional U-Net's projected caption, GLIDE's xf_proj), or None. Returns (N, E) like x, and an
    EmbedCache."""
    xp = namespace(x)
    s = timestep_embedding(t, cfg.base_channels, order=cfg.time_embed_order, dtype=x.dtype)  # (N, base)
    a, fc1 = linear_forward(s, params["time_embed.fc1.w"], params["time_embed.fc1.b"])  # (N, E)
    a, silu1 = silu_forward(a)
    emb, fc2 = linear_forward(a, params["time_embed.fc2.w"], params["time_embed.fc2.b"])  # (N, E)
    label = None
    if cfg.num_classes is not None:
        if y is None:  # no label = the null label K (classifier-free guidance's unconditional model)
            y = xp.full((x.shape[0],), cfg.num_classes, dtype=xp.int64, device=device(x))
        e, label = embedding_forward(y, params["label_embed.table"])  # (N, E)
        emb = emb + e
    if extra is not None:
        emb = emb + extra
    emb, silu2 = silu_forward(emb)
    return emb, EmbedCache(fc1, silu1, fc2, label, silu2)


def step_forward(step: Step, params: dict, cfg: UNetConfig, h: Any, emb: Any, train: bool, generator: Any,
                 keep_cache: bool = True):
    """Run one block of the plan on h (N, H, W, c_in); returns (h, cache) (keep_cache=False: a cache to
    drop, the normalizations and the Upsample fused without theirs). The noisy classifier runs its
    encoder's blocks with it too."""
    p = _block_params(params, step, cfg)
    if step.kind == "res":
        return B.resblock_forward(p, h, emb, cfg.groups, cfg.scale_shift_norm, cfg.dropout, train, generator,
                                  keep_cache)
    if step.kind == "attn":
        return B.attnblock_forward(p, h, cfg.heads, cfg.groups)
    if step.kind == "down":
        return B.downsample_forward(p, h)
    if step.kind == "up":
        return B.upsample_forward(p, h, keep_cache)
    if step.kind == "conv_in":
        return conv2d_forward(h, p["w"], p["b"])
    return B.head_forward(p, h, cfg.groups, keep_cache)


def unet_forward(params: dict, cfg: UNetConfig, x: Any, t: Any, y: Any = None, train: bool = False,
                 generator: Generator | None = None, keep_cache: bool = True):
    """The U-Net's prediction (eps, x0 or v, then the variance channels if learn_sigma).

    Math: module docstring; every block in refdiff.models.blocks.

    params: dict of param_shapes(cfg), arrays of x's library, device and dtype; x: (N, C_in, H, W) with
    H, W multiples of cfg.downsample_factor; t: (N,) integer or float steps; y: (N,) labels in [0, K]
    or None (the null label K of a class-conditional model); train, generator: dropout in every
    ResBlock when train, masks drawn from generator. keep_cache=False keeps no activations (sampling)
    and returns None for the cache. Returns out (N, output_channels, H, W) like x, and a UNetCache.

    This is the whole batch in one pass; refdiff.parallel.in_parts runs it in parts on the host's cores
    (what unet_model and the model registry use on the speed layer).
    """
    _check_forward(params, cfg, x, t, y, train, generator)
    emb, embed_cache = embed_forward(params, cfg, x, t, y)  # (N, E)
    out, caches = plan_forward(params, cfg, x, emb, train, generator, keep_cache)
    if not keep_cache:
        return out, None
    return out, UNetCache(cfg, embed_cache, caches, x.dtype, tuple(out.shape))


def plan_forward(params: dict, cfg: UNetConfig, x: Any, emb: Any, train: bool, generator: Any, keep_cache: bool,
                 run_step: Callable = step_forward):
    """The blocks of unet_plan(cfg) on x (N, C_in, H, W) with the embedding emb (N, E): the U-Net's body.

    run_step(step, params, cfg, h, emb, train, generator, keep_cache) -> (h, cache) runs one block (step_forward, or
    a model's own for some blocks: the text-conditional U-Net's attention reads the caption too).
    Returns out (N, C_out, H, W) and the blocks' caches (a tuple; None without keep_cache).
    """
    xp = namespace(x)
    h = xp.permute_dims(x, (0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C)
    skips, caches = [], []
    for step in unet_plan(cfg):
        if step.skip:  # ADM's th.cat([h, hs.pop()], dim=1)
            h = xp.concat((h, skips.pop()), axis=-1)  # (N, H', W', c_in) = [h | skip]
        h, cache = run_step(step, params, cfg, h, emb, train, generator, keep_cache)
        if step.push:
            skips.append(h)
        if keep_cache:
            caches.append(cache)
    out = xp.permute_dims(h, (0, 3, 1, 2))  # (N, H, W, C_out) -> (N, C_out, H, W)
    return out, (tuple(caches) if keep_cache else None)


# ----------------------------------------------------------------------------------- backward

def step_backward(step: Step, dh: Any, cache: Any):
    """Gradients of one block: returns (dh_in, demb or None, grads under the block's short keys)."""
    if step.kind == "res":
        return B.resblock_backward(dh, cache)
    if step.kind == "conv_in":
        dx, dw, db = conv2d_backward(dh, cache)  # dx is computed by the layer whether needed or not
        return dx, None, {"w": dw, "b": db}
    backward = {"attn": B.attnblock_backward, "down": B.downsample_backward, "up": B.upsample_backward,
                "head": B.head_backward}[step.kind]
    dx, grads = backward(dh, cache)
    return dx, None, grads


def embed_backward(demb: Any, c: EmbedCache) -> tuple[dict, Any]:
    """Gradients of embed_forward's parameters from demb (N, E), the sum over every ResBlock; and de
    (N, E), the gradient of the sum before the SiLU, which is also the gradient of ``extra``."""
    g = {}
    de = silu_backward(demb, c.silu2)  # emb = time_mlp + table[y] + extra: de reaches every term
    if c.label is not None:
        g["label_embed.table"] = embedding_backward(de, c.label)
    da, g["time_embed.fc2.w"], g["time_embed.fc2.b"] = linear_backward(de, c.fc2)
    da = silu_backward(da, c.silu1)
    _, g["time_embed.fc1.w"], g["time_embed.fc1.b"] = linear_backward(da, c.fc1)  # t gets no gradient
    return g, de


def unet_backward(dout: Any, cache: UNetCache, need_dx: bool = False):
    """Gradients of unet_forward: the plan's blocks in reverse, each block's backward.

    Math: gradients add up where one activation has several consumers:
      - every pushed encoder activation feeds the next block and, through a concatenation, a decoder
        ResBlock: its gradient is the next block's dx plus the decoder's slice of d[h | skip];
      - every ResBlock and AttnBlock adds its branch to a residual: dx = dy + dbranch (in blocks.py);
      - the embedding emb feeds every ResBlock: demb is the sum of the blocks' demb.

    dout: (N, output_channels, H, W) like the output. Returns grads (params' keys and order, like the
    params); with need_dx also dx (N, C_in, H, W), the gradient with respect to x (the noisy
    classifier's guidance gradient needs it).
    """
    check_backward("dout", dout, cache, UNetCache, "unet_forward", "output's")
    grads, demb, dx = plan_backward(cache.cfg, dout, cache.steps)
    grads.update(embed_backward(demb, cache.embed)[0])
    grads = {k: grads[k] for k in _param_shapes(cache.cfg)}  # params' order
    return (grads, dx) if need_dx else grads


def plan_backward(cfg: UNetConfig, dout: Any, caches: tuple, run_step: Callable = step_backward):
    """Gradients of plan_forward: the blocks in reverse, from dout (N, C_out, H, W).

    Math (unet_backward's sums): a pushed activation's gradient is the next block's dx plus the decoder's
    slice of d[h | skip]; demb is the sum of every ResBlock's demb.
    run_step(step, dh, cache) -> (dh_in, demb or None, grads under the block's short keys) (step_backward,
    or the model's own as in plan_forward). Returns (grads under the blocks' keys, demb (N, E), dx
    (N, C_in, H, W)).
    """
    xp = namespace(dout)
    dh = xp.permute_dims(dout, (0, 2, 3, 1))  # (N, C_out, H, W) -> (N, H, W, C_out)
    grads, demb, dskips = {}, None, []
    for step, c in zip(reversed(unet_plan(cfg)), reversed(caches)):
        if step.push:  # this output also went to the decoder as a skip: the two gradients add up
            dh = dh + dskips.pop()
        dh, demb_step, g = run_step(step, dh, c)
        grads.update({f"{step.name}.{k}": v for k, v in g.items()})
        if demb_step is not None:  # the shared embedding: every ResBlock's contribution adds up
            demb = demb_step if demb is None else demb + demb_step
        if step.skip:  # d[h | skip] splits into the two concatenated parts
            c_h = step.c_in - step.skip
            dskips.append(dh[..., c_h:])  # (N, H', W', skip), for the encoder block that pushed it
            dh = dh[..., :c_h]  # (N, H', W', c_h)
    return grads, demb, xp.permute_dims(dh, (0, 3, 1, 2))  # (N, H, W, C_in) -> (N, C_in, H, W)


# --------------------------------------------------------------------------- sampling adapter

def unet_model(params: dict, cfg: UNetConfig):
    """The sampler protocol ``model(xt, t, y=None) -> output`` (refdiff.samplers.common): evaluation
    mode, no activations kept (keep_cache=False), the batch in parts on the host's cores
    (refdiff.parallel). params must already be arrays of the library, device and dtype the sampler's
    xt will have (params_to)."""
    _check_params(params, cfg)

    def model(xt: Any, t: Any, y: Any = None):
        return forward_in_parts(unet_forward, params, cfg, xt, t, y, keep_cache=False)[0]

    return model


# ------------------------------------------------------------------------------- memory

def cache_nbytes(cache: Any, params: dict | None = None) -> int:
    """Bytes of the distinct arrays a cache holds, the arrays of ``params`` (and views of them) not
    counted: the activation memory a training step keeps between forward and backward.

    Views are charged to the array that owns their memory, once (NumPy and CuPy ``.base``); other
    libraries count each array object once.
    """
    def owner(a: Any) -> Any:
        while getattr(a, "base", None) is not None and hasattr(a.base, "shape"):
            a = a.base
        return a

    excluded = {id(owner(v)) for v in (params or {}).values()}
    seen: dict[int, int] = {}

    def visit(obj: Any) -> None:
        if isinstance(obj, tuple):  # NamedTuple caches, tuples of caches, shape tuples
            for item in obj:
                visit(item)
        elif hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, (int, float)):
            root = owner(obj)
            if id(root) not in excluded:
                seen[id(root)] = math.prod(root.shape) * host_dtype(root.dtype, namespace(root)).itemsize

    visit(cache)
    return sum(seen.values())


# ------------------------------------------------------------------------------------- checks

def _check_params(params: Any, cfg: Any) -> None:
    check_params(params, cfg, UNetConfig, _param_shapes)


def _check_forward(params, cfg, x, t, y, train, generator) -> None:
    _check_params(params, cfg)
    check_image(x, cfg.in_channels, cfg.downsample_factor)
    check_inputs(params, x, t, y, cfg.num_classes)
    check_generator(train, cfg.dropout, generator)
