"""A variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014) with hand-derived backprop:
a conv encoder to q(z | x), the reparameterised sample, a conv decoder to a discretized Gaussian p(x | z, y),
the ELBO and its gradient, and the importance-weighted bound (Burda et al. 2016).

Data flow (N images C x S x S in [-1, 1], L = len(channels) levels, s = S / 2^(L-1), F = s s c_{L-1}):

    encoder  h = silu(conv0(x)), then h = silu(conv_l(h, stride 2)) for l = 1..L-1     (N, s, s, c_{L-1})
             [mu | log sigma^2] = flatten(h) @ W_enc + b_enc                            (N, 2 Z)
    sample   z = mu + sigma * eps,  eps ~ N(0, I) passed in (docs/design.md rule 4)      (N, Z)
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, device, namespace
from refdiff.layers.basic import LinearCache, SiluCache, linear_backward, linear_forward, silu_backward, silu_forward
from refdiff.layers.conv import Conv2dCache, conv2d_backward, conv2d_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward
from refdiff.layers.resample import Resample2xCache, upsample2x_backward, upsample2x_forward
from refdiff.likelihood import (discretized_gaussian_log_likelihood, discretized_gaussian_log_likelihood_backward,
                                normal_kl)
from refdiff.models.common import check_image, check_init, check_int, check_params, count_params, lecun_init, \
    same_library

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the VAE; validated on construction (a list of channels becomes a tuple)."""

    in_channels: int = 1            # C of the data
    image_size: int = 8             # S: the decoder's output is S x S
    channels: tuple = (16, 32)      # c_l of level l; every level after the first halves the resolution
    latent_dim: int = 16            # Z
    num_classes: int | None = None  # K for a class-conditional decoder, None for an unconditional one
    levels: int = 17                # the data's values on [-1, 1]: the discretized decoder's bins

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        for name, low in (("in_channels", 1), ("image_size", 1), ("latent_dim", 1), ("levels", 2)):
            check_int(name, getattr(self, name), low)
        if not self.channels:
            raise ValueError("channels must have at least one entry, got ()")
        for c in self.channels:
            check_int("every entry of channels", c, 1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size must be a multiple of 2^(len(channels) - 1) = {self.downsample_factor}, "
                             f"got {self.image_size}")

    @property
    def downsample_factor(self) -> int:
        """2^(L - 1): the encoder's stride-2 convolutions shrink S by this much."""
        return 2 ** (len(self.channels) - 1)

    @property
    def bottleneck(self) -> tuple[int, int, int]:
        """(s, s, c_{L-1}): the encoder's last activation, the decoder's first, per image."""
        s = self.image_size // self.downsample_factor
        return s, s, self.channels[-1]

    @property
    def dims(self) -> int:
        """D = C S S, the number of values of one image (bits/dim divides by it)."""
        return self.in_channels * self.image_size**2


def param_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and elbo_backward."""
    C, Z, c = cfg.in_channels, cfg.latent_dim, cfg.channels
    F = math.prod(cfg.bottleneck)
    shapes = {"enc.conv0.w": (3, 3, C, c[0]), "enc.conv0.b": (c[0],)}
    for l in range(1, len(c)):
        shapes[f"enc.conv{l}.w"], shapes[f"enc.conv{l}.b"] = (3, 3, c[l - 1], c[l]), (c[l],)
    shapes.update({"enc.out.w": (F, 2 * Z), "enc.out.b": (2 * Z,), "dec.in.w": (Z, F), "dec.in.b": (F,)})
    if cfg.num_classes is not None:
        shapes["label_embed.table"] = (cfg.num_classes + 1, F)  # row K is the null label
    for l in range(len(c) - 1, 0, -1):
        shapes[f"dec.conv{l}.w"], shapes[f"dec.conv{l}.b"] = (3, 3, c[l], c[l - 1]), (c[l - 1],)
    shapes.update({"dec.out.w": (3, 3, c[0], C), "dec.out.b": (C,), "dec.log_scale": (C,)})
    return shapes


def param_count(cfg: VAEConfig) -> int:
    """Number of scalar parameters of the VAE ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: VAEConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: w ~ N(0, 1 / fan_in) (refdiff.models.common.lecun_init), biases 0, label_embed.table ~ N(0, 1),
          dec.log_scale = 0 (the decoder's scale starts at 1, the width of the data's range [-1, 1] / 2)
    """
    dt = check_init(cfg, VAEConfig, generator, dtype)
    return lecun_init(param_shapes(cfg), generator, dt, zero=lambda key: False)


# ------------------------------------------------------------------------------------ encoder

class EncoderCache(NamedTuple):
    convs: tuple  # one Conv2dCache per level
    silus: tuple  # one SiluCache per level
    h_shape: tuple[int, ...]  # (N, s, s, c_{L-1}) before flattening
    out: LinearCache


def encode(params: dict, cfg: VAEConfig, x: Any):
    """The encoder's q(z | x) = N(mu, diag(exp(logvar))).

    x: (N, C, S, S). Returns mu (N, Z), logvar (N, Z) like x, and an EncoderCache.
    """
    xp = namespace(x)
    h = xp.permute_dims(x, (0, 2, 3, 1))  # (N, C, S, S) -> (N, S, S, C)
    convs, silus = [], []
    for l in range(len(cfg.channels)):
        h, conv = conv2d_forward(h, params[f"enc.conv{l}.w"], params[f"enc.conv{l}.b"], stride=1 if l == 0 else 2)
        h, silu = silu_forward(h)
        convs.append(conv)
        silus.append(silu)
    h_shape = tuple(h.shape)
    f = xp.reshape(h, (h_shape[0], math.prod(h_shape[1:])))  # (N, s, s, c) -> (N, F)
    out, lin = linear_forward(f, params["enc.out.w"], params["enc.out.b"])  # (N, 2 Z) = [mu | logvar]
    Z = cfg.latent_dim
    return out[:, :Z], out[:, Z:], EncoderCache(tuple(convs), tuple(silus), h_shape, lin)


def encode_backward(dmu: Any, dlogvar: Any, c: EncoderCache) -> dict:
    """Gradients of encode's parameters from dmu, dlogvar (N, Z) (the data x gets none)."""
    xp = namespace(dmu)
    g = {}
    df, g["enc.out.w"], g["enc.out.b"] = linear_backward(xp.concat((dmu, dlogvar), axis=1), c.out)  # (N, F)
    dh = xp.reshape(df, c.h_shape)  # (N, F) -> (N, s, s, c)
    for l in range(len(c.convs) - 1, -1, -1):
        dh = silu_backward(dh, c.silus[l])
        dh, g[f"enc.conv{l}.w"], g[f"enc.conv{l}.b"] = conv2d_backward(dh, c.convs[l])
    return g


# ------------------------------------------------------------------------------------ decoder

class UpLevelCache(NamedTuple):
    level: int  # l: this step maps c_l channels to c_{l-1}
    up: Resample2xCache
    conv: Conv2dCache
    silu: SiluCache


class DecoderCache(NamedTuple):
    lin: LinearCache
    label: EmbeddingCache | None  # None for an unconditional decoder
    silu: SiluCache
    levels: tuple  # one UpLevelCache per level l = L-1..1, in forward order
    out: Conv2dCache


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
    h, silu = silu_forward(a)
    h = xp.reshape(h, (N, *cfg.bottleneck))  # (N, F) -> (N, s, s, c_{L-1})
    levels = []
    for l in range(len(cfg.channels) - 1, 0, -1):
        h, up = upsample2x_forward(h)  # (N, 2s, 2s, c_l)
        h, conv = conv2d_forward(h, params[f"dec.conv{l}.w"], params[f"dec.conv{l}.b"])  # c_l -> c_{l-1}
        h, s = silu_forward(h)
        levels.append(UpLevelCache(l, up, conv, s))
    m, out = conv2d_forward(h, params["dec.out.w"], params["dec.out.b"])  # (N, S, S, C)
    cache = DecoderCache(lin, label, silu, tuple(levels), out)
    return xp.permute_dims(m, (0, 3, 1, 2)), cache  # (N, S, S, C) -> (N, C, S, S)


def decode_backward(dm: Any, c: DecoderCache) -> tuple[dict, Any]:
    """Gradients of decode: dm (N, C, S, S) -> (grads of the decoder's parameters, dz (N, Z))."""
    xp = namespace(dm)
    g = {}
    dh, g["dec.out.w"], g["dec.out.b"] = conv2d_backward(xp.permute_dims(dm, (0, 2, 3, 1)), c.out)  # NCHW -> NHWC
    for lc in reversed(c.levels):  # levels 1..L-1: the forward's steps reversed
        dh = silu_backward(dh, lc.silu)
        dh, g[f"dec.conv{lc.level}.w"], g[f"dec.conv{lc.level}.b"] = conv2d_backward(dh, lc.conv)
        dh = upsample2x_backward(dh, lc.up)
    da = silu_backward(xp.reshape(dh, (dh.shape[0], -1)), c.silu)  # (N, s, s, c) -> (N, F)
    if c.label is not None:
        g["label_embed.table"] = embedding_backward(da, c.label)  # a = z W + b + table[y]: da reaches both
    dz, g["dec.in.w"], g["dec.in.b"] = linear_backward(da, c.lin)
    return g, dz


# ------------------------------------------------------------------------------- the bounds

class ElboTerms(NamedTuple):
    """The ELBO of each image and its two terms, in nats: elbo = rec - kl."""

    elbo: Any  # (N,)
    rec: Any   # (N,) log p(x | z, y) at the reparameterised z
    kl: Any    # (N,) KL(q(z | x) || N(0, I)) in closed form


class ElboCache(NamedTuple):
    cfg: VAEConfig
    x: Any
    eps: Any
    mu: Any
    logvar: Any
    sigma: Any
    mean: Any       # (N, C, S, S) the decoder's m(z, y)
    log_scale: Any  # (1, C, 1, 1)
    levels: int
    encoder: EncoderCache
    decoder: DecoderCache


def _sum_flat(a: Any) -> Any:
    """Sum over every axis but the first: (N, ...) -> (N,)."""
    return namespace(a).sum(a, axis=tuple(range(1, a.ndim)))


def elbo_forward(params: dict, cfg: VAEConfig, x: Any, eps: Any, y: Any = None):
    """The evidence lower bound of each image, with the reparameterised sample.

    Math: z = mu + sigma * eps,  sigma = exp(logvar / 2)                  (Kingma & Welling 2014, Sec. 2.4)
          ELBO = log p(x | z, y) - KL(N(mu, sigma^2) || N(0, I)) <= log p(x | y)   (ibid., eq. 10)
          KL = (1/2) sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)       (ibid., Appendix B)
          log p(x | z, y) = sum_i log DiscretizedGaussian(x_i; m_i(z, y), exp(log_scale_c))  (Ho et al. 2020, eq. 13)

    params: dict of param_shapes(cfg) in x's library, device and dtype; x: (N, C, S, S) on cfg.levels values in
    [-1, 1]; eps: (N, Z) standard normal draws like x; y: decode's. Returns (ElboTerms, ElboCache).
    """
    _check_forward(params, cfg, x, eps)
    xp = namespace(x)
    mu, logvar, enc = encode(params, cfg, x)
    sigma = xp.exp(0.5 * logvar)
    z = mu + sigma * eps  # the reparameterisation: z is a differentiable function of mu, logvar
    mean, dec = decode(params, cfg, z, y)
    log_scale = xp.reshape(params["dec.log_scale"], (1, cfg.in_channels, 1, 1))  # (C,) -> (1, C, 1, 1)
    rec = _sum_flat(discretized_gaussian_log_likelihood(x, mean, log_scale, cfg.levels))  # (N,)
    kl = xp.sum(normal_kl(mu, logvar, 0.0, 0.0), axis=1)  # (N,), the closed form
    cache = ElboCache(cfg, x, eps, mu, logvar, sigma, mean, log_scale, cfg.levels, enc, dec)
    return ElboTerms(rec - kl, rec, kl), cache


def elbo_backward(delbo: Any, cache: ElboCache) -> dict:
    """Gradients of L = sum_n delbo_n ELBO_n with respect to every parameter (param_shapes' keys and order).

    Math: reconstruction: d rec / d m and d rec / d log_scale from the discretized Gaussian's backward,
              then through the decoder's backward to dz (and the decoder's parameters)
          reparameterisation z = mu + sigma eps:  dz/dmu = 1,  dz/dlogvar = eps sigma / 2
          KL (closed form):  dKL/dmu = mu,  dKL/dlogvar = (sigma^2 - 1) / 2
          dmu = dz - delbo mu;  dlogvar = dz eps sigma / 2 - delbo (sigma^2 - 1) / 2;  then the encoder's backward

    delbo: (N,) dL/dELBO_n (-1/N for the mean negative ELBO). Returns grads like the params.
    """
    xp = namespace(delbo)
    c = cache
    w = xp.reshape(delbo, (delbo.shape[0], 1, 1, 1))  # (N,) -> (N, 1, 1, 1)
    dmean, dlog_scale = discretized_gaussian_log_likelihood_backward(c.x, c.mean, c.log_scale, c.levels)
    g_dec, dz = decode_backward(w * dmean, c.decoder)
    g_scale = xp.sum(w * dlog_scale, axis=(0, 2, 3))  # (C,): one log-scale per channel, summed over N, S, S
    dkl = xp.reshape(delbo, (delbo.shape[0], 1))  # (N,) -> (N, 1)
    dmu = dz - dkl * c.mu
    dlogvar = 0.5 * (dz * c.eps * c.sigma - dkl * xp.expm1(c.logvar))  # expm1: sigma^2 - 1 exact near 0
    grads = {**encode_backward(dmu, dlogvar, c.encoder), **g_dec, "dec.log_scale": g_scale}
    return {k: grads[k] for k in param_shapes(c.cfg)}  # param_shapes' order



def log_importance_weights(params: dict, cfg: VAEConfig, x: Any, eps: Any, y: Any = None):
    """log w_j = log p(x, z_j | y) - log q(z_j | x) for k reparameterised samples z_j = mu + sigma eps_j.

    Math: log w_j = log p(x | z_j, y) + log N(z_j; 0, I) - log N(z_j; mu, sigma^2)
          log N(z_j; mu, sigma^2) = -(1/2) sum (eps_j^2 + log sigma^2 + log 2 pi)   (z_j - mu = sigma eps_j)
          (Burda et al. 2016, eq. 8); E_q[log w] = ELBO, and for k = 1 log w_1 is the one-sample ELBO estimate
          whose KL is the sampled log q - log p instead of the closed form

    x: (N, C, S, S); eps: (k, N, Z) like x; y: decode's. Returns (k, N) like x. One decoder call per j.
    """
    if eps.ndim != 3 or eps.shape[0] < 1:
        raise ValueError(f"eps must be a (k, N, Z) array of k >= 1 draws per image, got shape {tuple(eps.shape)}")
    _check_forward(params, cfg, x, eps[0, ...])
    xp = namespace(x)
    mu, logvar, _ = encode(params, cfg, x)
    sigma = xp.exp(0.5 * logvar)
    log_scale = xp.reshape(params["dec.log_scale"], (1, cfg.in_channels, 1, 1))  # (C,) -> (1, C, 1, 1)
    log_q = -0.5 * xp.sum(eps * eps + logvar + LOG_2PI, axis=2)  # (k, N)
    weights = []
    for j in range(eps.shape[0]):
        z = mu + sigma * eps[j, ...]  # (N, Z)
        mean, _ = decode(params, cfg, z, y)
        rec = _sum_flat(discretized_gaussian_log_likelihood(x, mean, log_scale, cfg.levels))  # (N,)
        log_p_z = -0.5 * xp.sum(z * z + LOG_2PI, axis=1)  # (N,)
        weights.append(rec + log_p_z - log_q[j, ...])
    return xp.stack(weights, axis=0)  # (k, N)


def log_mean_exp(a: Any, axis: int = 0):
    """log((1/k) sum_j exp(a_j)) along ``axis``, stably.

    Math: m = max_j a_j;  log_mean_exp(a) = m + log((1/k) sum_j exp(a_j - m))   (every exp argument <= 0, and
          the largest term is exp(0) = 1, so the sum neither overflows nor underflows to 0)
    """
    xp = namespace(a)
    m = xp.max(a, axis=axis, keepdims=True)
    return xp.squeeze(m, axis=axis) + xp.log(xp.mean(xp.exp(a - m), axis=axis))


def iwae_bound(params: dict, cfg: VAEConfig, x: Any, eps: Any, y: Any = None):
    """The importance-weighted bound of each image, in nats.

    Math: L_k = log (1/k) sum_{j=1..k} w_j <= log p(x | y),  w_j as in log_importance_weights
          (Burda et al. 2016, eq. 8, Theorem 1: E[L_k] <= E[L_{k+1}], L_1's mean is the ELBO, L_k -> log p(x | y))

    eps: (k, N, Z). Returns (N,) like x.
    """
    return log_mean_exp(log_importance_weights(params, cfg, x, eps, y), axis=0)


def bits_per_dim(log_likelihood: Any, dims: int):
    """A bound on log P(x) in nats as bits per dimension: -log P(x) / (D ln 2) (an upper bound on -log2 P(x) / D
    when log_likelihood is a lower bound). log_likelihood: any shape; dims: D >= 1 (VAEConfig.dims)."""
    check_int("dims", dims, 1)
    return -log_likelihood / (dims * math.log(2.0))


def vae_model(params: dict, cfg: VAEConfig):
    """``decode_mean(z, y=None) -> (N, C, S, S)``: the decoder's mean in evaluation mode (no cache kept), what a
    sample from the prior shows with z ~ N(0, I) (drawn by the caller, docs/design.md rule 4)."""
    check_params(params, cfg, VAEConfig, param_shapes)

    def decode_mean(z: Any, y: Any = None):
        return decode(params, cfg, z, y)[0]

    return decode_mean


def _check_forward(params: dict, cfg: VAEConfig, x: Any, eps: Any) -> None:
    """params of cfg in x's library, device and dtype; x (N, C, S, S) in [-1, 1]; eps (N, Z) like x."""
    check_params(params, cfg, VAEConfig, param_shapes)
    check_image(x, cfg.in_channels, cfg.downsample_factor)
    if tuple(x.shape[2:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"x must be (N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) (cfg.image_size), "
                         f"got shape {tuple(x.shape)}")
    for key, p in params.items():
        if not same_library(p, x) or p.dtype != x.dtype:
            raise ValueError(f"params[{key!r}] must be an array of x's library, device and dtype ({x.dtype}), "
                             f"got {type(p).__name__} of dtype {p.dtype}")
    if not same_library(eps, x) or eps.dtype != x.dtype or tuple(eps.shape) != (x.shape[0], cfg.latent_dim):
        raise ValueError(f"eps must be an ({x.shape[0]}, {cfg.latent_dim}) array (N, latent_dim) of x's library, "
                         f"device and dtype, got {type(eps).__name__} of shape {tuple(eps.shape)}")
    xp = namespace(x)
    low, high = float(xp.min(x)), float(xp.max(x))  # two device-to-host reads
    if not -1.0 <= low <= high <= 1.0:
        raise ValueError(f"x must lie in [-1, 1] (the discretized decoder's range), got values in [{low}, {high}]")
