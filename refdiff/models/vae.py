"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014) with hand-derived backprop: the
reparameterised sample, the ELBO and its gradient, the importance-weighted bound (Burda et al. 2016), bits/dim,
over either coder (encoder, decoder and likelihood):

    VAEConfig     refdiff.models.vae_conv: conv encoder and decoder of images, a discretized Gaussian p(x | z, y)
    MLPVAEConfig  refdiff.models.vae_mlp: MLP encoder and decoder of points (the 2-D toys), a Gaussian density

    q(z | x) = N(mu, diag(sigma^2)),  [mu | log sigma^2] = encode(x)
    z = mu + sigma * eps,  eps ~ N(0, I) passed in (docs/design.md rule 4)
    ELBO(x) = log p(x | z, y) - KL(q(z | x) || N(0, I)) <= log p(x | y),  p's mean m = decode(z, y)

Parameters are one flat dict (param_shapes(cfg)); the family's functions (param_shapes, init_params, the pair
elbo_forward / elbo_backward, vae_model) dispatch on the config's type.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, namespace
from refdiff.likelihood import normal_kl
from refdiff.models import vae_conv, vae_mlp
from refdiff.models.common import (by_config, check_init, check_int, check_params, check_params_like, count_params,
                                   lecun_init, same_library)
from refdiff.models.vae_conv import VAEConfig
from refdiff.models.vae_mlp import MLPVAEConfig

LOG_2PI = math.log(2.0 * math.pi)
CODERS = {VAEConfig: vae_conv, MLPVAEConfig: vae_mlp}  # config type -> the module of its coder


def _coder(cfg: Any):
    """The coder module of cfg's type, or a ValueError naming the allowed configs."""
    return by_config(cfg, CODERS)


def param_shapes(cfg: VAEConfig | MLPVAEConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and elbo_backward."""
    return _coder(cfg).param_shapes(cfg)


def param_count(cfg: VAEConfig | MLPVAEConfig) -> int:
    """Number of scalar parameters of the VAE ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: VAEConfig | MLPVAEConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: w ~ N(0, 1 / fan_in) (refdiff.models.common.lecun_init), biases 0, label_embed.table ~ N(0, 1),
          dec.log_scale = 0 (the decoder's scale starts at 1)
    """
    _coder(cfg)  # raises, naming the allowed configs
    dt = check_init(cfg, type(cfg), generator, dtype)
    return lecun_init(param_shapes(cfg), generator, dt, zero=lambda key: False)


# ------------------------------------------------------------------------------- the bounds

class ElboTerms(NamedTuple):
    """The ELBO of each sample and its two terms, in nats: elbo = rec - kl."""

    elbo: Any  # (N,)
    rec: Any   # (N,) log p(x | z, y) at the reparameterised z
    kl: Any    # (N,) KL(q(z | x) || N(0, I)) in closed form


class ElboCache(NamedTuple):
    cfg: Any
    params: dict
    x: Any
    eps: Any
    mu: Any
    logvar: Any
    sigma: Any
    mean: Any  # like x: the decoder's m(z, y)
    encoder: Any
    decoder: Any


def elbo_forward(params: dict, cfg: VAEConfig | MLPVAEConfig, x: Any, eps: Any, y: Any = None):
    """The evidence lower bound of each sample, with the reparameterised sample.

    Math: z = mu + sigma * eps,  sigma = exp(logvar / 2)                  (Kingma & Welling 2014, Sec. 2.4)
          ELBO = log p(x | z, y) - KL(N(mu, sigma^2) || N(0, I)) <= log p(x | y)   (ibid., eq. 10)
          KL = (1/2) sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)       (ibid., Appendix B)
          log p(x | z, y): the coder's log_likelihood (discretized Gaussian of images, Gaussian density of points)

    params: dict of param_shapes(cfg) in x's library, device and dtype; x: (N, C, S, S) images on cfg.levels
    values in [-1, 1], or (N, D) points; eps: (N, Z) standard normal draws like x; y: (N,) labels in [0, K]
    (K the null label) or None. Returns (ElboTerms, ElboCache).
    """
    coder = _check_forward(params, cfg, x, eps)
    xp = namespace(x)
    mu, logvar, enc = coder.encode(params, cfg, x)
    sigma = xp.exp(0.5 * logvar)
    z = mu + sigma * eps  # the reparameterisation: z is a differentiable function of mu, logvar
    mean, dec = coder.decode(params, cfg, z, y)
    rec = coder.log_likelihood(params, cfg, x, mean)  # (N,)
    kl = xp.sum(normal_kl(mu, logvar, 0.0, 0.0), axis=1)  # (N,), the closed form
    return ElboTerms(rec - kl, rec, kl), ElboCache(cfg, params, x, eps, mu, logvar, sigma, mean, enc, dec)


def elbo_backward(delbo: Any, cache: ElboCache) -> dict:
    """Gradients of L = sum_n delbo_n ELBO_n with respect to every parameter (param_shapes' keys and order).

    Math: reconstruction: d rec / d m and d rec / d log_scale from the likelihood's backward,
              then through the decoder's backward to dz (and the decoder's parameters)
          reparameterisation z = mu + sigma eps:  dz/dmu = 1,  dz/dlogvar = eps sigma / 2
          KL (closed form):  dKL/dmu = mu,  dKL/dlogvar = (sigma^2 - 1) / 2
          dmu = dz - delbo mu;  dlogvar = dz eps sigma / 2 - delbo (sigma^2 - 1) / 2;  then the encoder's backward

    delbo: (N,) dL/dELBO_n (-1/N for the mean negative ELBO). Returns grads like the params.
    """
    xp, c = namespace(delbo), cache
    coder = CODERS[type(c.cfg)]
    dmean, g_scale = coder.log_likelihood_backward(c.params, c.cfg, c.x, c.mean, delbo)  # 1. reconstruction
    g_dec, dz = coder.decode_backward(dmean, c.decoder)  # 2. the decoder
    dkl = xp.reshape(delbo, (delbo.shape[0], 1))  # (N,) -> (N, 1)
    dmu = dz - dkl * c.mu  # 3. reparameterisation and KL
    dlogvar = 0.5 * (dz * c.eps * c.sigma - dkl * xp.expm1(c.logvar))  # expm1: sigma^2 - 1 exact near 0
    grads = {**coder.encode_backward(dmu, dlogvar, c.encoder), **g_dec, **g_scale}  # 4. the encoder
    return {k: grads[k] for k in param_shapes(c.cfg)}  # param_shapes' order


def log_importance_weights(params: dict, cfg: VAEConfig | MLPVAEConfig, x: Any, eps: Any, y: Any = None):
    """log w_j = log p(x, z_j | y) - log q(z_j | x) for k reparameterised samples z_j = mu + sigma eps_j.

    Math: log w_j = log p(x | z_j, y) + log N(z_j; 0, I) - log N(z_j; mu, sigma^2)
          log N(z_j; mu, sigma^2) = -(1/2) sum (eps_j^2 + log sigma^2 + log 2 pi)   (z_j - mu = sigma eps_j)
          (Burda et al. 2016, eq. 8); E_q[log w] = ELBO, and for k = 1 log w_1 is the one-sample ELBO estimate
          whose KL is the sampled log q - log p instead of the closed form

    x: elbo_forward's; eps: (k, N, Z) like x; y: elbo_forward's. Returns (k, N) like x. One decoder call per j.
    """
    if eps.ndim != 3 or eps.shape[0] < 1:
        raise ValueError(f"eps must be a (k, N, Z) array of k >= 1 draws per sample, got shape {tuple(eps.shape)}")
    coder = _check_forward(params, cfg, x, eps[0, ...])
    xp = namespace(x)
    mu, logvar, _ = coder.encode(params, cfg, x)
    sigma = xp.exp(0.5 * logvar)
    log_q = -0.5 * xp.sum(eps * eps + logvar + LOG_2PI, axis=2)  # (k, N)
    weights = []
    for j in range(eps.shape[0]):
        z = mu + sigma * eps[j, ...]  # (N, Z)
        mean, _ = coder.decode(params, cfg, z, y)
        log_p_z = -0.5 * xp.sum(z * z + LOG_2PI, axis=1)  # (N,)
        weights.append(coder.log_likelihood(params, cfg, x, mean) + log_p_z - log_q[j, ...])
    return xp.stack(weights, axis=0)  # (k, N)


def log_mean_exp(a: Any, axis: int = 0):
    """log((1/k) sum_j exp(a_j)) along ``axis``, stably.

    Math: m = max_j a_j;  log_mean_exp(a) = m + log((1/k) sum_j exp(a_j - m))   (every exp argument <= 0, and
          the largest term is exp(0) = 1, so the sum neither overflows nor underflows to 0)
    """
    xp = namespace(a)
    m = xp.max(a, axis=axis, keepdims=True)
    return xp.squeeze(m, axis=axis) + xp.log(xp.mean(xp.exp(a - m), axis=axis))


def iwae_bound(params: dict, cfg: VAEConfig | MLPVAEConfig, x: Any, eps: Any, y: Any = None):
    """The importance-weighted bound of each sample, in nats.

    Math: L_k = log (1/k) sum_{j=1..k} w_j <= log p(x | y),  w_j as in log_importance_weights
          (Burda et al. 2016, eq. 8, Theorem 1: E[L_k] <= E[L_{k+1}], L_1's mean is the ELBO, L_k -> log p(x | y))

    eps: (k, N, Z). Returns (N,) like x.
    """
    return log_mean_exp(log_importance_weights(params, cfg, x, eps, y), axis=0)


def bits_per_dim(log_likelihood: Any, dims: int):
    """A bound on log P(x) in nats as bits per dimension: -log P(x) / (D ln 2) (an upper bound on -log2 P(x) / D
    when log_likelihood is a lower bound). log_likelihood: any shape; dims: D >= 1 (the config's dims)."""
    check_int("dims", dims, 1)
    return -log_likelihood / (dims * math.log(2.0))


def vae_model(params: dict, cfg: VAEConfig | MLPVAEConfig):
    """``decode_mean(z, y=None)``: the decoder's mean in evaluation mode (no cache kept), what a sample from the
    prior shows with z ~ N(0, I) (drawn by the caller, docs/design.md rule 4)."""
    coder = _coder(cfg)
    check_params(params, cfg, type(cfg), param_shapes)

    def decode_mean(z: Any, y: Any = None):
        return coder.decode(params, cfg, z, y)[0]

    return decode_mean


def _check_forward(params: dict, cfg: Any, x: Any, eps: Any):
    """params of cfg in x's library, device and dtype; x the coder's data; eps (N, Z) like x. Returns the coder."""
    coder = _coder(cfg)
    check_params(params, cfg, type(cfg), param_shapes)
    coder.check_x(cfg, x)
    check_params_like(params, x)
    if not same_library(eps, x) or eps.dtype != x.dtype or tuple(eps.shape) != (x.shape[0], cfg.latent_dim):
        raise ValueError(f"eps must be an ({x.shape[0]}, {cfg.latent_dim}) array (N, latent_dim) of x's library, "
                         f"device and dtype, got {type(eps).__name__} of shape {tuple(eps.shape)}")
    return coder
