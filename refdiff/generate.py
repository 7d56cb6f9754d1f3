"""From a checkpoint to samples: rebuild the model, pick a sampler, apply guidance, return host arrays.

This is what ``refdiff sample`` and ``refdiff demo`` run; library users can call the same functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray, get_backend, to_numpy
from refdiff.checkpoint import load_checkpoint
from refdiff.samplers import (classifier_free_guidance, ddim_loop, ddpm_loop, dpmpp_2m_loop, euler_loop, final,
                              heun_loop, karras_grid, to_sigma_scale)

SAMPLERS = ("ddim", "ddpm", "euler", "heun", "dpmpp_2m")


def model_config_from_dict(model: dict) -> Any:
    """The UNetConfig or MLPConfig a checkpoint's JSON describes (JSON lists back to tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k != "kind"}
    if model["kind"] == "UNetConfig":
        from refdiff.models.unet import UNetConfig

        return UNetConfig(**fields)
    if model["kind"] == "MLPConfig":
        from refdiff.models.mlp import MLPConfig

        return MLPConfig(**fields)
    raise ValueError(f"checkpoint model kind must be UNetConfig or MLPConfig, got {model['kind']!r}")


def model_callable(params: dict, model_cfg: Any) -> Callable:
    """The sampler protocol model(xt, t, y) for a U-Net or an MLP, evaluation mode."""
    if type(model_cfg).__name__ == "UNetConfig":
        from refdiff.models.unet import unet_model

        return unet_model(params, model_cfg)
    from refdiff.models.mlp import mlp_model

    return mlp_model(params, model_cfg)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained model ready to sample: the callable, its configs, and its training schedule."""

    model: Callable
    model_cfg: Any
    train_cfg: dict
    data_shape: tuple[int, ...]  # one sample's shape, (C, H, W) or (D,)
    schedule: schedules.Schedule
    like: Any  # a 1-element array of the backend and dtype the parameters live on


def load_model(path: str, use_ema: bool = True, backend: str = "numpy", dtype: str = "float32") -> LoadedModel:
    """The model of a checkpoint (EMA weights by default) on ``backend`` in ``dtype``."""
    ckpt = load_checkpoint(path)
    b = get_backend(backend)
    like = b.asarray(np.zeros(1), dtype=b.dtype(dtype))
    weights = ckpt["ema"] if use_ema else ckpt["params"]
    params = {k: asarray(v.astype(dtype), like=like) for k, v in weights.items()}
    model_cfg = model_config_from_dict(ckpt["config"]["model"])
    train_cfg = ckpt["config"]["train"]
    schedule = schedules.by_name(train_cfg["schedule"], train_cfg["T"])
    data_shape = tuple(ckpt["config"]["data_shape"])
    return LoadedModel(model_callable(params, model_cfg), model_cfg, train_cfg, data_shape, schedule, like)


def generate(loaded: LoadedModel, shape: tuple[int, ...], labels: np.ndarray | None = None, sampler: str = "ddim",
             steps: int = 50, eta: float = 0.0, guidance: float = 1.0, seed: int = 0, clip_x0: float | None = 1.0):
    """Samples of ``shape`` (N, ...) from a loaded model, as a host float array, with labels (N,) or None.

    guidance: the classifier-free guidance scale s (1: the conditional model; needs num_classes).
    DDIM and DDPM run on the schedule respaced to ``steps`` (trailing spacing); the sigma-space samplers
    on a Karras grid of ``steps`` levels. clip_x0 bounds the predicted x0 (images live in [-1, 1]).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    model, num_classes = loaded.model, getattr(loaded.model_cfg, "num_classes", None)
    y = None if labels is None else asarray(np.asarray(labels, dtype=np.int64), like=loaded.like)
    if guidance != 1.0:
        if num_classes is None or y is None:
            raise ValueError(f"guidance {guidance} needs a class-conditional model and labels")
        model = classifier_free_guidance(model, guidance, null_label=num_classes)
    generator = Generator(seed)
    x = generator.normal(shape, like=loaded.like)
    prediction = loaded.train_cfg["prediction"]
    if sampler in ("ddim", "ddpm"):
        schedule = schedules.respace(loaded.schedule, schedules.timesteps(loaded.schedule.T, steps, "trailing"))
        if sampler == "ddim":
            loop = ddim_loop(model, schedule, x, y, eta=eta, generator=generator, prediction=prediction, clip_x0=clip_x0)
        else:
            loop = ddpm_loop(model, schedule, x, generator, y, prediction=prediction, clip_x0=clip_x0)
    else:
        sigmas = karras_grid(loaded.schedule, steps)
        loop_fn = {"euler": euler_loop, "heun": heun_loop, "dpmpp_2m": dpmpp_2m_loop}[sampler]
        loop = loop_fn(model, loaded.schedule, to_sigma_scale(x, float(sigmas[0])), sigmas, y, prediction=prediction,
                       clip_x0=clip_x0)
    return to_numpy(final(loop))
