"""The GAN's MLP form for low-dimensional points, the 2-D toys (refdiff.models.gan holds the losses and the
objectives): an MLP generator and an MLP discriminator, class-conditional as the conv form (refdiff.models.gan_conv).

Data flow (N points of dimension D, H = hidden, Z = latent_dim):

    generator      a = z W_in + b_in [+ gen.table[y]];  h = silu(a);  h = silu(h W_1 + b_1);  x = h W_out + b_out
    discriminator  h = silu(x W_0 + b_0);  phi = silu(h W_1 + b_1)                                      (N, H)
                   logit = phi w_psi + b_psi [+ <disc.table[y], phi>]                                    (N,)

The generator's output is linear (the toys are not bounded to [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.models import gan_heads, mlp_codec
from refdiff.models.common import check_int


@dataclass(frozen=True)
class MLPGANConfig:
    """Architecture of the point GAN; validated on construction."""

    data_dim: int = 2               # D
    hidden: int = 64                # H, the width of every hidden layer of both networks
    latent_dim: int = 2             # Z
    num_classes: int | None = None  # K for a class-conditional GAN, None for an unconditional one

    def __post_init__(self):
        for name in ("data_dim", "hidden", "latent_dim"):
            check_int(name, getattr(self, name), 1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)


def param_shapes(cfg: MLPGANConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter: the generator's ("gen.") then the discriminator's ("disc.")."""
    D, H, Z, K = cfg.data_dim, cfg.hidden, cfg.latent_dim, cfg.num_classes
    shapes = {"gen.in.w": (Z, H), "gen.in.b": (H,)}
    if K is not None:
        shapes["gen.label_embed.table"] = (K, H)
    shapes.update({"gen.fc1.w": (H, H), "gen.fc1.b": (H,), "gen.out.w": (H, D), "gen.out.b": (D,),
                   "disc.fc0.w": (D, H), "disc.fc0.b": (H,), "disc.fc1.w": (H, H), "disc.fc1.b": (H,),
                   "disc.psi.w": (H, 1), "disc.psi.b": (1,)})
    if K is not None:
        shapes["disc.label_embed.table"] = (K, H)
    return shapes


class GeneratorCache(NamedTuple):
    input: gan_heads.InputCache
    body: mlp_codec.DecoderCache


def generate(params: dict, cfg: MLPGANConfig, z: Any, y: Any = None):
    """The generator's point G(z, y). z: (N, Z); y: (N,) labels in [0, K) or None. Returns x (N, D) like z, and a
    GeneratorCache."""
    a, inp = gan_heads.generator_input(params, z, y, cfg.num_classes is not None)  # (N, H)
    x, body = mlp_codec.decoder_forward(params, "gen.", a)  # (N, D)
    return x, GeneratorCache(inp, body)


def generate_backward(dx: Any, c: GeneratorCache) -> dict:
    """Gradients of generate's parameters from dx (N, D)."""
    g, da = mlp_codec.decoder_backward(dx, c.body)  # da (N, H)
    g.update(gan_heads.generator_input_backward(da, c.input))
    return g


class DiscriminatorCache(NamedTuple):
    body: mlp_codec.EncoderCache
    head: gan_heads.ProjectionCache


def discriminate(params: dict, cfg: MLPGANConfig, x: Any, y: Any = None):
    """The discriminator's logit D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018, eq. 3).
    x: (N, D); y: (N,) labels in [0, K) or None. Returns logits (N,) like x, and a DiscriminatorCache."""
    phi, body = mlp_codec.encoder_forward(params, "disc.", x)  # (N, H)
    logit, head = gan_heads.projection_logit(params, phi, y, cfg.num_classes is not None)  # (N,)
    return logit, DiscriminatorCache(body, head)


def discriminate_backward(dlogit: Any, c: DiscriminatorCache, need_dx: bool = False) -> tuple[dict, Any]:
    """Gradients of discriminate from dlogit (N,): (grads of the discriminator's parameters, dx (N, D) or None).

    Math: dphi = dlogit w_psi^T + dlogit embed(y);  d table[y] = dlogit phi;  then fc1, fc0 reversed
    """
    g, dphi = gan_heads.projection_logit_backward(dlogit, c.head)
    g_body, dx = mlp_codec.encoder_backward(dphi, c.body)
    g.update(g_body)
    return g, (dx if need_dx else None)


def check_x(cfg: MLPGANConfig, x: Any) -> None:
    """Raise unless x is a real floating (N, D) array, N >= 1."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating") or x.ndim != 2 or x.shape[1] != cfg.data_dim or x.shape[0] < 1:
        raise ValueError(f"x must be a real floating (N, {cfg.data_dim}) array of points (cfg.data_dim), got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
