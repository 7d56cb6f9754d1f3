"""Training a GAN (refdiff.models.gan): alternating AdamW steps of the discriminator and the generator, with the
loss of each kept per step, and samples from the trained generator.

One step (Goodfellow et al. 2014, Algorithm 1, with k = d_steps): for each of d_steps discriminator updates,
x, y <- batch (indices drawn by the generator), z ~ N(0, I); L_D, cache = discriminator_objective(x, z, y);
disc params <- AdamW(grads of L_D); then z ~ N(0, I) afresh, with the last batch's labels;
L_G, cache = generator_objective(z, y); gen params <- AdamW(grads of L_G). Each player has its own AdamW state
over its own keys, with DCGAN's betas (0.5, 0.999) (Radford et al. 2016, Sec. 4: beta1 = 0.9 oscillated).
All randomness (initialisation, batches, z) comes from one Generator(seed), so a run is a function of its seed;
``max_seconds`` stops it early at a time budget (wall or CPU time:
``budget_clock``).

The GAN is not in refdiff.models.registry (its forward is two networks and two objectives, not a denoiser's or a
classifier's), so this module names refdiff.models.gan itself.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdiff.backend import Generator, asarray, to_numpy
from refdiff.models import gan
from refdiff.models.common import check_int
from refdiff.models.gan import GANConfig, MLPGANConfig
from refdiff.optim import adamw_init, adamw_step
from refdiff.run_config import (run_steps, check_count, check_data, check_positive, check_probability, check_run,
                                init_on_backend)


@dataclass(frozen=True)
class GANTrainConfig:
    """Everything that decides a GAN's training run besides its architecture and the data."""

    steps: int = 3000
    batch_size: int = 64
    lr_g: float = 2e-4                  # DCGAN's learning rate for both players
    lr_d: float = 2e-4
    beta1: float = 0.5                  # DCGAN's AdamW betas
    beta2: float = 0.999
    loss: str = "non_saturating"        # "non_saturating" | "hinge" (refdiff.models.gan.LOSSES)
    d_steps: int = 1                    # discriminator updates per generator update (Algorithm 1's k)
    max_seconds: float | None = None    # stop after this much time ...
    budget_clock: str = "wall"          # ... on this clock of refdiff.run_config.CLOCKS: "wall" or "cpu"
    seed: int = 0
    backend: str = "numpy"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("steps", "batch_size", "d_steps"):
            check_count(name, getattr(self, name))
        for name in ("lr_g", "lr_d"):
            check_positive(name, getattr(self, name))
        for name in ("beta1", "beta2"):
            check_probability(name, getattr(self, name), "a number")
        if self.loss not in gan.LOSSES:
            raise ValueError(f"loss must be one of {', '.join(gan.LOSSES)}, got {self.loss!r}")
        check_run(self)


@dataclass
class TrainedGAN:
    """A GAN's parameters (on the run's backend and dtype), its configs, the loss curves (the discriminator's
    last L_D and the generator's L_G of every step) and info (train_seconds, steps_done)."""

    params: dict
    cfg: GANConfig | MLPGANConfig
    train_cfg: GANTrainConfig
    d_losses: list[float] = dataclasses.field(default_factory=list)
    g_losses: list[float] = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def like(self) -> Any:
        """An array of the parameters' library, device and dtype (to move inputs there)."""
        return next(iter(self.params.values()))


def _update(params: dict, grads: dict, opt: dict, lr: float, tc: GANTrainConfig) -> dict:
    """One AdamW step of the keys of ``grads`` (one player's); the other player's keys are left as they are."""
    own, opt = adamw_step({k: params[k] for k in grads}, grads, opt, lr, tc.beta1, tc.beta2)
    params.update(own)
    return opt


def gan_step(trained: TrainedGAN, opts: tuple[dict, dict], x: np.ndarray, y: np.ndarray | None, g: Generator,
             step: int) -> tuple[tuple[dict, dict], float, float]:
    """d_steps discriminator updates, then one generator update; updates trained.params in place.
    opts: (the discriminator's AdamW state, the generator's). Returns (opts, L_D of the last update, L_G)."""
    cfg, tc, like = trained.cfg, trained.train_cfg, trained.like
    opt_d, opt_g = opts
    B = tc.batch_size
    for _ in range(tc.d_steps):
        idx = g.integers(0, x.shape[0], (B,))                                    # host (B,)
        xb = asarray(x[idx], like=like, dtype=like.dtype)                         # (B, C, S, S) or (B, D)
        yb = None if y is None else asarray(y[idx].astype(np.int64), like=like)  # (B,)
        d_value, d_cache = gan.discriminator_objective(trained.params, cfg, xb, g.normal((B, cfg.latent_dim),
                                                                                         like=xb), yb, tc.loss)
        opt_d = _update(trained.params, gan.discriminator_objective_backward(d_cache, cfg), opt_d, tc.lr_d, tc)
    g_value, g_cache = gan.generator_objective(trained.params, cfg, g.normal((B, cfg.latent_dim), like=like), yb,
                                               tc.loss)
    opt_g = _update(trained.params, gan.generator_objective_backward(g_cache, cfg), opt_g, tc.lr_g, tc)
    d_loss, g_loss = float(to_numpy(d_value)), float(to_numpy(g_value))
    if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
        raise RuntimeError(f"GAN losses are L_D = {d_loss}, L_G = {g_loss} at step {step}: training stopped")
    return (opt_d, opt_g), d_loss, g_loss


def train_gan(train_cfg: GANTrainConfig, cfg: GANConfig | MLPGANConfig, x: np.ndarray, y: np.ndarray | None = None,
              progress: bool = False) -> TrainedGAN:
    """Train a GAN from scratch for train_cfg.steps alternating steps (or until train_cfg.max_seconds); a function
    of train_cfg.seed when no time budget cuts it short.

    x: (N, C, S, S) host images in [-1, 1] (GANConfig) or (N, D) points (MLPGANConfig); y: (N,) integer labels in
    [0, cfg.num_classes) for a class-conditional GAN, None for an unconditional one. Returns a TrainedGAN.
    """
    x, y = _check_data(train_cfg, cfg, x, y)
    g = Generator(train_cfg.seed)
    params = init_on_backend(train_cfg, gan.init_params, cfg, g)
    trained = TrainedGAN(params, cfg, train_cfg)
    opts = tuple(adamw_init({k: params[k] for k in keys})
                 for keys in (gan.discriminator_keys(cfg), gan.generator_keys(cfg)))
    for step, bar in run_steps(train_cfg, "gan", progress, trained.info):
        opts, d_loss, g_loss = gan_step(trained, opts, x, y, g, step)
        trained.d_losses.append(d_loss)
        trained.g_losses.append(g_loss)
        bar.set_postfix(d=f"{d_loss:.3f}", g=f"{g_loss:.3f}", refresh=False)
    return trained


def gan_samples(trained: TrainedGAN, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """n samples G(z, y), z ~ N(0, I) drawn by Generator(seed). labels: (n,) integers in [0, K) for a conditional
    GAN (required there), None for an unconditional one. Returns (n, C, S, S) images in [-1, 1] or (n, D) points,
    host float64."""
    check_int("n", n, 1)
    K = trained.cfg.num_classes
    if (K is None) != (labels is None):
        raise ValueError(f"labels must be ({n},) integers in [0, num_classes) for a conditional GAN and None for an "
                         f"unconditional one (num_classes = {K}), got {'None' if labels is None else 'labels'}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu" or np.any((labels < 0) | (labels >= K)):
            raise ValueError(f"labels must be ({n},) integers in [0, num_classes) (num_classes = {K}), got shape "
                             f"{labels.shape}, dtype {labels.dtype}")
        labels = asarray(labels.astype(np.int64), like=trained.like)
    z = Generator(seed).normal((n, trained.cfg.latent_dim), like=trained.like)
    return to_numpy(gan.gan_model(trained.params, trained.cfg)(z, labels)).astype(np.float64)


def _check_data(train_cfg: Any, cfg: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) as host arrays, or a ValueError naming the argument: x (N, C, S, S) images in [-1, 1] or (N, D)
    points, finite, N >= 1; y the labels of a conditional GAN, None for an unconditional one."""
    if not isinstance(train_cfg, GANTrainConfig):
        raise ValueError(f"train_cfg must be a GANTrainConfig, got {type(train_cfg).__name__}")
    if type(cfg) not in gan.FORMS:
        raise ValueError(f"cfg must be a GANConfig or an MLPGANConfig, got {type(cfg).__name__}")
    return check_data(cfg, x, y, isinstance(cfg, GANConfig), "the generator's tanh range", "GAN")
