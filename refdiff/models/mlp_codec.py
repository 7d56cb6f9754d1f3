"""The two-hidden-layer MLP encoder and decoder that the VAE's (refdiff.models.vae_mlp) and the GAN's
(refdiff.models.gan_mlp) point networks share, SiLU throughout.

Data flow (N points of D values, H hidden units; parameter keys under a prefix, "enc." / "disc." for an encoder,
"dec." / "gen." for a decoder):

    encoder  phi = silu(fc1(silu(fc0(x))))                                                   (N, H)
    decoder  h = silu(fc1(silu(a))) for a pre-activation a (N, H) (the caller's linear layer and label);
             out = h W_out + b_out                                                          (N, D)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from refdiff.layers.basic import LinearCache, SiluCache, linear_backward, linear_forward, silu_backward, silu_forward


class EncoderCache(NamedTuple):
    prefix: str
    fc0: LinearCache
    silu0: SiluCache
    fc1: LinearCache
    silu1: SiluCache


def encoder_forward(params: dict, prefix: str, x: Any) -> tuple[Any, EncoderCache]:
    """The encoder's features phi = silu(fc1(silu(fc0(x)))). x: (N, D). Returns phi (N, H) like x, and an
    EncoderCache."""
    h, fc0 = linear_forward(x, params[f"{prefix}fc0.w"], params[f"{prefix}fc0.b"])  # (N, H)
    h, silu0 = silu_forward(h)
    h, fc1 = linear_forward(h, params[f"{prefix}fc1.w"], params[f"{prefix}fc1.b"])  # (N, H)
    phi, silu1 = silu_forward(h)
    return phi, EncoderCache(prefix, fc0, silu0, fc1, silu1)


def encoder_backward(dphi: Any, c: EncoderCache) -> tuple[dict, Any]:
    """Gradients of encoder_forward from dphi (N, H): (grads of its parameters, dx (N, D))."""
    g, p = {}, c.prefix
    dh, g[f"{p}fc1.w"], g[f"{p}fc1.b"] = linear_backward(silu_backward(dphi, c.silu1), c.fc1)
    dx, g[f"{p}fc0.w"], g[f"{p}fc0.b"] = linear_backward(silu_backward(dh, c.silu0), c.fc0)
    return g, dx


class DecoderCache(NamedTuple):
    prefix: str
    silu0: SiluCache
    fc1: LinearCache
    silu1: SiluCache
    out: LinearCache


def decoder_forward(params: dict, prefix: str, a: Any) -> tuple[Any, DecoderCache]:
    """The decoder's output from the pre-activation a (N, H) of its first layer. Returns out (N, D) like a, and a
    DecoderCache."""
    h, silu0 = silu_forward(a)
    h, fc1 = linear_forward(h, params[f"{prefix}fc1.w"], params[f"{prefix}fc1.b"])  # (N, H)
    h, silu1 = silu_forward(h)
    out, out_cache = linear_forward(h, params[f"{prefix}out.w"], params[f"{prefix}out.b"])  # (N, D)
    return out, DecoderCache(prefix, silu0, fc1, silu1, out_cache)


def decoder_backward(dout: Any, c: DecoderCache) -> tuple[dict, Any]:
    """Gradients of decoder_forward from dout (N, D): (grads of its parameters, da (N, H))."""
    g, p = {}, c.prefix
    dh, g[f"{p}out.w"], g[f"{p}out.b"] = linear_backward(dout, c.out)
    dh, g[f"{p}fc1.w"], g[f"{p}fc1.b"] = linear_backward(silu_backward(dh, c.silu1), c.fc1)
    return g, silu_backward(dh, c.silu0)
