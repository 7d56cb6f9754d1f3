"""What the model families share (U-Net, classifier, MLP): the parameter count, the U-Net's
initialisation (which the noisy classifier uses too), and the argument checks, one place for each message."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from refdiff.backend import Generator, device, namespace


def count_params(shapes: dict[str, tuple[int, ...]]) -> int:
    """Number of scalar parameters of a model with parameter ``shapes`` (a family's param_shapes(cfg)).

    Math: P = sum over keys of prod(shape)
    """
    return sum(math.prod(shape) for shape in shapes.values())


def lecun_init(shapes: dict[str, tuple[int, ...]], generator: Generator, dt: np.dtype,
               zero: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """Initial parameters of ``shapes`` as NumPy host arrays of dt, in shapes' order (U-Net, classifier).

    Math: w ~ N(0, 1 / fan_in), fan_in = k k C_in (conv) or C_in (linear)   (LeCun normal: a layer
              keeps the variance of unit-variance inputs; PyTorch's default U(+-1/sqrt(fan_in)),
              which ADM inherits, has a third of this variance); weights are the keys ending in
              ".w", ".w_qkv" or ".w_out"
          w = 0 where zero(key) (ADM's zero_module);  biases = 0;  GN gamma = 1, beta = 0
          label_embed.table ~ N(0, 1)   (nn.Embedding's default)

    Draws are made in float64 and cast, so float32 and float64 parameters from one seed agree to
    float32 rounding.
    """
    params = {}
    for key, shape in shapes.items():
        if key == "label_embed.table":
            params[key] = generator.normal(shape, dtype=dt)
        elif key.endswith("gamma"):
            params[key] = np.ones(shape, dtype=dt)
        elif key.endswith((".w", ".w_qkv", ".w_out")) and not zero(key):
            fan_in = math.prod(shape[:-1])  # (k, k, C_in, C_out) or (C_in, C_out)
            params[key] = (generator.normal(shape, dtype=np.float64) / math.sqrt(fan_in)).astype(dt)
        else:
            params[key] = np.zeros(shape, dtype=dt)
    return params


def check_int(name: str, value: Any, low: int) -> None:
    """Raise unless value is an integer (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def same_library(a: Any, x: Any) -> bool:
    """a is an array of x's library on x's device."""
    try:
        return namespace(a, x) is namespace(x) and device(a) == device(x)
    except TypeError:  # array_api_compat refuses to mix libraries
        return False


def _a(cfg_type: type) -> str:
    """'an MLPConfig', 'a UNetConfig', 'a FlowConfig': an initialism's article follows its first letter's name, a
    word's its first sound."""
    name = cfg_type.__name__
    initialism = name[1:2].isupper()
    return f"{'an' if name[0] in ('AEFHILMNORSX' if initialism else 'AEIO') else 'a'} {name}"


def by_config(cfg: Any, modules: dict) -> Any:
    """modules[type(cfg)]: the module a family dispatches cfg to (its coder, its form), or a ValueError naming
    the allowed config types ("cfg must be a VAEConfig or an MLPVAEConfig, got dict")."""
    if type(cfg) not in modules:
        raise ValueError(f"cfg must be {' or '.join(map(_a, modules))}, got {type(cfg).__name__}")
    return modules[type(cfg)]


def check_init(cfg: Any, cfg_type: type, generator: Any, dtype: Any) -> np.dtype:
    """Validate init_params' arguments; returns dtype as a NumPy real floating dtype."""
    if not isinstance(cfg, cfg_type):
        raise ValueError(f"cfg must be {_a(cfg_type)}, got {type(cfg).__name__}")
    if not isinstance(generator, Generator):
        raise ValueError(f"generator must be a refdiff.backend.Generator, got {type(generator).__name__}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise ValueError(f"dtype must be a NumPy real floating dtype (float32, float64), got {dtype!r}")
    return dt


def check_params(params: Any, cfg: Any, cfg_type: type, param_shapes: Callable[[Any], dict]) -> None:
    """Raise unless cfg is a ``cfg_type`` and params a dict with exactly the keys and shapes of
    ``param_shapes(cfg)`` (the family's function)."""
    if not isinstance(cfg, cfg_type):
        raise ValueError(f"cfg must be {_a(cfg_type)}, got {type(cfg).__name__}")
    shapes = param_shapes(cfg)
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of arrays, got {type(params).__name__}")
    missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
    if missing or extra:  # the first few of each: a wrong config misses dozens
        raise ValueError(f"params must have the keys of this {cfg_type.__name__}: missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {extra[:5]} ({len(extra)} in all)")
    for key, shape in shapes.items():
        if tuple(params[key].shape) != shape:
            raise ValueError(f"params[{key!r}] must have shape {shape}, got {tuple(params[key].shape)}")


def check_image(x: Any, in_channels: int, factor: int) -> None:
    """Raise unless x is a real floating (N, in_channels, H, W) array with H, W positive multiples of factor."""
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating") or x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must be a real floating (N, {in_channels}, H, W) array (NCHW), got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    H, W = x.shape[2], x.shape[3]
    if H % factor or W % factor or H == 0 or W == 0:
        raise ValueError(f"x's height and width must be positive multiples of 2^(len(channel_mult) - 1) = "
                         f"{factor}, got (H, W) = {(H, W)}")


def check_sized_image(x: Any, cfg: Any) -> None:
    """check_image for a config with in_channels, downsample_factor and image_size: x must be (N, C, S, S)."""
    check_image(x, cfg.in_channels, cfg.downsample_factor)
    if tuple(x.shape[2:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"x must be (N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}) (cfg.image_size), "
                         f"got shape {tuple(x.shape)}")


def check_params_like(params: dict, a: Any, name: str = "x") -> None:
    """Raise unless every parameter is an array of a's library, device and dtype (name names a in the message)."""
    for key, p in params.items():
        if not same_library(p, a) or p.dtype != a.dtype:
            raise ValueError(f"params[{key!r}] must be an array of {name}'s library, device and dtype ({a.dtype}), "
                             f"got {type(p).__name__} of dtype {p.dtype}")


def check_inputs(params: dict, x: Any, t: Any, y: Any = None, num_classes: int | None = None) -> None:
    """What a model's forward requires once x's own shape is checked: params of x's library, device and
    dtype; t an (N,) array of x's library and device; y None for an unconditional model (num_classes
    None), else None or (N,) labels of x's library and device."""
    check_params_like(params, x)
    N = x.shape[0]
    if not same_library(t, x) or t.ndim != 1 or t.shape[0] != N:
        raise ValueError(f"t must be an (N,) array of x's library and device with N = {N} (x's batch), "
                         f"got {type(t).__name__} of shape {tuple(t.shape)}")
    if num_classes is None and y is not None:
        raise ValueError("y must be None for an unconditional model (cfg.num_classes is None)")
    if y is not None and (not same_library(y, x) or y.ndim != 1 or y.shape[0] != N):
        raise ValueError(f"y must be an (N,) array of labels of x's library and device with N = {N} (x's batch), "
                         f"got {type(y).__name__} of shape {tuple(y.shape)}")


def check_generator(train: bool, dropout: float, generator: Any) -> None:
    """Raise unless a generator is given where training draws dropout masks (train and dropout > 0)."""
    if train and dropout > 0 and generator is None:
        raise ValueError(f"generator is required when train=True and cfg.dropout > 0 (got {dropout})")


def check_backward(name: str, d: Any, cache: Any, cache_type: type, forward: str, output: str) -> None:
    """Raise unless cache is a ``cache_type`` (from ``forward``) and the gradient d (argument ``name``)
    has the shape and dtype of the forward's output (called ``output`` in the message)."""
    if not isinstance(cache, cache_type):
        raise ValueError(f"cache must be the {cache_type.__name__} of {forward}(..., keep_cache=True), "
                         f"got {type(cache).__name__}")
    if tuple(d.shape) != cache.out_shape or d.dtype != cache.dtype:
        raise ValueError(f"{name} must have the {output} shape {cache.out_shape} and dtype {cache.dtype}, "
                         f"got shape {tuple(d.shape)} and dtype {d.dtype}")
