"""The VAE's conv form for images (refdiff.models.vae holds the bounds): a conv encoder to q(z | x), a conv
decoder to the mean of a discretized Gaussian p(x | z, y) with a learned scale per channel, and that likelihood.

Data flow (N images C x S x S in [-1, 1], L = len(channels) levels, s = S / 2^(L-1), F = s s c_{L-1}):

    encoder  h = silu(conv0(x)), then h = silu(conv_l(h, stride 2)) for l = 1..L-1     (N, s, s, c_{L-1})
             [mu | log sigma^2] = flatten(h) @ W_enc + b_enc                            (N, 2 Z)
    decoder  a = z @ W_in + b_in [+ table[y]]; h = silu(a) as (N, s, s, c_{L-1})
             h = silu(conv_l(upsample2x(h))) for l = L-1..1 (c_l -> c_{l-1});  m = conv_out(h)  (N, C, S, S)
    p(x | z, y) = prod_i DiscretizedGaussian(x_i; m_i, exp(log_scale_c))   on cfg.levels values in [-1, 1]

The decoder's scale is one learned log-scale per channel ("dec.log_scale", (C,)), not predicted per pixel
and not fixed: a fixed scale puts a constant floor under the bound that has nothing to do with the model
(the best fixed scale depends on how well the decoder reconstructs, which changes during training), while
the learned one is set by the ELBO itself; a per-pixel scale would be one more output head. The likelihood
is discretized (refdiff.likelihood, Ho et al. 2020 eq. 13) on the data's own grid (17 levels for the digits),
so its bound is a bound on -log P(x) of the discrete data, in the same bits/dim as the diffusion's VLB.

Class-conditional (cfg.num_classes = K): a label embedding (K + 1 rows, row K the null label a label-free
call uses) is added to the decoder's first layer; the encoder does not see the label.

Every coder of refdiff.models.vae has these functions: param_shapes, encode, encode_backward, decode,
decode_backward, log_likelihood, log_likelihood_backward, check_x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.backend import device, namespace
from refdiff.layers.basic import LinearCache, linear_backward, linear_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward
from refdiff.likelihood import discretized_gaussian_log_likelihood, discretized_gaussian_log_likelihood_backward
from refdiff.models import conv_codec
from refdiff.models.common import check_sized_image
from refdiff.models.conv_codec import ConvCodecShape, check_config, decoder_shapes, encoder_shapes


@dataclass(frozen=True)
class VAEConfig(ConvCodecShape):
    """Architecture of the VAE; validated on construction (a list of channels becomes a tuple)."""

    in_channels: int = 1            # C of the data
    image_size: int = 8             # S: the decoder's output is S x S
    channels: tuple = (16, 32)      # c_l of level l; every level after the first halves the resolution
    latent_dim: int = 16            # Z
    num_classes: int | None = None  # K for a class-conditional decoder, None for an unconditional one
    levels: int = 17                # the data's values on [-1, 1]: the discretized decoder's bins

    def __post_init__(self):
        check_config(self, (("in_channels", 1), ("image_size", 1), ("latent_dim", 1), ("levels", 2)))

    @property
    def dims(self) -> int:
        """D = C S S, the number of values of one image (bits/dim divides by it)."""
        return self.in_channels * self.image_size**2


def param_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and elbo_backward."""
    C, Z = cfg.in_channels, cfg.latent_dim
    F = math.prod(cfg.bottleneck)
    shapes = encoder_shapes("enc.", C, cfg.channels)
    shapes.update({"enc.out.w": (F, 2 * Z), "enc.out.b": (2 * Z,), "dec.in.w": (Z, F), "dec.in.b": (F,)})
    if cfg.num_classes is not None:
        shapes["label_embed.table"] = (cfg.num_classes + 1, F)  # row K is the null label
    shapes.update(decoder_shapes("dec.", C, cfg.channels))
    shapes["dec.log_scale"] = (C,)
    return shapes


# ------------------------------------------------------------------------------------ encoder

class EncoderCache(NamedTuple):
    convs: conv_codec.EncoderCache
    out: LinearCache


def encode(params: dict, cfg: VAEConfig, x: Any):
    """The encoder's q(z | x) = N(mu, diag(exp(logvar))).

    x: (N, C, S, S). Returns mu (N, Z), logvar (N, Z) like x, and an EncoderCache.
    """
    f, convs = conv_codec.encoder_forward(params, "enc.", len(cfg.channels), x)  # (N, F)
    out, lin = linear_forward(f, params["enc.out.w"], params["enc.out.b"])  # (N, 2 Z) = [mu | logvar]
    Z = cfg.latent_dim
    return out[:, :Z], out[:, Z:], EncoderCache(convs, lin)


def encode_backward(dmu: Any, dlogvar: Any, c: EncoderCache) -> dict:
    """Gradients of encode's parameters from dmu, dlogvar (N, Z) (the data x gets none)."""
    xp = namespace(dmu)
    g = {}
    df, g["enc.out.w"], g["enc.out.b"] = linear_backward(xp.concat((dmu, dlogvar), axis=1), c.out)  # (N, F)
    g.update(conv_codec.encoder_backward(df, c.convs)[0])
    return g


# ------------------------------------------------------------------------------------ decoder

class DecoderCache(NamedTuple):
    lin: LinearCache
    label: EmbeddingCache | None  # None for an unconditional decoder
    body: conv_codec.DecoderCache


def decode(params: dict, cfg: VAEConfig, z: Any, y: Any = None):
    """The decoder's mean m(z, y) of p(x | z, y).

    z: (N, Z); y: (N,) integer labels in [0, K] (K the null label), or None (the null label; must be None for
    an unconditional decoder). Returns m (N, C, S, S) like z, and a DecoderCache.
    """
    xp = namespace(z)
    N, label = z.shape[0], None
    a, lin = linear_forward(z, params["dec.in.w"], params["dec.in.b"])  # (N, F)
    if cfg.num_classes is not None:
        if y is None:
            y = xp.full((N,), cfg.num_classes, dtype=xp.int64, device=device(z))  # the null label
        e, label = embedding_forward(y, params["label_embed.table"])  # (N, F)
        a = a + e
    m, body = conv_codec.decoder_forward(params, "dec.", len(cfg.channels), cfg.bottleneck, a)  # (N, S, S, C)
    return xp.permute_dims(m, (0, 3, 1, 2)), DecoderCache(lin, label, body)  # (N, S, S, C) -> (N, C, S, S)


def decode_backward(dm: Any, c: DecoderCache) -> tuple[dict, Any]:
    """Gradients of decode: dm (N, C, S, S) -> (grads of the decoder's parameters, dz (N, Z))."""
    xp = namespace(dm)
    g, da = conv_codec.decoder_backward(xp.permute_dims(dm, (0, 2, 3, 1)), c.body)  # NCHW -> NHWC; da (N, F)
    if c.label is not None:
        g["label_embed.table"] = embedding_backward(da, c.label)  # a = z W + b + table[y]: da reaches both
    dz, g["dec.in.w"], g["dec.in.b"] = linear_backward(da, c.lin)
    return g, dz


# ---------------------------------------------------------------------------------- likelihood

def _log_scale(params: dict, cfg: VAEConfig) -> Any:
    """The decoder's log-scale (C,) shaped (1, C, 1, 1) to broadcast over images."""
    log_scale = params["dec.log_scale"]
    return namespace(log_scale).reshape(log_scale, (1, cfg.in_channels, 1, 1))  # (C,) -> (1, C, 1, 1)


def log_likelihood(params: dict, cfg: VAEConfig, x: Any, m: Any) -> Any:
    """log p(x | z, y) of each image, in nats: the discretized Gaussian of mean m and scale exp(log_scale_c).

    Math: log p = sum_i log [Phi((x_i + h - m_i) / s_c) - Phi((x_i - h - m_i) / s_c)], h = 1 / (levels - 1),
          the end bins extended to -inf and +inf                                   (Ho et al. 2020, eq. 13)

    x, m: (N, C, S, S). Returns (N,).
    """
    xp = namespace(x)
    log_p = discretized_gaussian_log_likelihood(x, m, _log_scale(params, cfg), cfg.levels)  # (N, C, S, S)
    return xp.sum(log_p, axis=(1, 2, 3))


def log_likelihood_backward(params: dict, cfg: VAEConfig, x: Any, m: Any, w: Any) -> tuple[Any, dict]:
    """Gradients of sum_n w_n log p(x_n | z_n, y_n): (dm (N, C, S, S), {"dec.log_scale": (C,)}); w: (N,)."""
    xp = namespace(x)
    dm, dlog_scale = discretized_gaussian_log_likelihood_backward(x, m, _log_scale(params, cfg), cfg.levels)
    w = xp.reshape(w, (w.shape[0], 1, 1, 1))  # (N,) -> (N, 1, 1, 1)
    return w * dm, {"dec.log_scale": xp.sum(w * dlog_scale, axis=(0, 2, 3))}  # summed over N, S, S per channel


def check_x(cfg: VAEConfig, x: Any) -> None:
    """Raise unless x is a real floating (N, C, S, S) array in [-1, 1] (one device read for the range)."""
    check_sized_image(x, cfg)
    xp = namespace(x)
    low, high = float(xp.min(x)), float(xp.max(x))  # two device-to-host reads
    if not -1.0 <= low <= high <= 1.0:
        raise ValueError(f"x must lie in [-1, 1] (the discretized decoder's range), got values in [{low}, {high}]")
