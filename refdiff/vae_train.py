"""Training a VAE (refdiff.models.vae) by maximising its ELBO with AdamW, and measuring it: bits/dim from the ELBO
and from the importance-weighted bound on held-out data, and samples from the prior.

One step: x, y <- batch (indices drawn by the generator); labels -> the null label with probability
label_dropout (a conditional VAE then also decodes without a label); eps ~ N(0, I); ELBO terms, cache =
elbo_forward(x, eps, y); loss = -mean_n ELBO_n / D (nats per dimension); grads = elbo_backward(-1 / (B D));
params <- AdamW(clip(grads)). All randomness (initialisation, batches, label dropout, eps) comes from one
Generator(seed), so a run is a function of its seed; ``max_seconds`` stops it early at a time budget (wall or CPU
time: ``budget_clock``).

The VAE is not in refdiff.models.registry (its forward takes the draws eps, not a timestep, and returns the ELBO,
not a denoiser's output or logits), so this module names refdiff.models.vae itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdiff.backend import Generator, asarray, namespace, to_numpy
from refdiff.models import vae
from refdiff.models.vae import MLPVAEConfig, VAEConfig
from refdiff.optim import adamw_init
from refdiff.run_config import (LikelihoodTrainConfig, TrainedRun, batch_labels, run_steps, check_data,
                                clipped_adamw_step, init_on_backend, sample_labels)


@dataclass(frozen=True)
class VAETrainConfig(LikelihoodTrainConfig):
    """Everything that decides a VAE's training run besides its architecture and the data (the fields of
    refdiff.run_config.LikelihoodTrainConfig)."""

    lr: float = 2e-3


@dataclass
class TrainedVAE(TrainedRun):
    """A VAE's parameters (on the run's backend and dtype), its configs (VAEConfig or MLPVAEConfig,
    VAETrainConfig), its loss log (bits/dim of -ELBO per step) and info (train_seconds, steps_done)."""


def vae_step(trained: TrainedVAE, opt: dict, x: np.ndarray, y: np.ndarray | None, g: Generator,
             step: int) -> tuple[dict, float]:
    """One AdamW step on a fresh batch; updates trained.params in place, returns (opt, -ELBO in bits/dim)."""
    cfg, tc, like = trained.cfg, trained.train_cfg, trained.like
    B, D = tc.batch_size, cfg.dims
    idx = g.integers(0, x.shape[0], (B,))                                   # host (B,)
    xb = asarray(x[idx], like=like, dtype=like.dtype)                        # (B, C, S, S) or (B, D)
    labels = batch_labels(y, idx, cfg.num_classes, tc.label_dropout, g, like)  # (B,) or None
    eps = g.normal((B, cfg.latent_dim), like=xb)                             # the reparameterisation's draws
    terms, cache = vae.elbo_forward(trained.params, cfg, xb, eps, labels)
    loss = vae.bits_per_dim(float(to_numpy(namespace(xb).mean(terms.elbo))), D)
    if not math.isfinite(loss):
        raise RuntimeError(f"VAE loss is {loss} at step {step}: training stopped")
    delbo = asarray(np.full(B, -1.0 / (B * D)), like=like, dtype=like.dtype)  # d(-mean ELBO / D) / d ELBO_n
    trained.params, opt = clipped_adamw_step(trained.params, vae.elbo_backward(delbo, cache), opt, step, tc)
    return opt, loss


def train_vae(train_cfg: VAETrainConfig, cfg: VAEConfig | MLPVAEConfig, x: np.ndarray, y: np.ndarray | None = None,
              progress: bool = False) -> TrainedVAE:
    """Train a VAE from scratch for train_cfg.steps AdamW steps (or until train_cfg.max_seconds); a function of
    train_cfg.seed when no time budget cuts it short.

    x: (N, C, S, S) host images on cfg.levels values in [-1, 1] (VAEConfig) or (N, D) points (MLPVAEConfig); y: (N,)
    integer labels in [0, cfg.num_classes) for a conditional VAE, None for an unconditional one. Returns a
    TrainedVAE.
    """
    x, y = _check_data(train_cfg, cfg, x, y)
    g = Generator(train_cfg.seed)
    params = init_on_backend(train_cfg, vae.init_params, cfg, g)
    trained = TrainedVAE(params, cfg, train_cfg, [])
    opt = adamw_init(params)
    for step, bar in run_steps(train_cfg, "vae", progress, trained.info):
        opt, loss = vae_step(trained, opt, x, y, g, step)
        trained.losses.append(loss)
        bar.set_postfix(bpd=f"{loss:.3f}", refresh=False)
    return trained


def vae_bits_per_dim(trained: TrainedVAE, x: np.ndarray, y: np.ndarray | None = None, k: int = 100,
                     seed: int = 0, batch_size: int = 200) -> dict[str, float]:
    """Bits/dim of held-out data under a trained VAE: {"elbo": the mean ELBO's, "iwae": the mean IWAE bound's
    with k samples, "k": k}. Both are upper bounds on -log2 P(x | y) / D, the IWAE one the tighter (for points,
    on -log2 of a density, which may be negative).

    x, y: as train_vae's (y None: the null label for a conditional VAE). The draws come from Generator(seed).
    """
    vae.check_int("k", k, 1)
    x, y = _check_data(trained.train_cfg, trained.cfg, x, y, labels_optional=True)
    g, like, cfg = Generator(seed), trained.like, trained.cfg
    elbo, iwae = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = asarray(x[start : start + batch_size], like=like, dtype=like.dtype)  # (n, ...)
        yb = None if y is None else asarray(y[start : start + batch_size].astype(np.int64), like=like)
        n = xb.shape[0]
        elbo.append(to_numpy(vae.elbo_forward(trained.params, cfg, xb, g.normal((n, cfg.latent_dim), like=xb),
                                              yb)[0].elbo))
        iwae.append(to_numpy(vae.iwae_bound(trained.params, cfg, xb, g.normal((k, n, cfg.latent_dim), like=xb), yb)))
    D = cfg.dims
    return {"elbo": float(vae.bits_per_dim(np.mean(np.concatenate(elbo)), D)),
            "iwae": float(vae.bits_per_dim(np.mean(np.concatenate(iwae)), D)), "k": int(k)}


def vae_samples(trained: TrainedVAE, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """n samples from the prior, z ~ N(0, I) drawn by Generator(seed), shown as the decoder's mean, images clipped
    to [-1, 1] (the usual VAE picture: a draw from p(x | z) adds independent noise on top). labels: (n,)
    integers in [0, K) for a conditional VAE, or None (the null label). Returns (n, C, S, S) or (n, D) host
    float64."""
    vae.check_int("n", n, 1)
    labels = sample_labels(labels, n, trained.cfg.num_classes, "VAE", trained.like)
    z = Generator(seed).normal((n, trained.cfg.latent_dim), like=trained.like)
    mean = to_numpy(vae.vae_model(trained.params, trained.cfg)(z, labels)).astype(np.float64)
    return np.clip(mean, -1.0, 1.0) if isinstance(trained.cfg, VAEConfig) else mean


def _check_data(train_cfg: Any, cfg: Any, x: Any, y: Any,
                labels_optional: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) as host arrays, or a ValueError naming the argument: x (N, C, S, S) images in [-1, 1] or (N, D)
    points, finite; y labels of a conditional VAE (optional with labels_optional), None for an unconditional one."""
    if not isinstance(train_cfg, VAETrainConfig):
        raise ValueError(f"train_cfg must be a VAETrainConfig, got {type(train_cfg).__name__}")
    if type(cfg) not in vae.CODERS:
        raise ValueError(f"cfg must be a VAEConfig or an MLPVAEConfig, got {type(cfg).__name__}")
    return check_data(cfg, x, y, isinstance(cfg, VAEConfig), "the discretized decoder's range", "VAE", labels_optional)
