"""What the small trainers' runs (flow, VAE, GAN, CLIP, classifier) share: the checks of their configs' common
fields (steps, batch size, learning-rate schedule, clipping, time budget, seed, backend, dtype), the parameters
placed on the run's backend, the step loop (its time budget, progress bar and thread layout), and the checks of the data and of sample labels.

Each config keeps its own fields and defaults; its __post_init__ calls these checks, so the messages are the same
for every trainer."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterator

import numpy as np

from refdiff.backend import Generator, asarray, get_backend
from refdiff.optim import DECAYS, adamw_step, clip_grad_norm, learning_rate
from refdiff.parallel import one_blas_thread

# What a run's max_seconds counts: wall time, or this process's CPU time (all its threads: on a machine shared with
# other work, the time the run itself got).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


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
    """cfg.max_seconds None or positive and cfg.budget_clock one of CLOCKS (where the config has them), cfg.dtype
    float32 or float64, cfg.backend known."""
    if getattr(cfg, "max_seconds", None) is not None:
        check_positive("max_seconds", cfg.max_seconds)
    if getattr(cfg, "budget_clock", "wall") not in CLOCKS:
        raise ValueError(f"budget_clock must be one of {', '.join(CLOCKS)}, got {cfg.budget_clock!r}")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {cfg.dtype!r}")
    get_backend(cfg.backend)  # raises, naming the backend, for an unknown one


# ----------------------------------------------------------------------------- the configs and results

@dataclasses.dataclass(frozen=True)
class LikelihoodTrainConfig:
    """Everything that decides a likelihood-trained model's run (the flow's, the VAE's) besides its architecture
    and the data; FlowTrainConfig and VAETrainConfig are this with their own name and learning rate."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 0
    lr_decay: str = "cosine"            # "constant" | "cosine" | "linear" after the warm-up
    grad_clip: float = 1.0              # max global gradient norm
    label_dropout: float = 0.1          # fraction of labels replaced by the null label (conditional models only)
    max_seconds: float | None = None    # stop after this much time (steps stays the schedule's length) ...
    budget_clock: str = "wall"          # ... on this clock of CLOCKS: "wall" or "cpu" (the process's CPU time)
    seed: int = 0
    backend: str = "numpy"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            check_count(name, getattr(self, name))
        check_lr_schedule(self)
        check_probability("label_dropout", self.label_dropout)
        check_run(self)


@dataclasses.dataclass
class TrainedRun:
    """A trained model's parameters (on the run's backend and dtype), its configs (cfg the architecture,
    train_cfg the run's), its loss log (one value per step) and info (train_seconds, steps_done, ...)."""

    params: dict
    cfg: Any
    train_cfg: Any
    losses: list[float]
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def like(self) -> Any:
        """An array of the parameters' library, device and dtype (to move inputs there)."""
        return next(iter(self.params.values()))


# --------------------------------------------------------------------------------------- the run

def init_on_backend(train_cfg: Any, init_params: Callable, cfg: Any, g: Generator) -> dict:
    """init_params(cfg, g, dtype) of the run's dtype, moved to train_cfg.backend."""
    backend = get_backend(train_cfg.backend)
    like = backend.asarray(np.zeros(1), dtype=backend.dtype(train_cfg.dtype))
    return {k: asarray(v, like=like) for k, v in init_params(cfg, g, np.dtype(train_cfg.dtype)).items()}


def run_steps(train_cfg: Any, desc: str, progress: bool, info: dict) -> Iterator[tuple[int, Any]]:
    """The small trainers' loop: yield (step, progress bar) for steps 0..train_cfg.steps-1, and stop after
    the step during which train_cfg.max_seconds ran out (never where it is None or absent), counted on the clock
    CLOCKS[train_cfg.budget_clock] (wall time where the config has no budget_clock).

    Every BLAS library runs one thread meanwhile (refdiff.parallel's layout: a BLAS pool's spinning workers
    cost a digits8_gan step 5x on a loaded 2-core machine, 0.09 s against 0.016 s); the bar shows on a
    terminal only. When the loop ends, info gets train_seconds (wall), train_cpu_seconds (the process's CPU time
    meanwhile) and steps_done.
    """
    from tqdm.auto import tqdm

    budget, clock = getattr(train_cfg, "max_seconds", None), CLOCKS[getattr(train_cfg, "budget_clock", "wall")]
    start, cpu_start, budget_start, done = time.perf_counter(), time.process_time(), clock(), 0
    with one_blas_thread(), tqdm(total=train_cfg.steps, disable=None if progress else True, desc=desc,
                                 unit="step") as bar:
        for step in range(train_cfg.steps):
            yield step, bar
            done += 1
            bar.update(1)
            if budget is not None and clock() - budget_start > budget:
                break
    info.update(train_seconds=time.perf_counter() - start, train_cpu_seconds=time.process_time() - cpu_start,
                steps_done=done)


def clipped_adamw_step(params: dict, grads: dict, opt: dict, step: int, train_cfg: Any) -> tuple[dict, dict]:
    """One AdamW step of the run: grads clipped to train_cfg.grad_clip's global norm, the learning rate of the
    schedule at step (train_cfg.lr, warmup_steps, steps, lr_decay), train_cfg.weight_decay where the config has
    one (0 otherwise). Returns (params, opt)."""
    grads, _ = clip_grad_norm(grads, train_cfg.grad_clip)
    lr = learning_rate(step, train_cfg.lr, train_cfg.warmup_steps, train_cfg.steps, train_cfg.lr_decay)
    return adamw_step(params, grads, opt, lr, weight_decay=getattr(train_cfg, "weight_decay", 0.0))


def batch_labels(y: np.ndarray, idx: np.ndarray, num_classes: int | None, label_dropout: float, g: Generator,
                 like: Any) -> Any:
    """The batch's labels y[idx] on like's device, each replaced by the null label num_classes with probability
    label_dropout (one uniform draw of g per label); None for an unconditional model (num_classes None)."""
    if num_classes is None:
        return None
    keep = g.uniform((idx.shape[0],)) >= label_dropout                       # host (B,)
    return asarray(np.where(keep, y[idx], num_classes).astype(np.int64), like=like)


# -------------------------------------------------------------------------------------- the data

def check_data(cfg: Any, x: Any, y: Any, images: bool, x_range: str, model: str,
               labels_optional: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) as host arrays, or a ValueError naming the argument: x (N, C, S, S) images in [-1, 1] (images=True;
    x_range says why, in the message) or (N, D) points, finite, N >= 1; y the labels of a conditional model
    (optional with labels_optional), None for an unconditional one (model names it in the message)."""
    x = np.asarray(x)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size) if images else (cfg.data_dim,)
    if x.shape[1:] != shape or x.shape[0] < 1 or x.dtype.kind != "f":
        raise ValueError(f"x must be a floating (N, {', '.join(map(str, shape))}) host array, got shape {x.shape}, "
                         f"dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {int(np.sum(~np.isfinite(x)))} NaN or inf values")
    if images and not -1.0 <= x.min() <= x.max() <= 1.0:
        raise ValueError(f"x must lie in [-1, 1] ({x_range}), got values in [{x.min()}, {x.max()}]")
    if cfg.num_classes is None or (y is None and labels_optional):
        if y is not None:
            raise ValueError(f"y must be None for an unconditional {model} (cfg.num_classes is None)")
        return x, None
    y = np.asarray(y) if y is not None else np.zeros(0, np.int64)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu" or np.any((y < 0) | (y >= cfg.num_classes)):
        raise ValueError(f"y must be an ({x.shape[0]},) integer array of labels in [0, {cfg.num_classes}), got "
                         f"shape {y.shape}, dtype {y.dtype}")
    return x, y


def sample_labels(labels: Any, n: int, num_classes: int | None, model: str, like: Any) -> Any:
    """labels as (n,) int64 on like's device, or None: (n,) integers in [0, K) for a conditional model, or None
    (the null label); a ValueError (model names the model) otherwise."""
    if labels is None:
        return None
    labels, K = np.asarray(labels), num_classes
    if K is None or labels.shape != (n,) or labels.dtype.kind not in "iu" or np.any((labels < 0) | (labels >= K)):
        raise ValueError(f"labels must be None or ({n},) integers in [0, num_classes) for a conditional {model} "
                         f"(num_classes = {K}), got shape {labels.shape}, dtype {labels.dtype}")
    return asarray(labels.astype(np.int64), like=like)
