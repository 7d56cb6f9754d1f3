"""The GAN's conv form for images (refdiff.models.gan holds the losses and the objectives): a DCGAN-style
generator (Radford et al. 2016) and a conv discriminator, class-conditional by projection (Miyato & Koyama 2018).

Data flow (N images C x S x S in [-1, 1], L = len(channels) levels, s = S / 2^(L-1), F = s s c_{L-1}):

    generator      a = z @ W_in + b_in [+ gen.table[y]];  h = silu(a) as (N, s, s, c_{L-1})
                   h = silu(conv_l(upsample2x(h))) for l = L-1..1 (c_l -> c_{l-1});  x = tanh(conv_out(h))
    discriminator  h = silu(conv0(x)), then h = silu(conv_l(h, stride 2)) for l = 1..L-1;  phi = flatten(h) (N, F)
                   logit = phi @ w_psi + b_psi [+ <disc.table[y], phi>]                   (N,)

The discriminator is the VAE's encoder (both in refdiff.models.conv_codec), the classifier's stride-2 conv encoder
without ResBlocks, read out by a linear psi; DCGAN's generator has BatchNorm and ReLU, its discriminator LeakyReLU:
here SiLU throughout (smooth, so the finite-difference checks see no kinks; refdiff has no batch norm, whose batch
statistics would couple the samples of a batch in the hand-derived backward). tanh keeps samples in [-1, 1].

Class-conditional (cfg.num_classes = K): the generator adds a label embedding (K rows, no null label: a GAN
sample always has a class) to its first layer; the discriminator adds the projection <embed(y), phi(x)>, the
inner product of a second label embedding with its features (Miyato & Koyama 2018, eq. 3). Why projection and
not a label concatenated to D's input: it is the form the optimal discriminator, log q(x, y) / p(x, y), takes
when the data's and the model's class posteriors are log-linear in phi (ibid., Sec. 3), it costs K F parameters,
and it makes D judge "is this a real x of class y" rather than "is this real" with y as a side input that D can
ignore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.models import conv_codec, gan_heads
from refdiff.models.common import check_image
from refdiff.models.conv_codec import ConvCodecShape, check_config, decoder_shapes, encoder_shapes


@dataclass(frozen=True)
class GANConfig(ConvCodecShape):
    """Architecture of the image GAN; validated on construction (a list of channels becomes a tuple)."""

    in_channels: int = 1            # C of the data
    image_size: int = 8             # S
    channels: tuple = (16, 32)      # c_l of level l, in both networks; each level after the first halves S
    latent_dim: int = 16            # Z, the generator's noise
    num_classes: int | None = None  # K for a class-conditional GAN, None for an unconditional one

    def __post_init__(self):
        check_config(self, (("in_channels", 1), ("image_size", 1), ("latent_dim", 1)))


def param_shapes(cfg: GANConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter: the generator's ("gen.") then the discriminator's ("disc.")."""
    C, Z, K = cfg.in_channels, cfg.latent_dim, cfg.num_classes
    F = math.prod(cfg.bottleneck)
    shapes = {"gen.in.w": (Z, F), "gen.in.b": (F,)}
    if K is not None:
        shapes["gen.label_embed.table"] = (K, F)
    shapes.update(decoder_shapes("gen.", C, cfg.channels))
    shapes.update(encoder_shapes("disc.", C, cfg.channels))
    shapes.update({"disc.psi.w": (F, 1), "disc.psi.b": (1,)})
    if K is not None:
        shapes["disc.label_embed.table"] = (K, F)
    return shapes


# ---------------------------------------------------------------------------------- generator

class GeneratorCache(NamedTuple):
    input: gan_heads.InputCache
    body: conv_codec.DecoderCache
    x: Any  # (N, S, S, C) the tanh output, for tanh' = 1 - x^2


def generate(params: dict, cfg: GANConfig, z: Any, y: Any = None):
    """The generator's image G(z, y) in [-1, 1].

    Math: a = z W_in + b_in + table[y];  upsample2x, conv3x3, silu per level;  x = tanh(conv_out(h))

    z: (N, Z); y: (N,) integer labels in [0, K), None for an unconditional GAN. Returns x (N, C, S, S) like z,
    and a GeneratorCache.
    """
    xp = namespace(z)
    a, inp = gan_heads.generator_input(params, z, y, cfg.num_classes is not None)  # (N, F)
    a_out, body = conv_codec.decoder_forward(params, "gen.", len(cfg.channels), cfg.bottleneck, a)  # (N, S, S, C)
    x = xp.tanh(a_out)
    return xp.permute_dims(x, (0, 3, 1, 2)), GeneratorCache(inp, body, x)  # (N, S, S, C) -> (N, C, S, S)


def generate_backward(dx: Any, c: GeneratorCache) -> dict:
    """Gradients of generate's parameters from dx (N, C, S, S) (z gets none: it is not learned)."""
    xp = namespace(dx)
    da_out = xp.permute_dims(dx, (0, 2, 3, 1)) * (1.0 - c.x * c.x)  # NCHW -> NHWC; tanh' = 1 - tanh^2
    g, da = conv_codec.decoder_backward(da_out, c.body)  # da (N, F)
    g.update(gan_heads.generator_input_backward(da, c.input))
    return g


# ------------------------------------------------------------------------------ discriminator

class DiscriminatorCache(NamedTuple):
    convs: conv_codec.EncoderCache
    head: gan_heads.ProjectionCache


def discriminate(params: dict, cfg: GANConfig, x: Any, y: Any = None):
    """The discriminator's logit D(x, y) (log odds of "real").

    Math: phi = flatten(silu(conv_{L-1}(... silu(conv0(x)))))                       (N, F)
          logit = psi(phi) + <embed(y), phi>,  psi(phi) = phi w_psi + b_psi      (Miyato & Koyama 2018, eq. 3)

    x: (N, C, S, S); y: (N,) labels in [0, K) or None for an unconditional GAN. Returns logits (N,) like x, and a
    DiscriminatorCache.
    """
    phi, convs = conv_codec.encoder_forward(params, "disc.", len(cfg.channels), x)  # (N, F)
    logit, head = gan_heads.projection_logit(params, phi, y, cfg.num_classes is not None)  # (N,)
    return logit, DiscriminatorCache(convs, head)


def discriminate_backward(dlogit: Any, c: DiscriminatorCache, need_dx: bool = False) -> tuple[dict, Any]:
    """Gradients of discriminate from dlogit (N,): (grads of the discriminator's parameters, dx (N, C, S, S) or
    None). need_dx=True carries the gradient on to the image, which is how the generator's loss reaches G.

    Math: dphi = dlogit w_psi^T + dlogit embed(y);  d table[y] = dlogit phi;  then the encoder's steps reversed
    """
    g, dphi = gan_heads.projection_logit_backward(dlogit, c.head)
    g_convs, dx = conv_codec.encoder_backward(dphi, c.convs, need_dx)  # dx NCHW or None
    g.update(g_convs)
    return g, dx


def check_x(cfg: GANConfig, x: Any) -> None:
    """Raise unless x is a real floating (N, C, S, S) array (N >= 1)."""
    check_image(x, cfg.in_channels, cfg.downsample_factor)
    if tuple(x.shape[2:]) != (cfg.image_size, cfg.image_size) or x.shape[0] < 1:
        raise ValueError(f"x must be (N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) (cfg.image_size) "
                         f"with N >= 1, got shape {tuple(x.shape)}")
