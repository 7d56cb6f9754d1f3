"""The fields every training run's config shares (steps, batch size, learning-rate schedule, clipping, time budget,
seed, backend, dtype) and their checks, for the trainers' frozen config dataclasses (flow, VAE, GAN, CLIP,
classifier). Each config keeps its own fields and defaults; its __post_init__ calls these checks, so the messages
are the same for every trainer."""

from __future__ import annotations

import math
from typing import Any

from refdiff.backend import get_backend
from refdiff.optim import DECAYS


def check_count(name: str, value: Any, low: int = 1) -> None:
    """Raise unless value is an integer (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """Raise unless value is a positive finite number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_probability(name: str, value: Any, noun: str = "a probability") -> None:
    """Raise unless value is a number in [0, 1) (a dropout rate, an Adam beta)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be {noun} in [0, 1), got {value!r}")


def check_lr_schedule(cfg: Any) -> None:
    """cfg.warmup_steps in [0, cfg.steps), cfg.lr and cfg.grad_clip positive, cfg.lr_decay one of optim.DECAYS."""
    w = cfg.warmup_steps
    if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < cfg.steps:
        raise ValueError(f"warmup_steps must be an integer in [0, steps) = [0, {cfg.steps}), got {w!r}")
    for name in ("lr", "grad_clip"):
        check_positive(name, getattr(cfg, name))
    if cfg.lr_decay not in DECAYS:
        raise ValueError(f"lr_decay must be one of {', '.join(DECAYS)}, got {cfg.lr_decay!r}")


def check_weight_decay(value: Any) -> None:
    """AdamW's decoupled decay: a finite number >= 0."""
    if isinstance(value, bool) or not 0 <= value < math.inf:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {value!r}")


def check_run(cfg: Any) -> None:
    """cfg.max_seconds None or positive (where the config has one), cfg.dtype float32 or float64, cfg.backend known."""
    if getattr(cfg, "max_seconds", None) is not None:
        check_positive("max_seconds", cfg.max_seconds)
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {cfg.dtype!r}")
    get_backend(cfg.backend)  # raises, naming the backend, for an unknown one
