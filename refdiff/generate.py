"""From a checkpoint to samples: rebuild the model, pick a sampler, apply guidance, return host arrays.

This is what ``refdiff sample`` and ``refdiff demo`` run; library users can call the same functions.
``previewer`` is training's hook that draws a sample grid and the loss curve every ``sample_every`` steps.
Under ``mpirun -n N refdiff sample`` each rank generates its rows of the requested samples
(``generate(..., rows=(lo, hi))``) with the noise a one-process run would give those rows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray, get_backend, to_numpy
from refdiff.checkpoint import interpreting, load_checkpoint
from refdiff.distributed import ShardedGenerator
from refdiff.models import registry
from refdiff.memory import check_fits
from refdiff.samplers import (classifier_free_guidance, ddim_loop, ddpm_loop, dpmpp_2m_loop, euler_loop, final,
                              heun_loop, karras_grid, to_sigma_scale)
from refdiff.train import TrainConfig

SAMPLERS = ("ddim", "ddpm", "euler", "heun", "dpmpp_2m")
MAX_SIGMA_STEPS = 10_000  # the sigma-space samplers' steps: far past any use, short of minutes of silence
# The grid training writes every sample_every steps: a fast deterministic DDIM from the EMA weights.
PREVIEW_STEPS = 20
PREVIEW_PER_ROW = 8      # images per class row (or per row, unconditional: PREVIEW_ROWS rows)
PREVIEW_ROWS = 4
PREVIEW_POINTS = 1000    # 2-D data: points drawn over the data


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained model ready to sample: the callable, its configs, and its training schedule."""

    model: Callable
    model_cfg: Any
    train_cfg: dict
    data_shape: tuple[int, ...]  # one sample's shape, (C, H, W) or (D,)
    schedule: schedules.Schedule
    like: Any  # a 1-element array of the backend and dtype the parameters live on
    data_bound: float | None = None  # max |x| of the training data (checkpoint config), None if unknown


def load_model(path: str, use_ema: bool = True, backend: str = "numpy", dtype: str = "float32") -> LoadedModel:
    """The model of a checkpoint (EMA weights by default) on ``backend`` in ``dtype``."""
    return model_from_checkpoint(load_checkpoint(path), use_ema, backend, dtype)


def model_from_checkpoint(ckpt: dict, use_ema: bool = True, backend: str = "numpy",
                          dtype: str = "float32") -> LoadedModel:
    """The model of a checkpoint already read by refdiff.checkpoint.load_checkpoint (e.g. broadcast by rank 0)."""
    b = get_backend(backend)
    like = b.asarray(np.zeros(1), dtype=b.dtype(dtype))
    weights = ckpt["ema"] if use_ema else ckpt["params"]
    params = {k: asarray(v.astype(dtype), like=like) for k, v in weights.items()}
    with interpreting(ckpt):  # a malformed config is an error naming the file
        model_cfg = registry.config_from_dict(ckpt["config"]["model"], "denoiser")
        train_cfg = ckpt["config"]["train"]
        TrainConfig(**train_cfg)  # the settings generate reads (parameterization) are checked here, named
        schedule = schedules.by_name(train_cfg["schedule"], train_cfg["T"])
        data_shape = tuple(ckpt["config"]["data_shape"])
        model = registry.family(model_cfg).model(params, model_cfg)  # the samplers' model(xt, t, y)
    return LoadedModel(model, model_cfg, train_cfg, data_shape, schedule, like, ckpt["config"].get("data_bound"))


def check_sampling(sampler: str, steps: int, guidance: float, T: int) -> None:
    """Raise a ValueError naming the setting unless ``sampler`` is one of SAMPLERS, ``steps`` an integer
    >= 1 (at most the model's T for ddim and ddpm, which respace its steps, else MAX_SIGMA_STEPS) and
    ``guidance`` a finite number >= 0. ``generate`` checks its arguments with it; callers can check before
    long work."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    most = T if sampler in ("ddim", "ddpm") else MAX_SIGMA_STEPS
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= most:
        allowed = (f"in [1, {T}] for {sampler} (the model's T = {T})" if sampler in ("ddim", "ddpm")
                   else f"in [1, {MAX_SIGMA_STEPS}] for {sampler}")
        raise ValueError(f"steps must be an integer {allowed}, got {steps!r}")
    if not (isinstance(guidance, (int, float)) and 0 <= guidance < math.inf):
        raise ValueError(f"guidance must be a finite number >= 0 (0: unconditional, 1: conditional), got {guidance!r}")


def generate(loaded: LoadedModel, shape: tuple[int, ...], labels: np.ndarray | None = None, sampler: str = "ddim",
             steps: int = 50, eta: float = 0.0, guidance: float = 1.0, seed: int = 0, clip_x0: float | str | None = "auto",
             rows: tuple[int, int] | None = None, cond_fn: Callable | None = None):
    """Samples of ``shape`` (N, ...) from a loaded model, as a host float array, with labels (N,), a text
    model's tokens (N, L) (refdiff.data.tokenize), or None.

    guidance: the classifier-free guidance scale s (1: the conditional model; needs a conditional one).
    DDIM and DDPM run on the schedule respaced to ``steps`` (trailing spacing); the sigma-space samplers
    on a Karras grid of ``steps`` levels. clip_x0 bounds the predicted x0: "auto" is 1 for images
    (N, C, H, W), which live in [-1, 1], and the training data's max |x| for points (N, D) (2-D toy data
    reach beyond 1; without a bound, eps-models' x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) at the first
    steps of a cosine schedule, where ab ~ 1e-8, sends a few points far away).
    rows: only rows [lo, hi) of the N samples, (hi - lo, ...), equal to those rows of the whole
    (every draw is made for all N rows and sliced: refdiff.distributed.ShardedGenerator).
    cond_fn: a gradient guidance (classifier or CLIP: refdiff.samplers.guidance, refdiff.clip_train.clip_guidance)
    for the rows sampled, which ddim and ddpm take (on top of ``guidance``); None: none.
    """
    check_sampling(sampler, steps, guidance, loaded.schedule.T)
    if cond_fn is not None and sampler not in ("ddim", "ddpm"):
        raise ValueError(f"cond_fn (gradient guidance) needs sampler ddim or ddpm, got {sampler!r}")
    lo, hi = (0, shape[0]) if rows is None else rows
    if not 0 <= lo <= hi <= shape[0]:
        raise ValueError(f"rows must satisfy 0 <= lo <= hi <= {shape[0]}, got {rows!r}")
    dtype = str(to_numpy(loaded.like).dtype)  # every row is one batch: about its forward's activations
    check_fits((hi - lo) * registry.sample_bytes(loaded.model_cfg, tuple(shape[1:]), dtype),
               f"sampling {hi - lo} samples of shape {tuple(shape[1:])} at once", "ask for fewer (--count)")
    if hi == lo:
        return np.zeros((0, *shape[1:]), dtype=to_numpy(loaded.like).dtype)
    model, null = loaded.model, registry.null_condition(loaded.model_cfg)
    y = None if labels is None else asarray(np.asarray(labels, dtype=np.int64)[lo:hi], like=loaded.like)
    if guidance != 1.0:
        if null is None or y is None:
            raise ValueError(f"guidance {guidance} needs a conditional model and labels (or prompts' tokens)")
        model = classifier_free_guidance(model, guidance, null_label=null)
    generator = Generator(seed) if rows is None else ShardedGenerator(Generator(seed), lo, hi, shape[0])
    x = generator.normal((hi - lo, *shape[1:]), like=loaded.like)
    param = TrainConfig(**loaded.train_cfg).parameterization()
    if clip_x0 == "auto":
        clip_x0 = 1.0 if len(shape) == 4 else loaded.data_bound
    if sampler in ("ddim", "ddpm"):
        schedule = schedules.respace(loaded.schedule, schedules.timesteps(loaded.schedule.T, steps, "trailing"))
        if sampler == "ddim":
            loop = ddim_loop(model, schedule, x, y, eta=eta, generator=generator, cond_fn=cond_fn, param=param,
                             clip_x0=clip_x0)
        else:
            loop = ddpm_loop(model, schedule, x, generator, y, cond_fn=cond_fn, param=param, clip_x0=clip_x0)
    else:
        sigmas = karras_grid(loaded.schedule, steps)
        loop_fn = {"euler": euler_loop, "heun": heun_loop, "dpmpp_2m": dpmpp_2m_loop}[sampler]
        loop = loop_fn(model, loaded.schedule, to_sigma_scale(x, float(sigmas[0])), sigmas, y, param=param,
                       clip_x0=clip_x0)
    return to_numpy(final(loop))


def previewer(cfg: Any, model_cfg: Any, x: np.ndarray, out_dir: str | Path) -> Callable[[Any], dict[str, Any]]:
    """The ``preview`` hook of ``refdiff.train.train``: ``write_preview`` of the state's step, EMA weights
    and losses into out_dir. cfg: the run's TrainConfig; x: its training data (for the 2-D scatter).

    Sampling uses its own generator (seeded by cfg.seed), never the training stream: a run with
    previews trains the same numbers as one without, and resumes exactly. An inpainting model has none
    (ValueError): its samples need an image and a mask.
    """
    if getattr(model_cfg, "inpaint", False):
        raise ValueError("sample_every: an inpainting model's previews would need an image and a mask; train it "
                         "without sample grids and edit with its checkpoint (refdiff.inpaint, `refdiff inpaint`)")
    train_cfg = dataclasses.asdict(cfg)
    return lambda state: write_preview(out_dir, state.step, state.ema, model_cfg, train_cfg, x, state.losses)


def write_preview(out_dir, step: int, weights: dict, model_cfg: Any, train_cfg: dict, x: np.ndarray,
                  losses: list[float]) -> dict[str, Any]:
    """``samples_step{step}.png`` and ``loss_curve.png`` in out_dir, for watching a run train.

    Images: a grid from DDIM (PREVIEW_STEPS steps, eta 0) with ``weights`` (the EMA), one row per class
    for a class-conditional model; 2-D data: PREVIEW_POINTS samples over the data x. The noise comes
    from a generator seeded with train_cfg["seed"], the same at every step (the grids are comparable)
    and apart from the training stream. Returns {"samples": path, "loss_curve": path}.
    """
    from refdiff.plot import curves, image_grid, scatter_2d

    out_dir, like = Path(out_dir), next(iter(weights.values()))
    model = registry.family(model_cfg, "denoiser").model(weights, model_cfg)
    loaded = LoadedModel(model, model_cfg, train_cfg, tuple(x.shape[1:]),
                         schedules.by_name(train_cfg["schedule"], train_cfg["T"]), like, float(np.max(np.abs(x))))
    num_classes = getattr(model_cfg, "num_classes", None)
    if x.ndim == 2:                                     # points over the data, every class in turn
        n = PREVIEW_POINTS
        labels = None if num_classes is None else np.arange(n) % num_classes
    elif num_classes is not None:                       # one row per class
        labels = np.repeat(np.arange(num_classes), PREVIEW_PER_ROW)
        n = labels.size
    else:
        labels, n = None, PREVIEW_PER_ROW * PREVIEW_ROWS
    samples = generate(loaded, (n, *x.shape[1:]), labels, "ddim", PREVIEW_STEPS, seed=train_cfg["seed"])
    path = out_dir / f"samples_step{step}.png"
    if x.ndim == 2:
        scatter_2d({f"step {step}, DDIM {PREVIEW_STEPS}, EMA": samples}, path,
                   reference=np.asarray(x[:5000], dtype=np.float64))
    else:
        rows = None if labels is None else [str(k) for k in range(num_classes)]
        title = f"step {step}: DDIM {PREVIEW_STEPS} steps, EMA weights" + (", one row per class" if rows else "")
        image_grid(samples, nrow=PREVIEW_PER_ROW, path=path, title=title, row_labels=rows)
    ys = np.asarray(losses, dtype=np.float64)
    curve = curves({"training loss": (np.arange(1, ys.size + 1), ys)}, out_dir / "loss_curve.png",
                   xlabel="step", ylabel="loss", logy=bool(ys.size and np.all(ys > 0)))
    return {"samples": path, "loss_curve": curve}
