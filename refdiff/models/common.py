"""Argument checks every model family shares (U-Net, MLP): one place for each message."""

from __future__ import annotations

from typing import Any

import numpy as np

from refdiff.backend import Generator, device, namespace


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
    """'an MLPConfig', 'a UNetConfig': the article of an initialism follows its first letter's name."""
    name = cfg_type.__name__
    return f"{'an' if name[0] in 'AEFHILMNORSX' else 'a'} {name}"


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


def check_params(params: Any, cfg: Any, cfg_type: type, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise unless params is a dict with exactly the keys and shapes of ``shapes`` (from cfg)."""
    if not isinstance(cfg, cfg_type):
        raise ValueError(f"cfg must be {_a(cfg_type)}, got {type(cfg).__name__}")
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of arrays, got {type(params).__name__}")
    missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
    if missing or extra:  # the first few of each: a wrong config misses dozens
        raise ValueError(f"params must have the keys of this {cfg_type.__name__}: missing {missing[:5]} "
                         f"({len(missing)} in all), unexpected {extra[:5]} ({len(extra)} in all)")
    for key, shape in shapes.items():
        if tuple(params[key].shape) != shape:
            raise ValueError(f"params[{key!r}] must have shape {shape}, got {tuple(params[key].shape)}")
