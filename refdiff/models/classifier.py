"""The noisy classifier of ADM (Dhariwal & Nichol 2021, Sec. 4; guided-diffusion's ``EncoderUNetModel``),
with hand-derived backprop: p_phi(y | x_t, t), whose input gradient guides a sampler.

It is the U-Net's encoder half, run by the same code (refdiff.models.unet's
``unet_plan``, ``step_forward`` and ``step_backward``), followed by a pooling head (L = len(channel_mult) levels):

    emb = silu(fc2(silu(fc1(sinusoid(t, base)))))                    (N, E), shared by all ResBlocks
    h = conv_in(x);  level l = 0..L-1: R x (ResBlock [+ Attn]), Downsample (but after the last level)
    middle: ResBlock, Attn, ResBlock                                  (N, H / 2^(L-1), W / 2^(L-1), C)
    f = mean over (H, W) of silu(GN(h))                               (N, C), the pooled features
    logits = f @ W + b                                                (N, K)

The pooling is ADM's ``pool="adaptive"`` (GroupNorm, SiLU, AdaptiveAvgPool2d(1), zero-initialised
1x1 conv, flatten): a 1x1 conv on a 1x1 map is the linear layer above. ADM's default for ImageNet is
``pool="attention"`` (attention pooling over the positions); the global average keeps the head to three
layers, works at any H, W, and its features f are what refdiff.metrics uses for the Frechet distance.
The classifier is time-conditioned only (no label input: the label is its output).

Parameters are a flat dict whose encoder keys are exactly the U-Net's ("time_embed.fc1.w",
"input.conv.w", "down.<level>.res.<i>.conv1.w", "mid.attn.w_qkv", ...; one config gives one set of
shapes for both), followed by the head: "out.norm.gamma", "out.norm.beta", "out.linear.w",
"out.linear.b". Images are NCHW at the boundary and NHWC inside, as in the U-Net.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, namespace
from refdiff.layers.basic import LinearCache, SiluCache, linear_backward, linear_forward, silu_backward, silu_forward
from refdiff.layers.embed import timestep_embedding
from refdiff.layers.norm import GroupNormCache, group_norm_backward, group_norm_forward
from refdiff.models import unet as U
from refdiff.models.common import (check_backward, check_generator, check_image, check_init, check_inputs, check_int,
                                   check_params, count_params, lecun_init)
from refdiff.parallel import forward_in_parts

ENCODER_PREFIXES = ("time_embed.", "input.", "down.", "mid.")  # the U-Net's keys the classifier shares


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of the noisy classifier; the encoder's fields mean what they mean in UNetConfig and
    are validated by it on construction (lists become tuples, time_embed_dim=None is 4 base_channels)."""

    in_channels: int = 1            # C of the data
    image_size: int = 28            # the resolution attention_resolutions refers to
    base_channels: int = 32         # level l has base_channels * channel_mult[l] channels
    channel_mult: tuple = (1, 2, 2)  # one entry per level; L entries give L - 1 downsamplings
    num_res_blocks: int = 1         # ResBlocks per level
    attention_resolutions: tuple = ()  # resolutions whose ResBlocks get attention; the middle has it always
    heads: int = 1                  # attention heads
    groups: int = 8                 # GroupNorm groups
    dropout: float = 0.0            # drop probability inside every ResBlock, while training
    num_classes: int = 10           # K, the number of logits
    scale_shift_norm: bool = True   # AdaGN (ADM) if True, else the embedding is added before GN2
    time_embed_dim: int | None = None  # E; None means 4 * base_channels
    time_embed_order: str = "cos_sin"  # "cos_sin" (OpenAI) or "sin_cos" (diffusers)

    def __post_init__(self):
        check_int("num_classes", self.num_classes, 1)
        encoder = _encoder_unet_config(self)  # raises, naming the field, for a bad encoder field
        for name in ("channel_mult", "attention_resolutions", "time_embed_dim"):
            object.__setattr__(self, name, getattr(encoder, name))

    @property
    def feature_channels(self) -> int:
        """C, the width of the pooled features f: base_channels * channel_mult[-1]."""
        return self.base_channels * self.channel_mult[-1]

    @property
    def downsample_factor(self) -> int:
        """2^(L - 1): H and W of the input must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)


def _encoder_unet_config(cfg: ClassifierConfig) -> U.UNetConfig:
    """The unconditional U-Net whose encoder (input conv, down levels, middle block) is cfg's."""
    return U.UNetConfig(in_channels=cfg.in_channels, out_channels=cfg.in_channels, image_size=cfg.image_size,
                        base_channels=cfg.base_channels, channel_mult=cfg.channel_mult,
                        num_res_blocks=cfg.num_res_blocks, attention_resolutions=cfg.attention_resolutions,
                        heads=cfg.heads, dropout=cfg.dropout, groups=cfg.groups, num_classes=None,
                        scale_shift_norm=cfg.scale_shift_norm, time_embed_dim=cfg.time_embed_dim,
                        time_embed_order=cfg.time_embed_order)


@functools.lru_cache(maxsize=64)
def encoder_plan(cfg: ClassifierConfig) -> tuple[U.Step, ...]:
    """The encoder's blocks in forward order: the U-Net plan from "input.conv" to "mid.res.1"."""
    plan = U.unet_plan(_encoder_unet_config(cfg))
    end = [step.name for step in plan].index("mid.res.1")
    return plan[: end + 1]


@functools.lru_cache(maxsize=64)
def _param_shapes(cfg: ClassifierConfig) -> dict[str, tuple[int, ...]]:
    unet_shapes = U.param_shapes(_encoder_unet_config(cfg))
    shapes = {k: v for k, v in unet_shapes.items() if k.startswith(ENCODER_PREFIXES)}
    C, K = cfg.feature_channels, cfg.num_classes
    shapes.update({"out.norm.gamma": (C,), "out.norm.beta": (C,), "out.linear.w": (C, K), "out.linear.b": (K,)})
    return shapes


def param_shapes(cfg: ClassifierConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in forward order (the order of init_params and classifier_backward)."""
    return dict(_param_shapes(cfg))


def param_count(cfg: ClassifierConfig) -> int:
    """Number of scalar parameters of the classifier ``cfg`` describes (no arrays are built)."""
    return count_params(_param_shapes(cfg))


def flops(cfg: ClassifierConfig, image_size: int | None = None) -> tuple[list[tuple[str, int]], int]:
    """Multiply-adds of one forward pass for one image, per layer, from the config alone: the U-Net's
    count (``refdiff.models.unet.flops``) of the encoder's layers, then the linear head C K. The pooling
    (GroupNorm, SiLU, mean) is left out like every elementwise pass. Returns ([(name, count), ...], total).
    """
    layers, _ = U.flops(_encoder_unet_config(cfg), image_size)
    end = max(i for i, (name, _) in enumerate(layers) if name.startswith(f"{encoder_plan(cfg)[-1].name}."))
    layers = layers[: end + 1] + [("out.linear", cfg.feature_channels * cfg.num_classes)]
    return layers, sum(count for _, count in layers)


def summary(cfg: ClassifierConfig, image_size: int | None = None) -> str:
    """A text report of the config, its parameter count and its per-layer multiply-adds
    (what ``refdiff info --model NAME_classifier`` prints)."""
    S = cfg.image_size if image_size is None else image_size
    return U.report(cfg, param_count(cfg), *flops(cfg, S), S)


def init_params(cfg: ClassifierConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: the U-Net's rule (refdiff.models.common.lecun_init): w ~ N(0, 1 / fan_in) drawn in float64
          and cast; biases 0; GN gamma = 1, beta = 0; zero (ADM's zero_module) every ResBlock's "conv2.w" and every
          AttnBlock's "w_out", and the head's "out.linear.w" (ADM zeroes the classifier's final 1x1
          conv too), so a fresh classifier outputs logits 0: the uniform p(y | x_t).
    """
    dt = check_init(cfg, ClassifierConfig, generator, dtype)
    return lecun_init(_param_shapes(cfg), generator, dt, _zero_init)


def _zero_init(key: str) -> bool:
    """ADM's zero_module: each ResBlock's last conv, each AttnBlock's output projection, the linear head."""
    return key.endswith((".conv2.w", ".w_out")) or key == "out.linear.w"


# ------------------------------------------------------------------------------------ forward

class TimeEmbedCache(NamedTuple):
    fc1: LinearCache
    silu1: SiluCache
    fc2: LinearCache
    silu2: SiluCache  # ADM's emb_layers' SiLU, applied once for every ResBlock


class PoolCache(NamedTuple):
    norm: GroupNormCache
    silu: SiluCache
    hw_shape: tuple[int, ...]  # (N, H', W', C): the pooled activation's shape


class ClassifierCache(NamedTuple):
    cfg: ClassifierConfig
    embed: TimeEmbedCache
    steps: tuple  # one block cache per encoder_plan(cfg) step
    pool: PoolCache
    head: LinearCache
    out_shape: tuple[int, ...]  # (N, K)
    dtype: Any  # the forward's dtype, for checking dlogits


def _time_embed_forward(params: dict, cfg: ClassifierConfig, x: Any, t: Any):
    """emb = silu(fc2(silu(fc1(sinusoid(t))))): the U-Net's time embedding MLP and the SiLU that
    starts every ResBlock's emb_layers. Returns (N, E) like x, and a TimeEmbedCache."""
    s = timestep_embedding(t, cfg.base_channels, order=cfg.time_embed_order, dtype=x.dtype)  # (N, base)
    a, fc1 = linear_forward(s, params["time_embed.fc1.w"], params["time_embed.fc1.b"])  # (N, E)
    a, silu1 = silu_forward(a)
    a, fc2 = linear_forward(a, params["time_embed.fc2.w"], params["time_embed.fc2.b"])  # (N, E)
    emb, silu2 = silu_forward(a)
    return emb, TimeEmbedCache(fc1, silu1, fc2, silu2)


def _pool_forward(params: dict, cfg: ClassifierConfig, h: Any):
    """f = mean over (H, W) of silu(GN(h)) (ADM's "adaptive" pooling). h: (N, H, W, C) -> f (N, C)."""
    xp = namespace(h)
    a, norm = group_norm_forward(h, params["out.norm.gamma"], params["out.norm.beta"], cfg.groups)
    a, silu = silu_forward(a)
    return xp.mean(a, axis=(1, 2)), PoolCache(norm, silu, tuple(h.shape))  # (N, C)


def _encode(params: dict, cfg: ClassifierConfig, x: Any, t: Any, train: bool, generator: Any, keep_cache: bool):
    """The pooled features f (N, C) of x (N, C_in, H, W), and (embed cache, step caches, pool cache)."""
    xp = namespace(x)
    emb, embed_cache = _time_embed_forward(params, cfg, x, t)  # (N, E)
    h = xp.permute_dims(x, (0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C)
    caches, encoder = [], _encoder_unet_config(cfg)
    for step in encoder_plan(cfg):  # the U-Net's blocks (blocks.py through unet.step_forward)
        h, cache = U.step_forward(step, params, encoder, h, emb, train, generator, keep_cache)
        if keep_cache:
            caches.append(cache)
    f, pool_cache = _pool_forward(params, cfg, h)  # (N, C)
    return f, (embed_cache, tuple(caches), pool_cache)


def classifier_forward(params: dict, cfg: ClassifierConfig, x: Any, t: Any, train: bool = False,
                       generator: Generator | None = None, keep_cache: bool = True):
    """The classifier's logits of p_phi(y | x_t, t) = softmax(logits).

    Math: module docstring; every block in refdiff.models.blocks.

    params: dict of param_shapes(cfg), arrays of x's library, device and dtype; x: (N, C_in, H, W) with
    H, W multiples of cfg.downsample_factor; t: (N,) integer or float steps (0 for clean images);
    train, generator: dropout in every ResBlock when train, masks drawn from generator. keep_cache=False
    keeps no activations and returns None for the cache. Returns logits (N, K) like x, and a
    ClassifierCache.
    """
    _check_forward(params, cfg, x, t, train, generator)
    f, (embed_cache, steps, pool_cache) = _encode(params, cfg, x, t, train, generator, keep_cache)
    logits, head = linear_forward(f, params["out.linear.w"], params["out.linear.b"])  # (N, K)
    if not keep_cache:
        return logits, None
    return logits, ClassifierCache(cfg, embed_cache, steps, pool_cache, head, tuple(logits.shape), x.dtype)


def classifier_features(params: dict, cfg: ClassifierConfig, x: Any, t: Any):
    """The pooled features f (N, C) that the linear head reads (evaluation mode, no cache kept): the
    penultimate layer, whose statistics the Frechet distance compares (refdiff.metrics)."""
    _check_forward(params, cfg, x, t, False, None)
    return _encode(params, cfg, x, t, False, None, keep_cache=False)[0]


# ----------------------------------------------------------------------------------- backward

def _pool_backward(df: Any, c: PoolCache, grads: dict) -> Any:
    """Gradient of _pool_forward: df (N, C) -> dh (N, H, W, C); adds the GN parameters' to grads.

    Math: f = (1 / (H W)) sum_{h, w} a[:, h, w, :]  =>  da[:, h, w, :] = df / (H W) at every position.
    """
    xp = namespace(df)
    N, H, W, C = c.hw_shape
    da = xp.broadcast_to(xp.reshape(df / (H * W), (N, 1, 1, C)), c.hw_shape)  # (N, H, W, C)
    da = silu_backward(da, c.silu)
    dh, grads["out.norm.gamma"], grads["out.norm.beta"] = group_norm_backward(da, c.norm)
    return dh


def _time_embed_backward(demb: Any, c: TimeEmbedCache) -> dict:
    """Gradients of _time_embed_forward's parameters from demb (N, E), the sum over every ResBlock."""
    g = {}
    da = silu_backward(demb, c.silu2)
    da, g["time_embed.fc2.w"], g["time_embed.fc2.b"] = linear_backward(da, c.fc2)
    da = silu_backward(da, c.silu1)
    _, g["time_embed.fc1.w"], g["time_embed.fc1.b"] = linear_backward(da, c.fc1)  # t gets no gradient
    return g


def classifier_backward(dlogits: Any, cache: ClassifierCache, need_dx: bool = False):
    """Gradients of classifier_forward: the head, the pooling, the encoder's blocks in reverse.

    Math: every ResBlock and AttnBlock adds its branch to a residual: dx = dy + dbranch (blocks.py);
          the embedding emb feeds every ResBlock: demb is the sum of the blocks' demb.

    dlogits: (N, K) like the logits. Returns grads (params' keys and order, like the params); with
    need_dx also dx (N, C_in, H, W), the gradient with respect to x: with dlogits = onehot(y) -
    softmax(logits) it is grad_x log p_phi(y | x_t, t), classifier guidance's gradient.
    """
    check_backward("dlogits", dlogits, cache, ClassifierCache, "classifier_forward", "logits'")
    cfg, xp = cache.cfg, namespace(dlogits)
    grads = {}
    df, grads["out.linear.w"], grads["out.linear.b"] = linear_backward(dlogits, cache.head)  # (N, C)
    dh = _pool_backward(df, cache.pool, grads)  # (N, H', W', C)
    demb = None
    for step, c in zip(reversed(encoder_plan(cfg)), reversed(cache.steps)):
        dh, demb_step, g = U.step_backward(step, dh, c)
        grads.update({f"{step.name}.{k}": v for k, v in g.items()})
        if demb_step is not None:  # the shared embedding: every ResBlock's contribution adds up
            demb = demb_step if demb is None else demb + demb_step
    grads.update(_time_embed_backward(demb, cache.embed))
    grads = {k: grads[k] for k in _param_shapes(cfg)}  # params' order
    if not need_dx:
        return grads
    return grads, xp.permute_dims(dh, (0, 3, 1, 2))  # (N, H, W, C_in) -> (N, C_in, H, W)


# ------------------------------------------------------------------------------ model, checks

def classifier_model(params: dict, cfg: ClassifierConfig):
    """``classify(x, t) -> logits (N, K)`` in evaluation mode, no activations kept. params must already
    be arrays of the library, device and dtype x will have (refdiff.models.unet.params_to)."""
    _check_params(params, cfg)

    def classify(x: Any, t: Any):
        return forward_in_parts(classifier_forward, params, cfg, x, t, keep_cache=False)[0]

    return classify


def _check_params(params: Any, cfg: Any) -> None:
    check_params(params, cfg, ClassifierConfig, _param_shapes)


def _check_forward(params, cfg, x, t, train, generator) -> None:
    _check_params(params, cfg)
    check_image(x, cfg.in_channels, cfg.downsample_factor)
    check_inputs(params, x, t)
    check_generator(train, cfg.dropout, generator)
