"""The VAE's MLP form for low-dimensional points, the 2-D toys (refdiff.models.vae holds the bounds): an MLP
encoder to q(z | x), an MLP decoder to the mean of a Gaussian density p(x | z, y) with a learned scale per
coordinate, and that likelihood.

Data flow (N points of dimension D, H = hidden, Z = latent_dim):

    encoder  h = silu(x W_0 + b_0);  h = silu(h W_1 + b_1);  [mu | log sigma^2] = h W_out + b_out   (N, 2 Z)
    decoder  a = z W_in + b_in [+ table[y]];  h = silu(a);  h = silu(h W_1 + b_1);  m = h W_out + b_out  (N, D)
    p(x | z, y) = prod_d N(x_d; m_d, exp(log_scale_d)^2)

The toys are continuous, so p is a density and the bounds are bounds on log p(x) of a density (they can be
positive). The scale is learned for the reason the conv form's is (refdiff.models.vae_conv). Class-conditional
(cfg.num_classes = K): a label embedding (K + 1 rows, row K the null label) added to the decoder's first layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from refdiff.backend import device, namespace
from refdiff.layers.basic import LinearCache, linear_backward, linear_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward
from refdiff.likelihood import gaussian_log_likelihood
from refdiff.models import mlp_codec
from refdiff.models.common import check_int


@dataclass(frozen=True)
class MLPVAEConfig:
    """Architecture of the VAE for points; validated on construction."""

    data_dim: int = 2               # D
    hidden: int = 64                # H, the width of every hidden layer
    latent_dim: int = 2             # Z
    num_classes: int | None = None  # K for a class-conditional decoder, None for an unconditional one

    def __post_init__(self):
        for name in ("data_dim", "hidden", "latent_dim"):
            check_int(name, getattr(self, name), 1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)

    @property
    def dims(self) -> int:
        """D, the number of values of one point."""
        return self.data_dim


def param_shapes(cfg: MLPVAEConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order of init_params and elbo_backward."""
    D, H, Z = cfg.data_dim, cfg.hidden, cfg.latent_dim
    shapes = {"enc.fc0.w": (D, H), "enc.fc0.b": (H,), "enc.fc1.w": (H, H), "enc.fc1.b": (H,),
              "enc.out.w": (H, 2 * Z), "enc.out.b": (2 * Z,), "dec.in.w": (Z, H), "dec.in.b": (H,)}
    if cfg.num_classes is not None:
        shapes["label_embed.table"] = (cfg.num_classes + 1, H)  # row K is the null label
    shapes.update({"dec.fc1.w": (H, H), "dec.fc1.b": (H,), "dec.out.w": (H, D), "dec.out.b": (D,),
                   "dec.log_scale": (D,)})
    return shapes


class EncoderCache(NamedTuple):
    body: mlp_codec.EncoderCache
    out: LinearCache


def encode(params: dict, cfg: MLPVAEConfig, x: Any):
    """q(z | x) = N(mu, diag(exp(logvar))). x: (N, D). Returns mu, logvar (N, Z) like x, and an EncoderCache."""
    h, body = mlp_codec.encoder_forward(params, "enc.", x)  # (N, H)
    out, lin = linear_forward(h, params["enc.out.w"], params["enc.out.b"])  # (N, 2 Z) = [mu | logvar]
    Z = cfg.latent_dim
    return out[:, :Z], out[:, Z:], EncoderCache(body, lin)


def encode_backward(dmu: Any, dlogvar: Any, c: EncoderCache) -> dict:
    """Gradients of encode's parameters from dmu, dlogvar (N, Z) (the data x gets none)."""
    g = {}
    dh, g["enc.out.w"], g["enc.out.b"] = linear_backward(namespace(dmu).concat((dmu, dlogvar), axis=1), c.out)
    g.update(mlp_codec.encoder_backward(dh, c.body)[0])
    return g


class DecoderCache(NamedTuple):
    lin: LinearCache
    label: EmbeddingCache | None  # None for an unconditional decoder
    body: mlp_codec.DecoderCache


def decode(params: dict, cfg: MLPVAEConfig, z: Any, y: Any = None):
    """The decoder's mean m(z, y). z: (N, Z); y: (N,) labels in [0, K] or None (the null label; None for an
    unconditional decoder). Returns m (N, D) like z, and a DecoderCache."""
    xp = namespace(z)
    a, lin = linear_forward(z, params["dec.in.w"], params["dec.in.b"])  # (N, H)
    label = None
    if cfg.num_classes is not None:
        if y is None:
            y = xp.full((z.shape[0],), cfg.num_classes, dtype=xp.int64, device=device(z))  # the null label
        e, label = embedding_forward(y, params["label_embed.table"])  # (N, H)
        a = a + e
    m, body = mlp_codec.decoder_forward(params, "dec.", a)  # (N, D)
    return m, DecoderCache(lin, label, body)


def decode_backward(dm: Any, c: DecoderCache) -> tuple[dict, Any]:
    """Gradients of decode: dm (N, D) -> (grads of the decoder's parameters, dz (N, Z))."""
    g, da = mlp_codec.decoder_backward(dm, c.body)  # da (N, H)
    if c.label is not None:
        g["label_embed.table"] = embedding_backward(da, c.label)  # a = z W + b + table[y]: da reaches both
    dz, g["dec.in.w"], g["dec.in.b"] = linear_backward(da, c.lin)
    return g, dz


def log_likelihood(params: dict, cfg: MLPVAEConfig, x: Any, m: Any) -> Any:
    """log p(x | z, y) of each point, in nats: sum_d log N(x_d; m_d, exp(log_scale_d)^2) (a density).

    x, m: (N, D). Returns (N,).
    """
    return namespace(x).sum(gaussian_log_likelihood(x, m, params["dec.log_scale"]), axis=1)


def log_likelihood_backward(params: dict, cfg: MLPVAEConfig, x: Any, m: Any, w: Any) -> tuple[Any, dict]:
    """Gradients of sum_n w_n log p(x_n | z_n, y_n): (dm (N, D), {"dec.log_scale": (D,)}); w: (N,).

    Math: log N(x; m, s^2) = -log(2 pi) / 2 - l - u^2 / 2,  u = (x - m) e^(-l), l = log s
          d/dm = u e^(-l),  d/dl = u^2 - 1
    """
    xp = namespace(x)
    inv_s = xp.exp(-params["dec.log_scale"])  # (D,)
    u = (x - m) * inv_s  # (N, D)
    w = xp.reshape(w, (w.shape[0], 1))  # (N,) -> (N, 1)
    return w * u * inv_s, {"dec.log_scale": xp.sum(w * (u * u - 1.0), axis=0)}


def check_x(cfg: MLPVAEConfig, x: Any) -> None:
    """Raise unless x is a real floating (N, D) array of finite points (one device read)."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating") or x.ndim != 2 or x.shape[1] != cfg.data_dim or x.shape[0] < 1:
        raise ValueError(f"x must be a real floating (N, {cfg.data_dim}) array of points (cfg.data_dim), got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    if not bool(xp.all(xp.isfinite(x))):  # one device-to-host read
        raise ValueError("x must be finite, got NaN or inf values")
