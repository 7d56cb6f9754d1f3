"""CLIP's head (Radford et al. 2021, Sec. 2.3 and Fig. 3): L2 normalisation of the embeddings and the
symmetric contrastive (InfoNCE) loss with a learned temperature, as forward/backward pairs.

    u = v / ||v||                                     each row of the image (f) and text (g) embeddings
    Z = exp(tau) f g^T                                (N, N): Z_ij scores image i against caption j
    loss = (CE(Z, I) + CE(Z^T, I)) / 2                 the pair (i, i) is the match, every other a negative

tau is the log of the inverse temperature (CLIP's ``logit_scale``, initialised to log(1 / 0.07)).
The derivation of both backward passes, with the numbered steps the code follows:
docs/derivations/contrastive.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from refdiff.backend import device, namespace
from refdiff.layers.cross_entropy import log_softmax


class L2NormalizeCache(NamedTuple):
    u: Any  # (N, E) the unit rows
    r: Any  # (N, 1) the norms ||v||


def l2_normalize_forward(v: Any) -> tuple[Any, L2NormalizeCache]:
    """Each row scaled to unit Euclidean length.

    Math: r = sqrt(sum_k v_k^2)   (step 1);   u = v / r   (step 2)
    No eps: a zero row is the caller's bug (CLIP's projections are initialised away from 0).

    v: (N, E) real floating. Returns u (N, E) like v, and the cache.
    """
    xp = namespace(v)
    if not xp.isdtype(v.dtype, "real floating") or v.ndim != 2:
        raise ValueError(f"v must be a real floating (N, E) array, got shape {tuple(v.shape)} and dtype {v.dtype}")
    r = xp.sqrt(xp.sum(v * v, axis=1, keepdims=True))  # step 1: (N, 1)
    u = v / r  # step 2
    return u, L2NormalizeCache(u, r)


def l2_normalize_backward(du: Any, cache: L2NormalizeCache) -> Any:
    """Gradient of l2_normalize_forward: du (N, E) -> dv (N, E).

    Math: step 2: dv = du / r and dr = -sum_k du_k v_k / r^2 = -(u . du) / r
          step 1: dv += dr v / r = -u (u . du) / r
          so dv = (du - u (u . du)) / r: du with its component along u removed, divided by the norm.
    """
    xp = namespace(du)
    u, r = cache
    dr = -xp.sum(du * u, axis=1, keepdims=True) / r  # step 2 back: (N, 1)
    return du / r + dr * u  # step 1 back: dr * v / r = dr * u


class ContrastiveCache(NamedTuple):
    f: Any  # (N, E) image embeddings
    g: Any  # (N, E) text embeddings
    scale: Any  # 0-d, s = exp(tau)
    logits: Any  # (N, N) Z
    log_p_image: Any  # (N, N) log softmax over each row of Z: image i -> caption j
    log_p_text: Any  # (N, N) log softmax over each row of Z^T: caption j -> image i


def contrastive_forward(f: Any, g: Any, logit_scale: Any) -> tuple[Any, ContrastiveCache]:
    """The symmetric InfoNCE loss of N matched (image, caption) embedding pairs.

    Math (Radford et al. 2021, Fig. 3; docs/derivations/contrastive.md):
      s = exp(tau)                                                      step 1
      Z = s f g^T                                                       step 2  (N, N)
      A = log_softmax(Z) by rows,  B = log_softmax(Z^T) by rows         step 3
      loss = -(1 / 2N) sum_i (A_ii + B_ii)                              step 4
    Step 4 is (CE(Z, I) + CE(Z^T, I)) / 2 with the labels 0..N-1: caption i is image i's class and
    image i caption i's.

    f, g: (N, E) real floating, one library, device and dtype, N >= 1 (L2-normalised rows in CLIP; not
    required); logit_scale: tau, a 0-d array of theirs. Returns (loss 0-d, cache) like f.
    """
    _check_contrastive(f, g, logit_scale)
    xp = namespace(f, g, logit_scale)
    s = xp.exp(logit_scale)  # step 1
    logits = s * xp.matmul(f, xp.matrix_transpose(g))  # step 2: (N, E) @ (E, N) -> (N, N)
    log_p_image = log_softmax(logits)  # step 3: (N, N)
    log_p_text = log_softmax(xp.matrix_transpose(logits))  # (N, N), row j is caption j over the images
    eye = xp.eye(f.shape[0], dtype=f.dtype, device=device(f))  # the matches: the diagonal
    loss = -xp.sum(eye * (log_p_image + log_p_text)) / (2 * f.shape[0])  # step 4
    return loss, ContrastiveCache(f, g, s, logits, log_p_image, log_p_text)


def contrastive_backward(dloss: Any, cache: ContrastiveCache) -> tuple[Any, Any, Any]:
    """Gradients of contrastive_forward: returns (df (N, E), dg (N, E), dlogit_scale 0-d).

    Math (steps 4 to 1):
      dZ = dloss / (2N) ((P - I) + (Q - I)^T),  P = exp(A), Q = exp(B)   steps 4-3: softmax minus one-hot
      df = s dZ g,  dg = s dZ^T f,  ds = sum_ij dZ_ij (f g^T)_ij          step 2
      dtau = ds s = sum_ij dZ_ij Z_ij                                     step 1: ds/dtau = exp(tau) = s

    dloss: the upstream gradient, a number or a 0-d array (1 when the loss is the objective).
    """
    xp = namespace(cache.f)
    f, g, s, logits, log_p_image, log_p_text = cache
    N = f.shape[0]
    eye = xp.eye(N, dtype=f.dtype, device=device(f))
    d_image = xp.exp(log_p_image) - eye  # step 4-3, CE(Z, I): (N, N)
    d_text = xp.matrix_transpose(xp.exp(log_p_text) - eye)  # CE(Z^T, I), back to Z's layout (N, N)
    dlogits = (dloss / (2 * N)) * (d_image + d_text)  # (N, N)
    df = s * xp.matmul(dlogits, g)  # step 2: (N, N) @ (N, E)
    dg = s * xp.matmul(xp.matrix_transpose(dlogits), f)  # (N, N) @ (N, E)
    dlogit_scale = xp.sum(dlogits * logits)  # step 1: sum dZ * (s f g^T) = ds * s
    return df, dg, dlogit_scale


def _check_contrastive(f: Any, g: Any, logit_scale: Any) -> None:
    xp = namespace(f)
    if not xp.isdtype(f.dtype, "real floating") or f.ndim != 2 or f.shape[0] < 1:
        raise ValueError(f"f must be a real floating (N, E) array with N >= 1, got shape {tuple(f.shape)} "
                         f"and dtype {f.dtype}")
    for name, a, shape in (("g", g, tuple(f.shape)), ("logit_scale", logit_scale, ())):
        try:
            same = namespace(a, f) is xp and device(a) == device(f) and a.dtype == f.dtype
        except TypeError:  # array_api_compat refuses to mix libraries
            same = False
        if not same or tuple(a.shape) != shape:
            raise ValueError(f"{name} must be an array of f's library, device and dtype ({f.dtype}) of shape "
                             f"{shape}, got {type(a).__name__} of shape {tuple(getattr(a, 'shape', ()))}")
