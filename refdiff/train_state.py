"""The state of a training run and its checkpoint: what a checkpoint holds (TrainState), a fresh state,
saving a state and restoring it, and the check that a checkpoint means the same in the run that resumes it.

Every part of the state goes into the checkpoint, the generator's state and the importance sampler's
loss history included, so that a resumed run repeats an uninterrupted one bit for bit on NumPy
(docs/design.md rule 9). ``cfg`` is the run's refdiff.train.TrainConfig, which sits a layer above this
module (docs/design.md's map): the functions here read its fields and do not import it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refdiff.backend import Generator, asarray, get_backend, to_numpy
from refdiff.checkpoint import save_checkpoint
from refdiff.models import registry
from refdiff.optim import adamw_init
from refdiff.timesteps import LossSecondMomentSampler

RESUME_FIXED = ("T", "schedule", "prediction", "loss", "weighting", "timesteps")  # what a checkpoint's state means


@dataclass
class TrainState:
    """What a checkpoint holds: parameters, EMA, optimizer state, step, generator, loss log, t-sampler."""

    params: dict
    ema: dict
    opt: dict
    step: int
    generator: Generator
    losses: list[float]
    sampler: LossSecondMomentSampler | None = None  # importance sampling of t; None for uniform t


def _to_device(d: dict, like: Any) -> dict:
    """A dict of host arrays moved to like's library and device (dtypes kept)."""
    return {k: asarray(v, like=like) for k, v in d.items()}


def _to_host(d: dict) -> dict:
    return {k: to_numpy(v) for k, v in d.items()}


def _new_sampler(cfg: Any) -> LossSecondMomentSampler | None:
    """improved DDPM's sampler (10 losses per t, uniform_prob 0.001) for timesteps="importance", else None."""
    return LossSecondMomentSampler(cfg.T) if cfg.timesteps == "importance" else None


def init_state(cfg: Any, model_cfg: Any, init: dict | None = None) -> TrainState:
    """Fresh parameters (from the run's generator), or the host arrays ``init`` to fine-tune (of
    param_shapes(model_cfg), cast to the run's dtype; the generator is not drawn from), EMA = params,
    zeroed AdamW state, step 0."""
    family = registry.family(model_cfg, "denoiser")
    generator = Generator(cfg.seed)
    backend = get_backend(cfg.backend)
    like = backend.asarray(np.zeros(1), dtype=backend.dtype(cfg.dtype))
    if init is None:
        init = family.init_params(model_cfg, generator, dtype=np.dtype(cfg.dtype))
    shapes = family.param_shapes(model_cfg)
    bad = [k for k in shapes if k not in init or np.shape(init[k]) != tuple(shapes[k])] + \
        [k for k in init if k not in shapes]
    if bad:
        raise ValueError(f"init must hold the model's parameters, the arrays of param_shapes(model_cfg); "
                         f"{len(bad)} keys are missing, extra or of another shape: {', '.join(bad[:3])}")
    params = _to_device({k: np.asarray(init[k], dtype=cfg.dtype) for k in shapes}, like)
    ema = {k: v for k, v in params.items()}
    return TrainState(params, ema, adamw_init(params), 0, generator, [], _new_sampler(cfg))


def save_state(path: Path, cfg: Any, model_cfg: Any, state: TrainState, data_shape: tuple,
               ranks: int = 1, data_bound: float | None = None, data_source: dict | None = None) -> Path:
    """Write the run's checkpoint atomically (refdiff.checkpoint); data_shape is one sample's shape.

    ranks (the processes that trained it) is recorded for information: any number of ranks resumes it.
    data_bound, max |x| over the training data, is where samplers clip predicted points (refdiff.generate).
    data_source, how the caller named the data (refdiff train: {"data": ..., "image_size": ...}), is
    recorded for a resume that does not name it again.
    """
    config = {"train": dataclasses.asdict(cfg), "data_shape": list(data_shape), "ranks": ranks,
              "data_bound": data_bound, "data_source": data_source,
              "model": registry.config_to_dict(model_cfg)}
    groups = {"params": _to_host(state.params), "ema": _to_host(state.ema), "opt": _to_host(state.opt),
              "log": {"loss": np.asarray(state.losses, dtype=np.float64)}}
    if state.sampler is not None:
        groups["sampler"] = state.sampler.get_state()
    return save_checkpoint(path, config, state.step, state.generator.get_state(), groups)


def resume_state(ckpt: dict, cfg: Any) -> TrainState:
    """The TrainState of a checkpoint read by refdiff.checkpoint.load_checkpoint, on cfg's backend and dtype.

    A checkpoint without a sampler history starts importance sampling from an empty one.
    """
    backend = get_backend(cfg.backend)
    like = backend.asarray(np.zeros(1), dtype=backend.dtype(cfg.dtype))
    generator = Generator(cfg.seed)
    generator.set_state(ckpt["rng"])
    sampler = _new_sampler(cfg)
    if sampler is not None and ckpt["sampler"]:
        sampler.set_state(ckpt["sampler"])
    opt = _to_device(ckpt["opt"], like)
    return TrainState(_to_device(ckpt["params"], like), _to_device(ckpt["ema"], like), opt, ckpt["step"],
                      generator, list(ckpt["log"].get("loss", np.zeros(0))), sampler)


def check_resume(config: dict, cfg: Any, model_cfg: Any, data_shape: tuple) -> None:
    """Raise a ValueError listing every setting that would make a checkpoint's state mean something else
    in this run: the model config, one sample's shape, and the TrainConfig fields of RESUME_FIXED.
    config: the checkpoint's (refdiff.checkpoint.load_checkpoint(path)["config"]). Other fields (steps,
    lr, batch size, EMA decay, ...) may change between runs."""
    diffs = [f"{k} {config['train'].get(k)!r} -> {getattr(cfg, k)!r}" for k in RESUME_FIXED
             if config["train"].get(k) != getattr(cfg, k)]
    model = json.loads(json.dumps(registry.config_to_dict(model_cfg)))  # as the checkpoint holds it: lists
    diffs += [f"model.{k} {config['model'].get(k)!r} -> {v!r}" for k, v in model.items() if config["model"].get(k) != v]
    if list(config["data_shape"]) != list(data_shape):
        diffs.append(f"sample shape {tuple(config['data_shape'])} -> {tuple(data_shape)}")
    if diffs:
        raise ValueError("cannot resume a checkpoint trained with other settings (checkpoint -> this run): "
                         + "; ".join(diffs))
