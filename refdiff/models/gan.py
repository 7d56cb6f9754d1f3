"""The generative adversarial network (Goodfellow et al. 2014) with hand-derived backprop: the non-saturating and
the hinge losses on the discriminator's logits, and the two objectives with their gradients, the generator's
passing through the discriminator (its backward with need_dx) into the generator's backward; over either form:

    GANConfig     refdiff.models.gan_conv: DCGAN-style generator and conv discriminator of images
    MLPGANConfig  refdiff.models.gan_mlp: MLP generator and discriminator of points (the 2-D toys)

    x_fake = G(z, y), z ~ N(0, I) passed in (docs/design.md rule 4);  l = D(x, y) the log odds of "real"
    discriminator:  min_D  E softplus(-D(x, y)) + E softplus(D(G(z, y), y))       (= -log sigmoid, -log(1 - sigmoid))
    generator:      min_G  E softplus(-D(G(z, y), y))                               (non-saturating, -log D)
    hinge:          min_D  E relu(1 - D(x, y)) + E relu(1 + D(G(z, y), y));  min_G  -E D(G(z, y), y)

Class-conditional GANs take the label y in both networks (a label embedding in G, a projection in D; Miyato &
Koyama 2018); a fake sample gets the label of the real one it is judged beside. Parameters are one flat dict,
the generator's keys "gen.*" and the discriminator's "disc.*" (generator_keys, discriminator_keys): each player's
optimizer steps its own keys.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, namespace
from refdiff.layers.basic import sigmoid
from refdiff.models import gan_conv, gan_mlp
from refdiff.models.common import (by_config, check_init, check_params, check_params_like, count_params, lecun_init,
                                   same_library)
from refdiff.models.gan_conv import GANConfig
from refdiff.models.gan_mlp import MLPGANConfig

LOSSES = ("non_saturating", "hinge")
FORMS = {GANConfig: gan_conv, MLPGANConfig: gan_mlp}  # config type -> the module of its networks


def _form(cfg: Any):
    """The module of cfg's networks, or a ValueError naming the allowed configs."""
    return by_config(cfg, FORMS)


def param_shapes(cfg: GANConfig | MLPGANConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter: the generator's ("gen.*"), then the discriminator's ("disc.*")."""
    return _form(cfg).param_shapes(cfg)


def generator_keys(cfg: GANConfig | MLPGANConfig) -> list[str]:
    """The generator's parameter keys, in param_shapes' order."""
    return [k for k in param_shapes(cfg) if k.startswith("gen.")]


def discriminator_keys(cfg: GANConfig | MLPGANConfig) -> list[str]:
    """The discriminator's parameter keys, in param_shapes' order."""
    return [k for k in param_shapes(cfg) if k.startswith("disc.")]


def param_count(cfg: GANConfig | MLPGANConfig) -> int:
    """Number of scalar parameters of both networks (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: GANConfig | MLPGANConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: w ~ N(0, 1 / fan_in) (refdiff.models.common.lecun_init), biases 0, both label tables 0 (the GAN starts
          unconditional: the labels act once the discriminator's projection has learned to tell classes apart)
    """
    _form(cfg)  # raises, naming the allowed configs
    dt = check_init(cfg, type(cfg), generator, dtype)
    return lecun_init(param_shapes(cfg), generator, dt, zero=lambda key: False)


# ------------------------------------------------------------------------------------ losses

class DiscriminatorLoss(NamedTuple):
    """The discriminator's loss (0-d) and its gradient with respect to each logit."""

    value: Any
    d_real: Any  # (N,) dL/dl_real
    d_fake: Any  # (M,) dL/dl_fake


def softplus(a: Any) -> Any:
    """log(1 + e^a), elementwise, without overflow: max(a, 0) + log1p(e^(-|a|)) (the exp argument is <= 0)."""
    xp = namespace(a)
    return 0.5 * (a + xp.abs(a)) + xp.log1p(xp.exp(-xp.abs(a)))  # (a + |a|) / 2 = max(a, 0) exactly


def discriminator_loss(logit_real: Any, logit_fake: Any, loss: str = "non_saturating") -> DiscriminatorLoss:
    """The discriminator's loss on the logits of a real and a fake batch, with its gradient.

    Math: non_saturating: L = mean softplus(-l_r) + mean softplus(l_f)             (Goodfellow et al. 2014, eq. 1:
                          -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l))
                          dL/dl_r = -sigmoid(-l_r) / N,  dL/dl_f = sigmoid(l_f) / M
          hinge:          L = mean relu(1 - l_r) + mean relu(1 + l_f)               (Lim & Ye 2017; Miyato et al. 2018)
                          dL/dl_r = -[l_r < 1] / N,  dL/dl_f = [l_f > -1] / M      (0 at the margin itself)

    logit_real: (N,); logit_fake: (M,) of the same library and dtype. Returns a DiscriminatorLoss.
    """
    _check_loss(loss)
    xp = namespace(logit_real, logit_fake)
    N, M = logit_real.shape[0], logit_fake.shape[0]
    if loss == "non_saturating":
        value = xp.mean(softplus(-logit_real)) + xp.mean(softplus(logit_fake))
        return DiscriminatorLoss(value, -sigmoid(-logit_real) / N, sigmoid(logit_fake) / M)
    margin_r, margin_f = 1.0 - logit_real, 1.0 + logit_fake
    value = xp.mean(0.5 * (margin_r + xp.abs(margin_r))) + xp.mean(0.5 * (margin_f + xp.abs(margin_f)))
    d_real = -xp.astype(margin_r > 0, logit_real.dtype) / N
    return DiscriminatorLoss(value, d_real, xp.astype(margin_f > 0, logit_fake.dtype) / M)


def generator_loss(logit_fake: Any, loss: str = "non_saturating") -> tuple[Any, Any]:
    """The generator's loss on the discriminator's logits of its samples, with its gradient: (L 0-d, dL/dl (M,)).

    Math: non_saturating: L = mean softplus(-l_f) = -mean log sigmoid(l_f),  dL/dl_f = -sigmoid(-l_f) / M
              (Goodfellow et al. 2014, Sec. 3: maximise log D(G(z)) rather than minimise log(1 - D(G(z))),
              whose gradient vanishes where D rejects the samples confidently, early in training)
          hinge:          L = -mean l_f,  dL/dl_f = -1 / M                          (Miyato et al. 2018)
    """
    _check_loss(loss)
    xp = namespace(logit_fake)
    M = logit_fake.shape[0]
    if loss == "non_saturating":
        return xp.mean(softplus(-logit_fake)), -sigmoid(-logit_fake) / M
    return -xp.mean(logit_fake), xp.full_like(logit_fake, -1.0 / M)


# -------------------------------------------------------------------------------- objectives

class DiscriminatorObjectiveCache(NamedTuple):
    disc: Any  # the form's DiscriminatorCache of [x_real; x_fake]
    dlogit: Any  # (2N,) [dL/dl_real; dL/dl_fake]


class GeneratorObjectiveCache(NamedTuple):
    gen: Any  # the form's GeneratorCache
    disc: Any  # its DiscriminatorCache of x_fake
    dlogit: Any  # (N,) dL/dl_fake


def discriminator_objective(params: dict, cfg: GANConfig | MLPGANConfig, x_real: Any, z: Any, y: Any = None,
                            loss: str = "non_saturating"):
    """The discriminator's loss on a real batch and the generator's samples G(z, y), both with labels y.

    Math: x_fake = G(z, y) (held fixed: D's step does not move G);  l = D([x_real; x_fake], [y; y])
          L_D = discriminator_loss(l[:N], l[N:], loss)

    params: dict of param_shapes(cfg) in x_real's library, device and dtype; x_real: (N, C, S, S) or (N, D);
    z: (N, Z) like x_real; y: (N,) integer labels in [0, K) of x_real's library, or None for an unconditional GAN.
    Returns (L_D 0-d, DiscriminatorObjectiveCache).
    """
    form = _check_forward(params, cfg, x_real, z, y, loss)
    xp = namespace(x_real)
    x_fake, _ = form.generate(params, cfg, z, y)
    y_both = None if y is None else xp.concat((y, y))  # (2N,)
    logit, disc = form.discriminate(params, cfg, xp.concat((x_real, x_fake)), y_both)  # one pass over (2N, ...)
    N = x_real.shape[0]
    out = discriminator_loss(logit[:N], logit[N:], loss)
    return out.value, DiscriminatorObjectiveCache(disc, xp.concat((out.d_real, out.d_fake)))


def discriminator_objective_backward(cache: DiscriminatorObjectiveCache, cfg: GANConfig | MLPGANConfig) -> dict:
    """Gradients of L_D with respect to the discriminator's parameters (discriminator_keys' order)."""
    grads, _ = _form(cfg).discriminate_backward(cache.dlogit, cache.disc)
    return {k: grads[k] for k in discriminator_keys(cfg)}


def generator_objective(params: dict, cfg: GANConfig | MLPGANConfig, z: Any, y: Any = None,
                        loss: str = "non_saturating"):
    """The generator's loss on the discriminator's judgement of its samples.

    Math: L_G = generator_loss(D(G(z, y), y), loss)

    z: (N, Z) noise; y, params as discriminator_objective's. Returns (L_G 0-d, GeneratorObjectiveCache).
    """
    form = _check_forward(params, cfg, None, z, y, loss)
    x_fake, gen = form.generate(params, cfg, z, y)
    logit, disc = form.discriminate(params, cfg, x_fake, y)
    value, dlogit = generator_loss(logit, loss)
    return value, GeneratorObjectiveCache(gen, disc, dlogit)


def generator_objective_backward(cache: GeneratorObjectiveCache, cfg: GANConfig | MLPGANConfig) -> dict:
    """Gradients of L_G with respect to the generator's parameters (generator_keys' order).

    Math: dL/dx_fake = D's backward with need_dx (dL/dl through D to its input; D's own parameter gradients are
          dropped: the generator's step holds D fixed);  then G's backward from dL/dx_fake
    """
    form = _form(cfg)
    _, dx = form.discriminate_backward(cache.dlogit, cache.disc, need_dx=True)
    grads = form.generate_backward(dx, cache.gen)
    return {k: grads[k] for k in generator_keys(cfg)}


def gan_model(params: dict, cfg: GANConfig | MLPGANConfig):
    """``sample(z, y=None)``: the generator's output G(z, y) in evaluation mode (no cache kept); z ~ N(0, I) is
    drawn by the caller (docs/design.md rule 4)."""
    form = _form(cfg)
    check_params(params, cfg, type(cfg), param_shapes)

    def sample(z: Any, y: Any = None):
        _check_noise_and_labels(cfg, z, y)
        return form.generate(params, cfg, z, y)[0]

    return sample


# ------------------------------------------------------------------------------------ checks

def _check_loss(loss: Any) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def _check_noise_and_labels(cfg: Any, z: Any, y: Any) -> None:
    """z an (N, Z) real floating array; y (N,) integers in [0, K) of z's library, or None when unconditional."""
    xp = namespace(z)
    if not xp.isdtype(z.dtype, "real floating") or z.ndim != 2 or z.shape[1] != cfg.latent_dim or z.shape[0] < 1:
        raise ValueError(f"z must be a real floating (N, {cfg.latent_dim}) array (N, latent_dim), got shape "
                         f"{tuple(z.shape)} and dtype {z.dtype}")
    K = cfg.num_classes
    if K is None or y is None:
        if (K is None) != (y is None):
            raise ValueError("y must be None for an unconditional GAN (cfg.num_classes is None)" if K is None else
                             f"y must be given for a class-conditional GAN (cfg.num_classes = {K})")
        return
    if (not same_library(y, z) or y.ndim != 1 or y.shape[0] != z.shape[0] or not xp.isdtype(y.dtype, "integral")
            or bool(xp.any((y < 0) | (y >= K)))):  # one device-to-host read
        raise ValueError(f"y must be an ({z.shape[0]},) integer array of labels in [0, {K}) of z's library and "
                         f"device, got {type(y).__name__} of shape {tuple(y.shape)}")


def _check_forward(params: dict, cfg: Any, x: Any, z: Any, y: Any, loss: Any):
    """params of cfg in z's library, device and dtype; x (if given) the form's data like z with z's batch; z, y
    as _check_noise_and_labels; loss one of LOSSES. Returns the form."""
    form = _form(cfg)
    check_params(params, cfg, type(cfg), param_shapes)
    _check_loss(loss)
    if x is not None:
        form.check_x(cfg, x)
        if not same_library(x, z) or x.dtype != z.dtype or x.shape[0] != z.shape[0]:
            raise ValueError(f"z must be an array of x_real's library, device and dtype ({x.dtype}) with its batch "
                             f"N = {x.shape[0]}, got {type(z).__name__} of dtype {z.dtype} and shape {tuple(z.shape)}")
    _check_noise_and_labels(cfg, z, y)
    check_params_like(params, z, "z")
    return form
