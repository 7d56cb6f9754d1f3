"""Training a normalizing flow (refdiff.models.flow) by maximum likelihood with AdamW, and measuring it: held-out
bits/dim (images: through uniform dequantisation; points: -log2 of the density per dimension) and samples.

One step: x, y <- batch (indices drawn by the generator); labels -> the null label with probability label_dropout
(a conditional flow then also models p(x) without a label); images: x' = dequantize(x, u), u ~ U[0, 1) fresh each
step (points: x' = x); log p(x' | y), cache = log_prob_forward(x', y); loss = -mean_n log p(x'_n | y_n) / D, in
bits/dim with the dequantisation's log2(levels / 2) for images; grads = log_prob_backward(-1 / (B D)); params <-
AdamW(clip(grads)). All randomness (initialisation, batches, label dropout, u) comes from one Generator(seed), so a
run is a function of its seed; ``max_seconds`` stops it early at a time budget (wall or CPU time:
``budget_clock``).

The flow is not in refdiff.models.registry (its forward returns z and a log-determinant, not a denoiser's output
or logits), so this module names refdiff.models.flow itself, as refdiff.vae_train does for the VAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdiff.backend import Generator, asarray, namespace, to_numpy
from refdiff.models import flow
from refdiff.models.flow import FlowConfig, MLPFlowConfig
from refdiff.optim import adamw_init
from refdiff.run_config import (LikelihoodTrainConfig, TrainedRun, batch_labels, run_steps, check_data,
                                clipped_adamw_step, init_on_backend, sample_labels)


@dataclass(frozen=True)
class FlowTrainConfig(LikelihoodTrainConfig):
    """Everything that decides a flow's training run besides its architecture and the data (the fields of
    refdiff.run_config.LikelihoodTrainConfig)."""


@dataclass
class TrainedFlow(TrainedRun):
    """A flow's parameters (on the run's backend and dtype), its configs (FlowConfig or MLPFlowConfig,
    FlowTrainConfig), its loss log (bits/dim per step) and info (train_seconds, steps_done)."""


def _levels(cfg: Any) -> int | None:
    """The data's levels for images (dequantised), None for points (a density)."""
    return cfg.levels if isinstance(cfg, FlowConfig) else None


def _model_input(cfg: Any, xb: Any, g: Generator) -> Any:
    """x' = dequantize(xb, u), u ~ U[0, 1) from g, for images; the points themselves otherwise."""
    if isinstance(cfg, FlowConfig):
        # high = 1 - 2^-24, float32's largest value below 1: a float64 draw just under 1 would round up to 1.0
        u = g.uniform(tuple(xb.shape), like=xb, high=1.0 - 2.0**-24)
        return flow.dequantize(xb, u, cfg.levels)
    return xb


def flow_step(trained: TrainedFlow, opt: dict, x: np.ndarray, y: np.ndarray | None, g: Generator,
              step: int) -> tuple[dict, float]:
    """One AdamW step on a fresh batch; updates trained.params in place, returns (opt, the loss in bits/dim)."""
    cfg, tc, like = trained.cfg, trained.train_cfg, trained.like
    B, D = tc.batch_size, cfg.dims
    idx = g.integers(0, x.shape[0], (B,))                                    # host (B,)
    labels = batch_labels(y, idx, cfg.num_classes, tc.label_dropout, g, like)  # (B,) or None
    xb = _model_input(cfg, asarray(x[idx], like=like, dtype=like.dtype), g)  # (B, C, S, S) or (B, D)
    terms, cache = flow.log_prob_forward(trained.params, cfg, xb, labels)
    loss = flow.bits_per_dim(float(to_numpy(namespace(xb).mean(terms.log_prob))), D, _levels(cfg))
    if not math.isfinite(loss):
        raise RuntimeError(f"flow loss is {loss} at step {step}: training stopped")
    dlogp = asarray(np.full(B, -1.0 / (B * D)), like=like, dtype=like.dtype)  # d(-mean log p / D) / d log p_n
    trained.params, opt = clipped_adamw_step(trained.params, flow.log_prob_backward(dlogp, cache), opt, step, tc)
    return opt, loss


def train_flow(train_cfg: FlowTrainConfig, cfg: FlowConfig | MLPFlowConfig, x: np.ndarray,
               y: np.ndarray | None = None, progress: bool = False) -> TrainedFlow:
    """Train a flow from scratch for train_cfg.steps AdamW steps (or until train_cfg.max_seconds); a function of
    train_cfg.seed when no time budget cuts it short.

    x: (N, C, S, S) host images on cfg.levels values in [-1, 1] (FlowConfig) or (N, D) points (MLPFlowConfig); y:
    (N,) integer labels in [0, cfg.num_classes) for a conditional flow, None for an unconditional one. Returns a
    TrainedFlow.
    """
    x, y = _check_data(train_cfg, cfg, x, y)
    g = Generator(train_cfg.seed)
    params = init_on_backend(train_cfg, flow.init_params, cfg, g)
    trained = TrainedFlow(params, cfg, train_cfg, [])
    opt = adamw_init(params)
    for step, bar in run_steps(train_cfg, "flow", progress, trained.info):
        opt, loss = flow_step(trained, opt, x, y, g, step)
        trained.losses.append(loss)
        bar.set_postfix(bpd=f"{loss:.3f}", refresh=False)
    return trained


def flow_bits_per_dim(trained: TrainedFlow, x: np.ndarray, y: np.ndarray | None = None, draws: int = 4,
                      seed: int = 0, batch_size: int = 500) -> dict[str, float]:
    """Held-out bits/dim under a trained flow: {"bits_per_dim": the mean, "draws": draws}. Images: the mean over
    ``draws`` dequantisations u ~ U[0, 1) (Generator(seed)) of the bound on -log2 P(x | y) / D (refdiff.models.flow.
    bits_per_dim with levels); points: -log2 p(x | y) / D of the density (exact; draws is unused then, reported 0).
    x, y: as train_flow's (y None: the null label for a conditional flow)."""
    flow.check_int("draws", draws, 1)
    x, y = _check_data(trained.train_cfg, trained.cfg, x, y, labels_optional=True)
    cfg, like = trained.cfg, trained.like
    g, levels = Generator(seed), _levels(cfg)
    values = []
    for _ in range(draws if levels is not None else 1):
        for start in range(0, x.shape[0], batch_size):
            xb = _model_input(cfg, asarray(x[start : start + batch_size], like=like, dtype=like.dtype), g)
            yb = None if y is None else asarray(y[start : start + batch_size].astype(np.int64), like=like)
            values.append(to_numpy(flow.log_prob_forward(trained.params, cfg, xb, yb)[0].log_prob))
    bpd = flow.bits_per_dim(float(np.mean(np.concatenate(values))), cfg.dims, levels)
    return {"bits_per_dim": float(bpd), "draws": int(draws) if levels is not None else 0}


def flow_samples(trained: TrainedFlow, n: int, labels: np.ndarray | None = None, seed: int = 0,
                 temperature: float = 1.0) -> np.ndarray:
    """n samples x = f^{-1}(z | labels), z ~ N(0, temperature^2 I) drawn by Generator(seed); images quantized back
    to the data's grid (refdiff.models.flow.quantize: the bin x' falls in). labels: (n,) integers in [0, K) for a
    conditional flow, or None (the null label). Returns (n, C, S, S) or (n, D) host float64."""
    flow.check_int("n", n, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    labels = sample_labels(labels, n, trained.cfg.num_classes, "flow", trained.like)
    z = temperature * Generator(seed).normal((n, trained.cfg.dims), like=trained.like)
    x = flow.flow_inverse(trained.params, trained.cfg, z, labels)
    if isinstance(trained.cfg, FlowConfig):
        x = flow.quantize(x, trained.cfg.levels)
    return to_numpy(x).astype(np.float64)


def _check_data(train_cfg: Any, cfg: Any, x: Any, y: Any,
                labels_optional: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) as host arrays, or a ValueError naming the argument: x (N, C, S, S) images in [-1, 1] or (N, D)
    points, finite; y labels of a conditional flow (optional with labels_optional), None for an unconditional one."""
    if not isinstance(train_cfg, FlowTrainConfig):
        raise ValueError(f"train_cfg must be a FlowTrainConfig, got {type(train_cfg).__name__}")
    if type(cfg) not in flow.CODERS:
        raise ValueError(f"cfg must be a FlowConfig or an MLPFlowConfig, got {type(cfg).__name__}")
    x_range = f"on cfg.levels = {cfg.levels} values" if isinstance(cfg, FlowConfig) else ""
    return check_data(cfg, x, y, isinstance(cfg, FlowConfig), x_range, "flow", labels_optional)
