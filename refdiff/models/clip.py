"""A small noised CLIP (GLIDE, Nichol et al. 2021, Sec. 2.4; CLIP, Radford et al. 2021), with
hand-derived backprop: an image encoder that reads noisy images x_t with their timestep and a text
encoder, each projected to a shared embedding of dimension E and L2-normalised.

    image:  v = W_i pooled(encoder(x_t, t)) + b_i;   f = v / ||v||                         (N, E)
    text:   h = text_encoder(tokens, mask)[:, -1];   w = h W_t + b_t;   g = w / ||w||      (N, E)
    score:  f . g, trained with the symmetric InfoNCE loss at temperature exp(-tau)
            (refdiff.layers.contrastive), on x_t at uniform t (refdiff.clip_train)

The image side *is* the noisy classifier (refdiff.models.classifier) with num_classes = E: the
U-Net's encoder and time embedding, ADM's adaptive pooling, and its linear head as the projection W_i
(initialised LeCun-normal here, not zero: a zero projection has no direction to normalise). The text
side is GLIDE's transformer (refdiff.models.text_encoder); its output at the last position, which the
tokenizer keeps as padding in every caption (refdiff.data.captions.CONTEXT), attends to every word
and is read as the caption's summary, as GLIDE's U-Net reads it.

Parameters are one flat dict: "image.<classifier key>" (so "image.out.linear.w" (C, E) is W_i),
"text.<text encoder key>", "text_proj.w" (C_text, E), "text_proj.b" (E,), and "logit_scale" () (tau).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, device, namespace
from refdiff.layers.basic import LinearCache, linear_backward, linear_forward
from refdiff.layers.contrastive import L2NormalizeCache, l2_normalize_backward, l2_normalize_forward
from refdiff.models import classifier as C
from refdiff.models import text_encoder as T
from refdiff.models.common import check_backward, check_init, check_int, count_params

IMAGE, TEXT = "image.", "text."  # the key prefixes of the two encoders' parameters
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07


@dataclass(frozen=True)
class ClipConfig:
    """Architecture of the noised CLIP. The image fields mean what they mean in ClassifierConfig, the
    text_* fields what the unprefixed ones mean in TextEncoderConfig; both are validated by those
    configs on construction."""

    embed_dim: int = 32              # E, the shared embedding
    in_channels: int = 3
    image_size: int = 16
    base_channels: int = 16
    channel_mult: tuple = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple = ()
    heads: int = 1
    groups: int = 8
    dropout: float = 0.0
    scale_shift_norm: bool = True
    time_embed_dim: int | None = 64
    time_embed_order: str = "cos_sin"
    vocab_size: int = 19             # refdiff.data.captions.VOCAB
    context_length: int = 6          # refdiff.data.captions.CONTEXT
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_mlp_ratio: int = 4
    text_padding: str = "mask"
    text_gelu: str = "tanh"

    def __post_init__(self):
        check_int("embed_dim", self.embed_dim, 1)
        image, _ = self.image_config, self.text_config  # each raises, naming the field, for a bad field
        for name in ("channel_mult", "attention_resolutions", "time_embed_dim"):
            object.__setattr__(self, name, getattr(image, name))

    @property
    def image_config(self) -> C.ClassifierConfig:
        """The image encoder: the noisy classifier with E outputs."""
        fields = {f.name for f in dataclasses.fields(C.ClassifierConfig)} - {"num_classes"}
        return C.ClassifierConfig(num_classes=self.embed_dim, **{k: getattr(self, k) for k in fields})

    @property
    def text_config(self) -> T.TextEncoderConfig:
        """The text encoder of width text_width."""
        return T.TextEncoderConfig(vocab_size=self.vocab_size, context_length=self.context_length,
                                   width=self.text_width, layers=self.text_layers, heads=self.text_heads,
                                   mlp_ratio=self.text_mlp_ratio, padding=self.text_padding, gelu=self.text_gelu)


def param_shapes(cfg: ClipConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter: image encoder, text encoder, text projection, logit_scale."""
    shapes = {IMAGE + k: v for k, v in C.param_shapes(cfg.image_config).items()}
    shapes.update({TEXT + k: v for k, v in T.param_shapes(cfg.text_config).items()})
    shapes.update({"text_proj.w": (cfg.text_width, cfg.embed_dim), "text_proj.b": (cfg.embed_dim,),
                   "logit_scale": ()})
    return shapes


def param_count(cfg: ClipConfig) -> int:
    """Number of scalar parameters of the CLIP ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: ClipConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``, in param_shapes' order.

    Math: each encoder by its own init_params (the classifier's, the text encoder's), then
          W_i, W_t ~ N(0, 1 / fan_in) (the classifier zeroes its head; a projection must not be 0),
          b_t = 0, tau = log(1 / 0.07)                                     (CLIP's initial temperature)
    """
    dt = check_init(cfg, ClipConfig, generator, dtype)
    params = {IMAGE + k: v for k, v in C.init_params(cfg.image_config, generator, dt).items()}
    params.update({TEXT + k: v for k, v in T.init_params(cfg.text_config, generator, dt).items()})
    for key, fan_in in ((IMAGE + "out.linear.w", cfg.image_config.feature_channels), ("text_proj.w", cfg.text_width)):
        params[key] = (generator.normal((fan_in, cfg.embed_dim), dtype=np.float64) / math.sqrt(fan_in)).astype(dt)
    params["text_proj.b"] = np.zeros((cfg.embed_dim,), dtype=dt)
    params["logit_scale"] = np.asarray(INIT_LOGIT_SCALE, dtype=dt)
    return {k: params[k] for k in param_shapes(cfg)}


def _part(params: dict, prefix: str) -> dict:
    """The parameters under ``prefix``, with the prefix removed: one encoder's own dict."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------- image side

class ClipImageCache(NamedTuple):
    encoder: C.ClassifierCache
    norm: L2NormalizeCache
    out_shape: tuple[int, int]  # (N, E)
    dtype: Any


def clip_image_forward(params: dict, cfg: ClipConfig, x: Any, t: Any, train: bool = False,
                       generator: Generator | None = None):
    """The image embeddings f(x_t, t) of a batch of noisy images.

    Math: v = classifier_forward(x_t, t) (the head is W_i);  f = v / ||v||     (module docstring)

    params: dict of param_shapes(cfg) (the text's may be there or not), arrays of x's library, device
    and dtype; x: (N, C, H, W); t: (N,) steps; train, generator: dropout as in classifier_forward.
    Returns f (N, E) like x, and a ClipImageCache.
    """
    _check_cfg(cfg)
    v, encoder = C.classifier_forward(_part(params, IMAGE), cfg.image_config, x, t, train, generator)  # (N, E)
    f, norm = l2_normalize_forward(v)
    return f, ClipImageCache(encoder, norm, tuple(f.shape), f.dtype)


def clip_image_model(params: dict, cfg: ClipConfig):
    """embed(x_t, t) -> f (N, E): clip_image_forward in evaluation mode, the model the registry's
    "contrastive" task offers (no activations kept past the call)."""
    def embed(x: Any, t: Any):
        return clip_image_forward(params, cfg, x, t)[0]

    return embed


def clip_image_backward(df: Any, cache: ClipImageCache, need_dx: bool = False):
    """Gradients of clip_image_forward: {"image.<key>": grad}, and with need_dx also dx (N, C, H, W).

    Math: dv = (df - f (f . df)) / ||v|| (l2_normalize_backward), then classifier_backward(dv).
    """
    check_backward("df", df, cache, ClipImageCache, "clip_image_forward", "image embeddings'")
    dv = l2_normalize_backward(df, cache.norm)
    out = C.classifier_backward(dv, cache.encoder, need_dx=need_dx)
    grads, dx = out if need_dx else (out, None)
    grads = {IMAGE + k: v for k, v in grads.items()}
    return (grads, dx) if need_dx else grads


# ------------------------------------------------------------------------------------ text side

class ClipTextCache(NamedTuple):
    encoder: T.TextEncoderCache
    proj: LinearCache
    norm: L2NormalizeCache
    out_shape: tuple[int, int]  # (N, E)
    dtype: Any


def clip_text_forward(params: dict, cfg: ClipConfig, tokens: Any, mask: Any = None):
    """The caption embeddings g(c) of a batch of token sequences.

    Math: h = text_encoder(tokens, mask)[:, L - 1]   (step 1: the summary slot, (N, C_text))
          w = h W_t + b_t                           (step 2: (N, E))
          g = w / ||w||                             (step 3)

    params: dict of param_shapes(cfg) (the image's may be there or not), arrays of one library, device
    and real floating dtype; tokens: (N, L) integer ids of that library and device; mask: (N, L) bool,
    True at words, or None. Returns g (N, E) in the parameters' dtype, and a ClipTextCache.
    """
    _check_cfg(cfg)
    h, encoder = T.text_encoder_forward(_part(params, TEXT), cfg.text_config, tokens, mask)  # (N, L, C_text)
    w, proj = linear_forward(h[:, -1, :], params["text_proj.w"], params["text_proj.b"])  # (N, E)
    g, norm = l2_normalize_forward(w)
    return g, ClipTextCache(encoder, proj, norm, tuple(g.shape), g.dtype)


def clip_text_backward(dg: Any, cache: ClipTextCache) -> dict:
    """Gradients of clip_text_forward: {"text.<key>": grad, "text_proj.w": ..., "text_proj.b": ...}.

    Math: steps 3 to 1 back; only the last position of the features receives a gradient.
    """
    check_backward("dg", dg, cache, ClipTextCache, "clip_text_forward", "caption embeddings'")
    xp = namespace(dg)
    dw = l2_normalize_backward(dg, cache.norm)  # step 3
    dh_last, dproj_w, dproj_b = linear_backward(dw, cache.proj)  # step 2: (N, C_text)
    N, L, C_text = cache.encoder.out_shape
    zeros = xp.zeros((N, L - 1, C_text), dtype=dg.dtype, device=device(dg))  # positions 0..L-2 are not read
    dh = xp.concat((zeros, dh_last[:, None, :]), axis=1)  # step 1: (N, L, C_text)
    grads = {TEXT + k: v for k, v in T.text_encoder_backward(dh, cache.encoder).items()}
    grads.update({"text_proj.w": dproj_w, "text_proj.b": dproj_b})
    return grads


def _check_cfg(cfg: Any) -> None:
    if not isinstance(cfg, ClipConfig):
        raise ValueError(f"cfg must be a ClipConfig, got {type(cfg).__name__}")

