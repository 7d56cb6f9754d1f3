"""Training a classifier p_phi(y | x_t, t) (refdiff.models.classifier) with AdamW, and using it.

Two jobs, one loop (``train_classifier``):

  noisy=True   the noisy classifier of classifier guidance (Dhariwal & Nichol 2021, Sec. 4): every
               batch is noised, x_t = q_sample(x0, t, eps) with t uniform on [0, T), and the
               classifier reads t; ``guidance_gradient`` turns it into the grad_x log p_phi(y | x_t)
               that refdiff.samplers.guidance.classifier_guidance takes;
  noisy=False  an ordinary image classifier, trained on clean images at t = 0 (refdiff.digits_eval's digit
               classifier, whose pooled features give the Frechet distance).

One step: x0, y <- batch (indices drawn by the generator); [t, eps <- draws; x_t = q_sample(x0, t, eps)];
logits, cache = forward(x_t, t, train=True); loss, dlogits = cross_entropy(logits, y);
grads = backward(dlogits); params <- AdamW(clip(grads)), with the forward/backward pair of the config's
classifier family (refdiff.models.registry; refdiff.models.classifier's) in batch parts on the host
threads (refdiff.parallel). All randomness (initialisation,
batches, t, eps, dropout) comes from one Generator(seed), so a run is a function of its seed.
``save_classifier`` / ``load_classifier`` keep a trained classifier in a refdiff checkpoint (.npz).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray, get_backend, to_numpy
from refdiff.checkpoint import interpreting, load_checkpoint, save_checkpoint
from refdiff.diffusion import q_sample
from refdiff.layers.cross_entropy import cross_entropy
from refdiff.models import registry
from refdiff.models.classifier import ClassifierConfig
from refdiff.optim import adamw_init
from refdiff.run_config import (TrainedRun, check_count, check_lr_schedule, check_run, check_weight_decay,
                                clipped_adamw_step, init_on_backend, run_steps)


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Everything that decides a classifier's training run besides its architecture and the data."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 0
    lr_decay: str = "cosine"         # "constant" | "cosine" | "linear" after the warm-up (ADM anneals linearly)
    weight_decay: float = 0.05       # AdamW's decoupled decay (ADM's classifier flags use 0.05)
    grad_clip: float = 1.0           # max global gradient norm
    noisy: bool = True               # train on x_t at uniform t (guidance) or on clean x0 at t = 0
    schedule: str = "cosine"         # the diffusion's schedule (a name in refdiff.schedules.SCHEDULES)
    T: int = 1000
    seed: int = 0
    backend: str = "numpy"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("steps", "batch_size", "T"):
            check_count(name, getattr(self, name))
        check_lr_schedule(self)
        check_weight_decay(self.weight_decay)
        if not isinstance(self.noisy, bool):
            raise ValueError(f"noisy must be a bool, got {self.noisy!r}")
        if self.schedule not in schedules.SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(sorted(schedules.SCHEDULES))}, got {self.schedule!r}")
        check_run(self)


@dataclass
class TrainedClassifier(TrainedRun):
    """A classifier's parameters (on the run's backend and dtype), its configs (ClassifierConfig,
    ClassifierTrainConfig), its loss log and info (e.g. test_accuracy, train_seconds)."""


def classifier_step(trained: TrainedClassifier, opt: dict, schedule: schedules.Schedule, x: np.ndarray,
                    y: np.ndarray, g: Generator, step: int) -> tuple[dict, float]:
    """One AdamW step on a fresh batch; updates trained.params in place, returns (opt, loss)."""
    cfg, params = trained.train_cfg, trained.params
    like = trained.like
    idx = g.integers(0, x.shape[0], (cfg.batch_size,))                      # host (B,)
    x0 = asarray(x[idx], like=like, dtype=like.dtype)                        # (B, C, H, W)
    labels = asarray(y[idx].astype(np.int64), like=like)                     # (B,)
    if cfg.noisy:
        t = g.integers(0, schedule.T, (cfg.batch_size,), like=like)
        xt = q_sample(schedule, x0, t, g.normal(tuple(x0.shape), like=x0))    # Ho et al. 2020, eq. 4
    else:
        t, xt = asarray(np.zeros(cfg.batch_size, dtype=np.int64), like=like), x0  # t = 0: clean images
    forward, backward = registry.family(trained.cfg, "classifier").in_parts()
    logits, cache = forward(params, trained.cfg, xt, t, train=True, generator=g)
    loss, dlogits = cross_entropy(logits, labels)
    loss = float(to_numpy(loss))
    if not math.isfinite(loss):
        raise RuntimeError(f"classifier loss is {loss} at step {step}: training stopped")
    trained.params, opt = clipped_adamw_step(params, backward(dlogits, cache), opt, step, cfg)
    return opt, loss


def train_classifier(train_cfg: ClassifierTrainConfig, cfg: ClassifierConfig, x: np.ndarray, y: np.ndarray,
                     progress: bool = False) -> TrainedClassifier:
    """Train a classifier from scratch for train_cfg.steps AdamW steps; a function of train_cfg.seed.

    x: (N, C, H, W) host images in [-1, 1]; y: (N,) integer labels in [0, cfg.num_classes).
    Returns a TrainedClassifier, its info["train_seconds"] the wall time of the loop.
    """
    x, y = _check_data(train_cfg, cfg, x, y)
    g = Generator(train_cfg.seed)
    params = init_on_backend(train_cfg, registry.family(cfg, "classifier").init_params, cfg, g)
    trained = TrainedClassifier(params, cfg, train_cfg, [])
    opt, schedule = adamw_init(params), schedules.by_name(train_cfg.schedule, train_cfg.T)
    for step, bar in run_steps(train_cfg, "classifier", progress, trained.info):
        opt, loss = classifier_step(trained, opt, schedule, x, y, g, step)
        trained.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return trained


def _check_data(train_cfg: Any, cfg: Any, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(train_cfg, ClassifierTrainConfig):
        raise ValueError(f"train_cfg must be a ClassifierTrainConfig, got {type(train_cfg).__name__}")
    registry.family(cfg, "classifier", argument="cfg")  # raises, naming the classifier configs
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or x.shape[0] < 1 or x.shape[1] != cfg.in_channels or x.dtype.kind != "f":
        raise ValueError(f"x must be a floating (N, {cfg.in_channels}, H, W) host array, got shape {x.shape}, "
                         f"dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {int(np.sum(~np.isfinite(x)))} NaN or inf values")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"y must be an ({x.shape[0]},) integer array of labels, got shape {y.shape}, dtype {y.dtype}")
    if np.any((y < 0) | (y >= cfg.num_classes)):
        raise ValueError(f"y must hold labels in [0, {cfg.num_classes}), got values in [{y.min()}, {y.max()}]")
    return x, y


# ----------------------------------------------------------------------------- using a classifier

def predict_logits(trained: TrainedClassifier, x: np.ndarray, t: int = 0, batch_size: int = 500) -> np.ndarray:
    """Logits (N, K) of host images x (N, C, H, W) at step t, evaluation mode, as a float64 host array."""
    like, out = trained.like, []
    classify = registry.family(trained.cfg, "classifier").model(trained.params, trained.cfg)
    for start in range(0, x.shape[0], batch_size):
        xb = asarray(np.asarray(x[start : start + batch_size]), like=like, dtype=like.dtype)
        tb = asarray(np.full(xb.shape[0], t, dtype=np.int64), like=like)
        out.append(to_numpy(classify(xb, tb)))
    return np.concatenate(out).astype(np.float64)


def guidance_gradient(trained: TrainedClassifier) -> Callable:
    """grad_log_prob(xt, t, y) = grad_{x_t} log p_phi(y | x_t, t) of a trained noisy classifier, the
    argument refdiff.samplers.guidance.classifier_guidance takes.

    Math: log p_phi(y | x_t) = log softmax(z)_y with z = classifier(x_t, t), so
          d/dz sum_n log p(y_n | x_n) = onehot(y) - softmax(z) = -(cross_entropy's "sum" gradient),
          and classifier_backward(that, need_dx=True) carries it to x_t   (Dhariwal & Nichol 2021, Alg. 1-2)

    xt: (N, C, H, W) of the parameters' library, device and dtype; t: (N,) steps; y: (N,) labels in
    [0, K). Returns (N, C, H, W) like xt. Each sample's gradient is its own (the samples never mix).
    """
    params, cfg = trained.params, trained.cfg
    forward, backward = registry.family(cfg, "classifier").in_parts()

    def grad_log_prob(xt: Any, t: Any, y: Any):
        if y is None:
            raise ValueError("y must be an (N,) array of labels for classifier guidance, got None")
        logits, cache = forward(params, cfg, xt, t)
        _, dsum = cross_entropy(logits, y, reduction="sum")  # softmax(z) - onehot(y)
        return backward(-dsum, cache, need_dx=True)[1]

    return grad_log_prob


# ----------------------------------------------------------------------------------- save, load

def save_classifier(path: str | Path, trained: TrainedClassifier) -> Path:
    """Write a trained classifier atomically as a refdiff checkpoint: params/<key>, log/loss, and the
    JSON config {"model": registry.config_to_dict(cfg), "train": {...}, "info": trained.info}."""
    config = {"model": registry.config_to_dict(trained.cfg), "train": dataclasses.asdict(trained.train_cfg),
              "info": dict(trained.info)}
    groups = {"params": {k: to_numpy(v) for k, v in trained.params.items()},
              "log": {"loss": np.asarray(trained.losses, dtype=np.float64)}}
    return save_checkpoint(path, config, trained.train_cfg.steps, Generator(0).get_state(), groups)


def load_classifier(path: str | Path, backend: str = "numpy", dtype: str = "float32") -> TrainedClassifier:
    """A classifier written by save_classifier, its parameters on ``backend`` in ``dtype``."""
    ckpt = load_checkpoint(path)
    with interpreting(ckpt):  # a malformed config is an error naming the file
        model = ckpt["config"].get("model", {})
        if model.get("kind") not in [family.name for family in registry.families("classifier")]:
            raise ValueError(f"checkpoint {path} does not hold a classifier (model kind {model.get('kind')!r})")
        cfg = registry.config_from_dict(model)
        train_cfg = ClassifierTrainConfig(**dict(ckpt["config"]["train"], backend=backend, dtype=dtype))
    b = get_backend(backend)
    like = b.asarray(np.zeros(1), dtype=b.dtype(dtype))
    params = {k: asarray(v, like=like, dtype=like.dtype) for k, v in ckpt["params"].items()}
    losses = [float(v) for v in ckpt["log"].get("loss", np.zeros(0))]
    return TrainedClassifier(params, cfg, train_cfg, losses, dict(ckpt["config"].get("info", {})))
