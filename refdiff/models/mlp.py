"""MLP denoiser for low-dimensional toy data (2-D mixtures, rings, spirals), with hand-derived backprop.

The same interface as the U-Net (refdiff.models.unet): a frozen ``MLPConfig``, ``init_params`` ->
flat dict of dotted keys, ``mlp_forward`` -> (out, cache), ``mlp_backward`` -> grads (same keys),
``mlp_model`` -> the sampler protocol ``model(xt, t, y)``, and ``param_count``. The conditioning
follows ADM (Dhariwal & Nichol 2021): a sinusoidal timestep embedding through a two-layer SiLU MLP,
plus a learned class embedding with one extra "null" row for classifier-free guidance (Ho & Salimans
2022). The trunk is a residual MLP whose output layer is zero-initialised, so a fresh model predicts 0.

Data flow (N samples, D = data_dim, H = hidden, E = time_embed_dim, K = num_classes):

    emb   = fc2(silu(fc1(timestep_embedding(t, E))))  [+ table[y]]     (N, H)
    h_0   = input(x) + emb                                              (N, H)
    h_i+1 = h_i + block_i(dropout(silu(h_i)))        for i < depth      (N, H)
    out   = out(silu(h_depth))                                          (N, D) or (N, 2D) with learn_sigma

Parameter keys: input.{w,b}, time_embed.fc1.{w,b}, time_embed.fc2.{w,b}, label_embed.table
(when num_classes is set), blocks.<i>.{w,b}, out.{w,b}. Weights are (C_in, C_out) as in
``linear_forward``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from refdiff.backend import Generator, device, namespace
from refdiff.layers.basic import (
    DropoutCache,
    LinearCache,
    SiluCache,
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    silu_backward,
    silu_forward,
)
from refdiff.layers.embed import (
    ORDERS,
    EmbeddingCache,
    embedding_backward,
    embedding_forward,
    timestep_embedding,
)
from refdiff.models.common import (check_generator, check_init, check_inputs, check_int, check_params,
                                   count_params)
from refdiff.parallel import forward_in_parts


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of the MLP denoiser; validated on construction."""

    data_dim: int = 2             # D, the data's dimension
    hidden: int = 128             # H, width of the residual stream
    depth: int = 3                # residual blocks (silu, dropout, linear) on the stream
    time_embed_dim: int = 64      # E, width of the sinusoidal timestep embedding
    num_classes: int | None = None  # K, or None for an unconditional model
    learn_sigma: bool = False     # also output D variance channels (learned-range variance)
    dropout: float = 0.0          # drop probability inside each block, while training
    time_embed_order: str = "cos_sin"  # "cos_sin" (OpenAI, default) or "sin_cos" (diffusers)

    def __post_init__(self):
        check_int("data_dim", self.data_dim, 1)
        check_int("hidden", self.hidden, 1)
        check_int("depth", self.depth, 0)
        check_int("time_embed_dim", self.time_embed_dim, 1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 1)
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"learn_sigma must be a bool, got {self.learn_sigma!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"dropout must be a drop probability in [0, 1), got {d!r}")
        if self.time_embed_order not in ORDERS:
            raise ValueError(f"time_embed_order must be one of {', '.join(ORDERS)}, got {self.time_embed_order!r}")

    @property
    def out_dim(self) -> int:
        """Output width: D (eps, x0 or v), or 2D when learn_sigma adds the variance channels."""
        return 2 * self.data_dim if self.learn_sigma else self.data_dim


def param_shapes(cfg: MLPConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter, in the order init_params, mlp_backward and param_count use."""
    D, H, E = cfg.data_dim, cfg.hidden, cfg.time_embed_dim
    shapes = {"input.w": (D, H), "input.b": (H,),
              "time_embed.fc1.w": (E, H), "time_embed.fc1.b": (H,),
              "time_embed.fc2.w": (H, H), "time_embed.fc2.b": (H,)}
    if cfg.num_classes is not None:
        shapes["label_embed.table"] = (cfg.num_classes + 1, H)  # row K is the null label
    for i in range(cfg.depth):
        shapes[f"blocks.{i}.w"], shapes[f"blocks.{i}.b"] = (H, H), (H,)
    shapes["out.w"], shapes["out.b"] = (H, cfg.out_dim), (cfg.out_dim,)
    return shapes


def param_count(cfg: MLPConfig) -> int:
    """Number of scalar parameters of the model ``cfg`` describes (no arrays are built)."""
    return count_params(param_shapes(cfg))


def init_params(cfg: MLPConfig, generator: Generator, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy host arrays of ``dtype``.

    Math: linear w, b ~ U(-1/sqrt(C_in), 1/sqrt(C_in))   (PyTorch's nn.Linear default)
          label_embed.table ~ N(0, 1)                     (PyTorch's nn.Embedding default)
          out.w = out.b = 0                               (ADM's zero_module: a fresh model outputs 0)

    Draws are made in float64 and cast, so float32 and float64 parameters from one seed agree to
    float32 rounding. Move them to a backend with ``{k: backend.asarray(v) for k, v in params.items()}``.
    """
    dt = check_init(cfg, MLPConfig, generator, dtype)
    shapes, params = param_shapes(cfg), {}
    for key, shape in shapes.items():
        if key.startswith("out."):
            params[key] = np.zeros(shape, dtype=dt)
        elif key == "label_embed.table":
            params[key] = generator.normal(shape, dtype=dt)
        else:
            bound = 1.0 / math.sqrt(shapes[key[:-1] + "w"][0])  # 1 / sqrt(C_in) of this layer's w
            params[key] = generator.uniform(shape, dtype=dt, low=-bound, high=bound)
    return params


# ------------------------------------------------------------------------------------ forward

class BlockCache(NamedTuple):
    silu: SiluCache
    dropout: DropoutCache
    linear: LinearCache


class MLPCache(NamedTuple):
    cfg: MLPConfig
    time_fc1: LinearCache
    time_silu: SiluCache
    time_fc2: LinearCache
    label: EmbeddingCache | None  # None for an unconditional model
    input: LinearCache
    blocks: tuple[BlockCache, ...]
    out_silu: SiluCache
    out_linear: LinearCache


def mlp_forward(params: dict, cfg: MLPConfig, x: Any, t: Any, y: Any = None, train: bool = False,
                generator: Generator | None = None) -> tuple[Any, MLPCache]:
    """The denoiser's prediction (eps, x0 or v, then the variance channels if learn_sigma).

    Math (module docstring):  emb = fc2(silu(fc1(sinusoid(t)))) + table[y];  h_0 = input(x) + emb;
          h_i+1 = h_i + block_i(dropout(silu(h_i)));  out = out(silu(h_depth))

    params: dict of param_shapes(cfg), arrays of x's library, device and dtype; x: (N, D) floating;
    t: (N,) integer or float steps; y: (N,) labels in [0, K] (K = the null label), or None, which
    means the null label for a class-conditional model; train and generator: dropout is applied only
    when train is True, drawing its masks from generator. Returns out (N, D) or (N, 2D) like x.
    """
    _check_forward(params, cfg, x, t, y, train, generator)
    xp = namespace(x)
    # 1. conditioning: ADM's time_embed (linear, silu, linear) plus its label_emb
    s = timestep_embedding(t, cfg.time_embed_dim, order=cfg.time_embed_order, dtype=x.dtype)  # (N, E)
    a, time_fc1 = linear_forward(s, params["time_embed.fc1.w"], params["time_embed.fc1.b"])  # (N, H)
    a, time_silu = silu_forward(a)
    emb, time_fc2 = linear_forward(a, params["time_embed.fc2.w"], params["time_embed.fc2.b"])  # (N, H)
    label = None
    if cfg.num_classes is not None:
        if y is None:  # unconditional prediction = the null label K (classifier-free guidance)
            y = xp.full((x.shape[0],), cfg.num_classes, dtype=xp.int64, device=device(x))
        e, label = embedding_forward(y, params["label_embed.table"])  # (N, H)
        emb = emb + e
    # 2. input projection plus conditioning
    h, inp = linear_forward(x, params["input.w"], params["input.b"])  # (N, H)
    h = h + emb
    # 3. residual blocks
    blocks = []
    for i in range(cfg.depth):
        a, c_silu = silu_forward(h)
        a, c_drop = dropout_forward(a, cfg.dropout, generator, train)
        r, c_lin = linear_forward(a, params[f"blocks.{i}.w"], params[f"blocks.{i}.b"])
        h = h + r  # (N, H)
        blocks.append(BlockCache(c_silu, c_drop, c_lin))
    # 4. output head (zero-initialised)
    a, out_silu = silu_forward(h)
    out, out_linear = linear_forward(a, params["out.w"], params["out.b"])  # (N, out_dim)
    return out, MLPCache(cfg, time_fc1, time_silu, time_fc2, label, inp, tuple(blocks), out_silu, out_linear)


# ----------------------------------------------------------------------------------- backward

def mlp_backward(dout: Any, cache: MLPCache, need_dx: bool = False):
    """Gradients of mlp_forward: the steps of the forward pass in reverse.

    Math: every layer's own backward (refdiff.layers); the sums are where one activation feeds two
    consumers: the residual stream (dh_i = dh_i+1 + d branch_i), and h_0 = input(x) + emb, whose
    gradient dh_0 reaches both the input layer and the conditioning (time MLP and label table).

    dout: (N, out_dim) like the output. Returns grads, a dict with params' keys in params' order and
    their shapes; with need_dx also dx (N, D), the gradient with respect to x.
    """
    cfg = cache.cfg
    N = cache.input.x2.shape[0]
    if tuple(dout.shape) != (N, cfg.out_dim) or dout.dtype != cache.out_linear.w.dtype:
        raise ValueError(f"dout must have the output's shape {(N, cfg.out_dim)} and dtype {cache.out_linear.w.dtype}, "
                         f"got shape {tuple(dout.shape)} and dtype {dout.dtype}")
    grads = {}
    # 4. output head
    da, grads["out.w"], grads["out.b"] = linear_backward(dout, cache.out_linear)
    dh = silu_backward(da, cache.out_silu)  # (N, H) = d h_depth
    # 3. residual blocks, last first: h_i+1 = h_i + r_i, so d h_i = d h_i+1 (skip) + d r_i / d h_i
    for i in reversed(range(cfg.depth)):
        c = cache.blocks[i]
        da, grads[f"blocks.{i}.w"], grads[f"blocks.{i}.b"] = linear_backward(dh, c.linear)
        da = dropout_backward(da, c.dropout)
        dh = dh + silu_backward(da, c.silu)  # gradients of the skip and the branch add up here
    # 2. h_0 = input(x) + emb: d h_0 flows unchanged into both terms
    dx, grads["input.w"], grads["input.b"] = linear_backward(dh, cache.input)
    # 1. conditioning: emb = fc2(...) + table[y], each term gets d h_0
    if cache.label is not None:
        grads["label_embed.table"] = embedding_backward(dh, cache.label)
    da, grads["time_embed.fc2.w"], grads["time_embed.fc2.b"] = linear_backward(dh, cache.time_fc2)
    da = silu_backward(da, cache.time_silu)
    _, grads["time_embed.fc1.w"], grads["time_embed.fc1.b"] = linear_backward(da, cache.time_fc1)  # no dt
    grads = {key: grads[key] for key in param_shapes(cfg)}  # params' order
    return (grads, dx) if need_dx else grads


# --------------------------------------------------------------------------- model and checks

def mlp_model(params: dict, cfg: MLPConfig):
    """The sampler protocol ``model(xt, t, y=None) -> output`` (refdiff.samplers.common), evaluation mode.

    params must already be arrays of the library, device and dtype the sampler's xt will have.
    """
    _check_params(params, cfg)

    def model(xt: Any, t: Any, y: Any = None):
        return forward_in_parts(mlp_forward, params, cfg, xt, t, y)[0]

    return model


def _check_params(params: Any, cfg: Any) -> None:
    check_params(params, cfg, MLPConfig, param_shapes)


def _check_forward(params, cfg, x, t, y, train, generator) -> None:
    _check_params(params, cfg)
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating") or x.ndim != 2 or x.shape[1] != cfg.data_dim:
        raise ValueError(f"x must be a real floating (N, {cfg.data_dim}) array, got shape {tuple(x.shape)} "
                         f"and dtype {x.dtype}")
    check_inputs(params, x, t, y, cfg.num_classes)
    check_generator(train, cfg.dropout if cfg.depth > 0 else 0.0, generator)
