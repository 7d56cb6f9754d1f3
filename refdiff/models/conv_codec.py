"""The conv encoder and decoder that the VAE's (refdiff.models.vae_conv) and the GAN's (refdiff.models.gan_conv)
image networks share: the classifier's stride-2 conv encoder without ResBlocks, and its mirror, a DCGAN-style
upsampling decoder (Radford et al. 2016), SiLU throughout.

Data flow (N images C x S x S, L = len(channels) levels, s = S / 2^(L-1), F = s s c_{L-1}; parameter keys under
a prefix, "enc." / "disc." for an encoder, "dec." / "gen." for a decoder):

    encoder  h = silu(conv0(x)), then h = silu(conv_l(h, stride 2)) for l = 1..L-1;  f = flatten(h)   (N, F)
    decoder  h = silu(a) as (N, s, s, c_{L-1}) for a pre-activation a (N, F) (the caller's linear layer and label)
             h = silu(conv_l(upsample2x(h))) for l = L-1..1 (c_l -> c_{l-1});  out = conv_out(h)  (N, S, S, C)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.layers.basic import SiluCache, silu_backward, silu_forward
from refdiff.layers.conv import Conv2dCache, conv2d_backward, conv2d_forward
from refdiff.layers.resample import Resample2xCache, upsample2x_backward, upsample2x_forward
from refdiff.models.common import check_int


class ConvCodecShape:
    """The sizes a conv codec's config (fields in_channels, image_size, channels) implies; a base of VAEConfig and
    GANConfig."""

    @property
    def downsample_factor(self) -> int:
        """2^(L - 1): the encoder's stride-2 convolutions shrink S by this much."""
        return 2 ** (len(self.channels) - 1)

    @property
    def bottleneck(self) -> tuple[int, int, int]:
        """(s, s, c_{L-1}): the encoder's last activation, the decoder's first, per image."""
        s = self.image_size // self.downsample_factor
        return s, s, self.channels[-1]


def check_config(cfg: ConvCodecShape, lows: tuple) -> None:
    """Validate a conv codec's config in place (a list of channels becomes a tuple): every (name, low) of lows an
    integer >= low, channels non-empty positive integers, num_classes None or >= 1, image_size a multiple of
    2^(L - 1)."""
    object.__setattr__(cfg, "channels", tuple(cfg.channels))
    for name, low in lows:
        check_int(name, getattr(cfg, name), low)
    if not cfg.channels:
        raise ValueError("channels must have at least one entry, got ()")
    for c in cfg.channels:
        check_int("every entry of channels", c, 1)
    if cfg.num_classes is not None:
        check_int("num_classes", cfg.num_classes, 1)
    if cfg.image_size % cfg.downsample_factor:
        raise ValueError(f"image_size must be a multiple of 2^(len(channels) - 1) = {cfg.downsample_factor}, "
                         f"got {cfg.image_size}")


def encoder_shapes(prefix: str, C: int, channels: tuple) -> dict[str, tuple[int, ...]]:
    """The encoder's conv parameters: prefix + "conv{l}.w" (3, 3, c_{l-1}, c_l) and ".b" (c_l,), c_{-1} = C."""
    c = (C, *channels)
    shapes = {}
    for l in range(len(channels)):
        shapes[f"{prefix}conv{l}.w"], shapes[f"{prefix}conv{l}.b"] = (3, 3, c[l], c[l + 1]), (c[l + 1],)
    return shapes


def decoder_shapes(prefix: str, C: int, channels: tuple) -> dict[str, tuple[int, ...]]:
    """The decoder's conv parameters: prefix + "conv{l}" (c_l -> c_{l-1}) for l = L-1..1, then "out" (c_0 -> C)."""
    c, shapes = channels, {}
    for l in range(len(c) - 1, 0, -1):
        shapes[f"{prefix}conv{l}.w"], shapes[f"{prefix}conv{l}.b"] = (3, 3, c[l], c[l - 1]), (c[l - 1],)
    shapes.update({f"{prefix}out.w": (3, 3, c[0], C), f"{prefix}out.b": (C,)})
    return shapes


# ------------------------------------------------------------------------------------ encoder

class EncoderCache(NamedTuple):
    prefix: str
    convs: tuple  # one Conv2dCache per level
    silus: tuple  # one SiluCache per level
    h_shape: tuple[int, ...]  # (N, s, s, c_{L-1}) before flattening


def encoder_forward(params: dict, prefix: str, levels: int, x: Any) -> tuple[Any, EncoderCache]:
    """The encoder's features f = flatten(silu(conv_{L-1}(... silu(conv0(x))))).

    x: (N, C, S, S). Returns f (N, F) like x, and an EncoderCache.
    """
    xp = namespace(x)
    h = xp.permute_dims(x, (0, 2, 3, 1))  # (N, C, S, S) -> (N, S, S, C)
    convs, silus = [], []
    for l in range(levels):
        h, conv = conv2d_forward(h, params[f"{prefix}conv{l}.w"], params[f"{prefix}conv{l}.b"],
                                 stride=1 if l == 0 else 2)
        h, silu = silu_forward(h)
        convs.append(conv)
        silus.append(silu)
    h_shape = tuple(h.shape)
    f = xp.reshape(h, (h_shape[0], math.prod(h_shape[1:])))  # (N, s, s, c) -> (N, F)
    return f, EncoderCache(prefix, tuple(convs), tuple(silus), h_shape)


def encoder_backward(df: Any, c: EncoderCache, need_dx: bool = False) -> tuple[dict, Any]:
    """Gradients of encoder_forward from df (N, F): (grads of its conv parameters, dx (N, C, S, S) or None)."""
    xp = namespace(df)
    g, p = {}, c.prefix
    dh = xp.reshape(df, c.h_shape)  # (N, F) -> (N, s, s, c)
    for l in range(len(c.convs) - 1, -1, -1):
        dh = silu_backward(dh, c.silus[l])
        dh, g[f"{p}conv{l}.w"], g[f"{p}conv{l}.b"] = conv2d_backward(dh, c.convs[l])
    return g, (xp.permute_dims(dh, (0, 3, 1, 2)) if need_dx else None)  # NHWC -> NCHW


# ------------------------------------------------------------------------------------ decoder

class UpLevelCache(NamedTuple):
    level: int  # l: this step maps c_l channels to c_{l-1}
    up: Resample2xCache
    conv: Conv2dCache
    silu: SiluCache


class DecoderCache(NamedTuple):
    prefix: str
    silu: SiluCache
    levels: tuple  # one UpLevelCache per level l = L-1..1, in forward order
    out: Conv2dCache


def decoder_forward(params: dict, prefix: str, levels: int, bottleneck: tuple, a: Any) -> tuple[Any, DecoderCache]:
    """The decoder's output conv_out(h) from the pre-activation a (N, F) of its first layer.

    levels: L; bottleneck: (s, s, c_{L-1}). Returns out (N, S, S, C) (channels last) like a, and a DecoderCache.
    """
    xp = namespace(a)
    h, silu = silu_forward(a)
    h = xp.reshape(h, (a.shape[0], *bottleneck))  # (N, F) -> (N, s, s, c_{L-1})
    caches = []
    for l in range(levels - 1, 0, -1):
        h, up = upsample2x_forward(h)  # (N, 2s, 2s, c_l)
        h, conv = conv2d_forward(h, params[f"{prefix}conv{l}.w"], params[f"{prefix}conv{l}.b"])  # c_l -> c_{l-1}
        h, s = silu_forward(h)
        caches.append(UpLevelCache(l, up, conv, s))
    out, out_cache = conv2d_forward(h, params[f"{prefix}out.w"], params[f"{prefix}out.b"])  # (N, S, S, C)
    return out, DecoderCache(prefix, silu, tuple(caches), out_cache)


def decoder_backward(dout: Any, c: DecoderCache) -> tuple[dict, Any]:
    """Gradients of decoder_forward from dout (N, S, S, C): (grads of its conv parameters, da (N, F))."""
    xp = namespace(dout)
    g, p = {}, c.prefix
    dh, g[f"{p}out.w"], g[f"{p}out.b"] = conv2d_backward(dout, c.out)
    for lc in reversed(c.levels):  # levels 1..L-1: the forward's steps reversed
        dh = silu_backward(dh, lc.silu)
        dh, g[f"{p}conv{lc.level}.w"], g[f"{p}conv{lc.level}.b"] = conv2d_backward(dh, lc.conv)
        dh = upsample2x_backward(dh, lc.up)
    return g, silu_backward(xp.reshape(dh, (dh.shape[0], -1)), c.silu)  # (N, s, s, c) -> (N, F)
