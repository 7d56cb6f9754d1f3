"""The two ends of a GAN's networks that its image form (refdiff.models.gan_conv) and its point form
(refdiff.models.gan_mlp) share: the generator's first layer with its label embedding, and the discriminator's
read-out with the projection of a label embedding (Miyato & Koyama 2018, eq. 3). The bodies between them are
refdiff.models.conv_codec's and refdiff.models.mlp_codec's."""

from __future__ import annotations

from typing import Any, NamedTuple

from refdiff.backend import namespace
from refdiff.layers.basic import LinearCache, linear_backward, linear_forward
from refdiff.layers.embed import EmbeddingCache, embedding_backward, embedding_forward


class InputCache(NamedTuple):
    lin: LinearCache
    label: EmbeddingCache | None  # None for an unconditional generator


def generator_input(params: dict, z: Any, y: Any, conditional: bool) -> tuple[Any, InputCache]:
    """The generator's first pre-activation a = z W_in + b_in [+ table[y]] ("gen.in", "gen.label_embed.table").

    z: (N, Z); y: (N,) labels in [0, K) (used when conditional). Returns a (N, F) like z, and an InputCache.
    """
    a, lin = linear_forward(z, params["gen.in.w"], params["gen.in.b"])  # (N, F)
    label = None
    if conditional:
        e, label = embedding_forward(y, params["gen.label_embed.table"])  # (N, F)
        a = a + e
    return a, InputCache(lin, label)


def generator_input_backward(da: Any, c: InputCache) -> dict:
    """Gradients of generator_input's parameters from da (N, F) (z gets none: it is not learned)."""
    g = {}
    if c.label is not None:
        g["gen.label_embed.table"] = embedding_backward(da, c.label)  # a = z W + b + table[y]: da reaches both
    _, g["gen.in.w"], g["gen.in.b"] = linear_backward(da, c.lin)
    return g


class ProjectionCache(NamedTuple):
    psi: LinearCache
    phi: Any  # (N, F) the features
    label: EmbeddingCache | None  # the projection's embedding, None for an unconditional discriminator
    e: Any  # (N, F) embed(y), or None


def projection_logit(params: dict, phi: Any, y: Any, conditional: bool) -> tuple[Any, ProjectionCache]:
    """The discriminator's logit from its features ("disc.psi", "disc.label_embed.table").

    Math: logit = psi(phi) + <embed(y), phi>,  psi(phi) = phi w_psi + b_psi      (Miyato & Koyama 2018, eq. 3)

    phi: (N, F); y: (N,) labels in [0, K) (used when conditional). Returns logits (N,) like phi, and a
    ProjectionCache.
    """
    xp = namespace(phi)
    logit, psi = linear_forward(phi, params["disc.psi.w"], params["disc.psi.b"])  # (N, 1)
    logit = logit[:, 0]  # (N, 1) -> (N,)
    label = e = None
    if conditional:
        e, label = embedding_forward(y, params["disc.label_embed.table"])  # (N, F)
        logit = logit + xp.sum(e * phi, axis=1)  # the projection term
    return logit, ProjectionCache(psi, phi, label, e)


def projection_logit_backward(dlogit: Any, c: ProjectionCache) -> tuple[dict, Any]:
    """Gradients of projection_logit from dlogit (N,): (grads of its parameters, dphi (N, F)).

    Math: dphi = dlogit w_psi^T + dlogit embed(y);  d table[y] = dlogit phi
    """
    xp = namespace(dlogit)
    g = {}
    dl = xp.reshape(dlogit, (dlogit.shape[0], 1))  # (N,) -> (N, 1)
    dphi, g["disc.psi.w"], g["disc.psi.b"] = linear_backward(dl, c.psi)
    if c.label is not None:
        dphi = dphi + dl * c.e  # the projection: d<e, phi>/dphi = e ...
        g["disc.label_embed.table"] = embedding_backward(dl * c.phi, c.label)  # ... and d<e, phi>/de = phi
    return g, dphi
