"""The training loop: sample a batch, noise it, run the model forward and backward, take an AdamW step.

One step, ``train_step`` (Ho et al. 2020, Alg. 1; improved DDPM for the hybrid loss and importance
sampling):

    x0, y   ~ q(x0)      a batch drawn by the generator; y -> the null condition with probability p (the
                         null label, label_dropout; the empty caption for a text model, caption_dropout)
    t, w    ~ U          uniform steps (w = 1), or t ~ p_t by the loss's second moment, w = 1 / (T p_t)
    eps     ~ N(0, I)
    keep    ~ masks  an inpainting model's only (refdiff.models.text_inpaint.random_keep): its conditioning
                     channels cond = [x0 * keep; keep] (GLIDE, Sec. 3.3), fed beside x_t; the loss is on all of x0
    grads, L_n = loss_gradient(x0, y, t, eps, w, cond):
                 x_t = q_sample(x0, t, eps); out = model(x_t, t, y), or model([x_t; cond], t, y) (cache kept);
                 dout = gradient of (1/B) sum_n w_n L_n(out); grads = model_backward(dout) (hand-derived)
    params  <- AdamW(clip(grads)); ema <- EMA(params); the t-sampler records every L_n

The model is any denoiser family of refdiff.models.registry (its init, forward and backward).

All randomness comes from one refdiff Generator whose state is checkpointed with the parameters, the
optimizer state, the EMA, the timestep sampler's loss history and the loss log (refdiff.train_state), so
a resumed run repeats an uninterrupted one bit for bit on NumPy (docs/design.md rule 9). A non-finite
loss stops training with an error naming the step.

Under ``mpirun -n N`` data parallelism enters at one point, the gradient: every rank draws the whole
global batch and ``refdiff.distributed.data_parallel`` runs loss_gradient on the rank's rows and sums
the ranks' gradients with one allreduce. The generator, the parameters and the checkpoint do not depend
on N, so N ranks give the parameters of one process to float tolerance, and a checkpoint resumes on any
N. Rank 0 alone writes checkpoints, figures and the progress bar.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray, namespace, to_numpy
from refdiff.checkpoint import folder_lock, interpreting, load_checkpoint
from refdiff.diffusion import PREDICTIONS, Parameterization, q_sample
from refdiff.distributed import SINGLE_PROCESS, check_batch, data_parallel, get_communicator
from refdiff.losses import LOSSES, WEIGHTINGS, training_loss
from refdiff.models import registry
from refdiff.models.text_inpaint import conditioning, random_keep
from refdiff.optim import DECAYS, adamw_step, clip_grad_norm, ema_update, learning_rate
from refdiff.memory import check_fits
from refdiff.timesteps import sample_timesteps
from refdiff.train_state import TrainState, check_resume, init_state, resume_state, save_state

TIMESTEPS = ("uniform", "importance")
# Sizes beyond which a run is refused at once: the loss log grows by a float a step, the schedule by
# several arrays of T (a MemoryError, or minutes of silence, otherwise). Memory is estimated too (train).
LIMITS = {"steps": 10**7, "batch_size": 2**16, "T": 10**5}


class TrainingError(RuntimeError):
    """Training cannot continue (a non-finite loss); the message names the step and the last checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run besides the model's architecture and the data."""

    steps: int = 2000
    batch_size: int = 64             # the global batch: split over the ranks under mpirun
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_decay: str = "cosine"        # "constant" | "cosine" | "linear" after the warm-up
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # max global gradient norm
    ema_decay: float = 0.999
    schedule: str = "cosine"         # a name in refdiff.schedules.SCHEDULES
    T: int = 1000
    prediction: str = "eps"          # "eps" | "x0" | "v"
    loss: str = "mse"                # "mse" | "hybrid" | "kl" (hybrid and kl need learn_sigma)
    weighting: str = "none"          # "none" | "min_snr"
    timesteps: str = "uniform"       # "uniform" | "importance" (by the loss's second moment, improved DDPM)
    label_dropout: float = 0.1       # probability of training on the null label (classifier-free guidance)
    caption_dropout: float = 0.2     # a text model's: probability of training on the empty caption (GLIDE's 20%)
    text_lr_scale: float = 1.0       # a text model's encoder ("text.*" parameters) trains at lr * text_lr_scale
    seed: int = 0
    backend: str = "numpy"
    dtype: str = "float32"
    checkpoint_every: int = 500
    sample_every: int = 0            # call train's preview hook every N steps (0: never)

    def __post_init__(self):
        for name in ("steps", "batch_size", "T", "checkpoint_every"):
            value, most = getattr(self, name), LIMITS.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > (most or value):
                allowed = f"in [1, {most}]" if most else ">= 1"
                raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
        for name, hint in (("warmup_steps", ""), ("sample_every", " (0: no sample grids)")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0{hint}, got {value!r}")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps must be < steps = {self.steps}, got {self.warmup_steps}")
        for name in ("lr", "grad_clip", "text_lr_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"ema_decay must lie in [0, 1], got {self.ema_decay!r}")
        for name in ("label_dropout", "caption_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        choices = {"lr_decay": DECAYS, "schedule": tuple(schedules.SCHEDULES), "prediction": PREDICTIONS,
                   "loss": LOSSES, "weighting": WEIGHTINGS, "timesteps": TIMESTEPS, "dtype": ("float32", "float64")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def schedule_obj(self) -> schedules.Schedule:
        """The noise schedule this run trains on."""
        return schedules.by_name(self.schedule, self.T)

    def parameterization(self, variance: str = "fixed_small") -> Parameterization:
        """What the trained model's output means: ``prediction``, with learned-range variance channels
        when the loss trains them ("hybrid", "kl"), else the fixed ``variance`` a sampler chooses."""
        return Parameterization(self.prediction, "learned_range" if self.loss != "mse" else variance)


class Batch(NamedTuple):
    """One training batch on the parameters' backend; every field has the batch as its leading axis."""

    x0: Any   # (B, C, H, W) or (B, D) data
    y: Any    # (B,) int64 labels (num_classes: the null label), (B, L) int64 tokens, or None (unconditional)
    t: Any    # (B,) int64 steps in [0, T)
    w: Any    # (B,) importance weights 1 / (T p_t), or None for uniform t (every weight 1)
    eps: Any  # like x0: the noise
    cond: Any = None  # (B, C + 1, H, W): an inpainting model's [x0 * keep; keep] beside x_t, or None


def draw_batch(cfg: TrainConfig, x: np.ndarray, y: np.ndarray | None, null: int | None, p: float,
               generator: Generator, like: Any):
    """A batch (x0, y) of cfg.batch_size samples on like's backend: indices uniform over the data, each
    row's condition (a label (N,) or tokens (N, L)) replaced by the null one, filled with ``null``, with
    probability p: the null label K, or the empty caption (refdiff.models.registry.null_condition)."""
    idx = generator.integers(0, x.shape[0], (cfg.batch_size,))              # host (B,)
    x0 = asarray(x[idx].astype(cfg.dtype), like=like)                       # (B, C, H, W) or (B, D)
    if y is None or null is None:
        return x0, None
    drop = generator.uniform((cfg.batch_size,)) < p                         # host (B,)
    drop = drop.reshape((-1,) + (1,) * (y.ndim - 1))                        # (B,) or (B, 1): over a row's tokens
    return x0, asarray(np.where(drop, null, y[idx]).astype(np.int64), like=like)


def _draw_timesteps(cfg: TrainConfig, state: TrainState, like: Any):
    """Steps t and weights w = 1 / (T p_t) of the whole batch, (B,) each; w is None for uniform t."""
    method = "uniform" if state.sampler is None else state.sampler
    t, w = sample_timesteps(cfg.T, cfg.batch_size, state.generator, like, method)
    return t, (None if state.sampler is None else w)


def loss_gradient(cfg: TrainConfig, model_cfg: Any, schedule: schedules.Schedule, params: dict, batch: Batch,
                  generator: Any) -> tuple[dict, Any]:
    """The gradient of the training loss on ``batch`` (n rows), and every sample's loss.

    Math: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps               (Ho et al. 2020, eq. 4)
          L = (1/n) sum_n w_n L_n(model(x_t, t, y)), L_n the cfg.loss term (L_simple: |eps - eps_theta|^2);
          an inpainting model reads [x_t; cond] instead of x_t
          grads = dL/dtheta by the model's hand-derived backward

    generator: the dropout masks' (a refdiff Generator or ShardedGenerator). Returns (grads with
    params' keys, (n,) unweighted per-sample losses L_n).
    """
    forward, backward = registry.family(model_cfg, "denoiser").in_parts()          # refdiff.parallel
    xt = q_sample(schedule, batch.x0, batch.t, batch.eps)                          # Ho et al. 2020, eq. 4
    out, cache = forward(params, model_cfg, model_input(xt, batch.cond), batch.t, batch.y, train=True,
                         generator=generator)
    dout, losses = batch_loss(cfg, schedule, out, batch)
    return backward(dout, cache), losses


def model_input(xt: Any, cond: Any) -> Any:
    """What the denoiser reads: x_t, or an inpainting model's [x_t; cond] (B, 2C + 1, H, W) (GLIDE's order)."""
    return xt if cond is None else namespace(xt).concat((xt, cond), axis=1)


def batch_loss(cfg: TrainConfig, schedule: schedules.Schedule, out: Any, batch: Batch) -> tuple[Any, Any]:
    """cfg's training loss of the model output ``out`` on ``batch``: (dL/dout like out, (n,) losses L_n)."""
    _, dout, terms = training_loss(schedule, out, batch.x0, batch.t, batch.eps, cfg.parameterization(),
                                   loss=cfg.loss, weighting=cfg.weighting, weights=batch.w)
    return dout, terms.loss


def train_step(cfg: TrainConfig, model_cfg: Any, schedule: schedules.Schedule, state: TrainState,
               x: np.ndarray, y: np.ndarray | None, comm: Any = SINGLE_PROCESS) -> float:
    """One step of Algorithm 1 on a fresh batch; updates ``state`` in place and returns the loss
    (1/B) sum_n w_n L_n.

    comm: the gradient is data-parallel over its ranks (refdiff.distributed.data_parallel): each rank
    computes it on its rows of the batch, and one allreduce gives every rank the batch's gradient and
    all B per-sample losses. Nothing else in the step depends on the rank.
    """
    like, g = next(iter(state.params.values())), state.generator
    text = registry.family(model_cfg, "denoiser").condition == "tokens"
    p = cfg.caption_dropout if text else cfg.label_dropout
    x0, labels = draw_batch(cfg, x, y, registry.null_condition(model_cfg), p, g, like)     # x0 ~ q(x0)
    t, w = _draw_timesteps(cfg, state, like)                                               # t ~ U{0..T-1}, or p_t
    eps = g.normal(tuple(x0.shape), like=x0)                                               # eps ~ N(0, I)
    cond = _conditioning(model_cfg, x0, g)                                                 # keep ~ masks
    gradient = data_parallel(functools.partial(loss_gradient, cfg, model_cfg, schedule, state.params), comm)
    grads, per_sample = gradient(Batch(x0, labels, t, w, eps, cond), g)                   # grad_theta L, every L_n
    xp = namespace(per_sample)
    loss = float(to_numpy(xp.mean(per_sample if w is None else w * per_sample)))         # (1/B) sum_n w_n L_n
    if not math.isfinite(loss):
        raise TrainingError(f"loss is {loss} at step {state.step}: training stopped")
    optimizer_step(cfg, state, grads)                                                      # gradient step
    if state.sampler is not None:
        state.sampler.update(t, per_sample)
    state.step += 1
    state.losses.append(loss)
    return loss


def _conditioning(model_cfg: Any, x0: Any, generator: Generator) -> Any:
    """An inpainting model's conditioning channels [x0 * keep; keep] (B, C + 1, H, W) on masks drawn from
    ``generator`` (refdiff.models.text_inpaint.random_keep); None for every other model (nothing drawn)."""
    if not getattr(model_cfg, "inpaint", False):
        return None
    return conditioning(x0, random_keep(generator, x0.shape[0], x0.shape[-1], like=x0))


def optimizer_step(cfg: TrainConfig, state: TrainState, grads: dict) -> None:
    """Update state's parameters, optimizer state and EMA from ``grads``: params <- AdamW(clip(grads)) at
    the learning rate of state.step (a text model's encoder, the "text.*" keys, at text_lr_scale times
    it), then ema <- EMA(params). A non-finite gradient norm (data or gradients that overflow, which
    clipping would turn into a zero step) raises TrainingError first."""
    grads, norm = clip_grad_norm(grads, cfg.grad_clip)
    norm = float(to_numpy(norm))
    if not math.isfinite(norm):
        raise TrainingError(f"the gradient norm is {norm} at step {state.step} (the data or the gradients "
                            "overflow): training stopped")
    lr = learning_rate(state.step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.lr_decay)
    if cfg.text_lr_scale != 1.0:  # the text encoder's own rate (docs/glide.md, "The encoder's learning rate")
        lr = {key: lr * cfg.text_lr_scale if key.startswith("text.") else lr for key in state.params}
    state.params, state.opt = adamw_step(state.params, grads, state.opt, lr, weight_decay=cfg.weight_decay)
    state.ema = ema_update(state.ema, state.params, cfg.ema_decay, state.step)


def train(cfg: TrainConfig, model_cfg: Any, x: np.ndarray, y: np.ndarray | None, out_dir: str | Path,
          resume: bool = False, progress: bool = True, stop_at: int | None = None, comm: Any = None,
          preview: Callable[[TrainState], Any] | None = None, overwrite: bool = False,
          data_source: dict | None = None, init: dict | None = None) -> TrainState:
    """Train for cfg.steps steps (or until ``stop_at``), checkpointing to ``out_dir/checkpoint.npz``.

    x: (N, C, H, W) or (N, D) host data in [-1, 1]; y: (N,) labels or None. resume=True continues from
    the checkpoint in out_dir, which must agree with cfg, model_cfg and x (check_resume); without it an
    existing checkpoint there is an error, unless overwrite=True (replaced at the first checkpoint of the
    new run). preview(state): called on rank 0 after every cfg.sample_every-th step
    (``refdiff.generate.previewer`` writes a sample grid and the loss curve); it must not draw from
    state.generator. comm: a refdiff.distributed communicator; None picks MPI under mpirun, else one
    process. Rank 0 alone writes files and shows the progress bar; a failure on one rank aborts them all.
    data_source: how the data was named, recorded in the checkpoint (save_state). init: host parameters
    to start from instead of fresh ones (fine-tuning: refdiff.train_state.init_state); not with resume.
    Returns the final TrainState (the same on every rank); the checkpoint holds it too.
    """
    if resume and init is not None:
        raise ValueError("init starts a run from given parameters; resume continues the checkpoint's: give one")
    if cfg.sample_every and preview is None:
        raise ValueError(f"sample_every={cfg.sample_every} needs preview=, the hook it calls "
                         "(refdiff.generate.previewer writes sample grids)")
    x_max = float(np.max(np.abs(x)))
    if not x_max < float(np.finfo(cfg.dtype).max):  # NaN fails too
        raise ValueError(f"x must be finite in {cfg.dtype} (data in [-1, 1]), got max |x| = {x_max}")
    comm = get_communicator() if comm is None else comm
    check_batch(cfg.batch_size, comm.size)
    path = Path(out_dir) / "checkpoint.npz"
    with hold_output(out_dir, comm):
        ckpt = _start_checkpoint(cfg, model_cfg, x, path, resume, overwrite, comm)
        check_step_fits(cfg, model_cfg, x.shape[1:], comm.size)
        with comm.abort_on_error(collective=(TrainingError,)):
            if cfg.backend == "cupy":
                comm.use_local_gpu()
            with interpreting(ckpt) if resume else contextlib.nullcontext():
                state = resume_state(ckpt, cfg) if resume else init_state(cfg, model_cfg, init)
            with warnings.catch_warnings():  # on every thread: non-finite values are checked and named instead
                for message in ("overflow encountered", "invalid value encountered"):
                    warnings.filterwarnings("ignore", message, RuntimeWarning)
                return _loop(cfg, model_cfg, x, y, path, state, progress and comm.rank == 0, stop_at, comm, preview,
                             data_source)


def _start_checkpoint(cfg: TrainConfig, model_cfg: Any, x: np.ndarray, path: Path, resume: bool, overwrite: bool,
                      comm: Any) -> dict | None:
    """``train``'s checkpoint at path, read by rank 0 and given to every rank, when it resumes (it must
    agree with the run: check_resume); else None, after checking that no checkpoint is there to lose."""
    with comm.abort_on_error():  # rank 0 reads, every rank gets it; a missing or unreadable file ends them all
        if resume:
            ckpt = comm.bcast(load_checkpoint(path) if comm.rank == 0 else None)
        else:
            found = comm.bcast(path.exists() if comm.rank == 0 else None)
    if not resume:  # every rank raises these alike, outside abort_on_error
        if found and not overwrite:
            raise ValueError(f"{path} exists: resume it, or train into another folder to keep it")
        return None
    with interpreting(ckpt):
        check_resume(ckpt["config"], cfg, model_cfg, x.shape[1:])
    return ckpt


def check_step_fits(cfg: TrainConfig, model_cfg: Any, data_shape: tuple, ranks: int = 1) -> None:
    """Refuse (ValueError) a training step that cannot fit in host memory, before training starts: a
    rank's rows of the batch keep about 3x the activations of refdiff.models.registry.sample_bytes
    (the forward's cache, the backward's gradients, temporaries); parameters, gradients, AdamW's two
    moments and the EMA take 5x the parameters. A GPU's own memory is not checked."""
    rows = -(-cfg.batch_size // ranks)
    family = registry.family(model_cfg, "denoiser")
    nbytes = 3 * rows * registry.sample_bytes(model_cfg, data_shape, cfg.dtype) + \
        5 * family.param_count(model_cfg) * np.dtype(cfg.dtype).itemsize
    check_fits(nbytes, f"a training step of batch size {cfg.batch_size} on samples of shape {tuple(data_shape)}",
               "lower the batch size (--batch-size)")


@contextlib.contextmanager
def hold_output(out_dir: str | Path, comm: Any = SINGLE_PROCESS):
    """Rank 0 holds out_dir's lock (refdiff.checkpoint.folder_lock) for the block: a second run on the
    folder is refused; on rank 0's refusal every rank ends."""
    with contextlib.ExitStack() as held:
        with comm.abort_on_error():
            if comm.rank == 0:
                held.enter_context(folder_lock(out_dir))
        yield


def _loop(cfg: TrainConfig, model_cfg: Any, x: np.ndarray, y: np.ndarray | None, path: Path, state: TrainState,
          progress: bool, stop_at: int | None, comm: Any, preview: Callable[[TrainState], Any] | None,
          data_source: dict | None) -> TrainState:
    """The steps of ``train``, with checkpoints and sample grids written by rank 0."""
    schedule = cfg.schedule_obj()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    data_bound = float(np.max(np.abs(x)))
    probe = probe_batch(cfg, x, y, next(iter(state.params.values())), model_cfg)
    bar = _progress(state.step, end, progress)
    start_step, start_time = state.step, time.perf_counter()
    try:
        while state.step < end:
            loss = train_step(cfg, model_cfg, schedule, state, x, y, comm)
            if state.step % cfg.checkpoint_every == 0 or state.step == end:
                check_state_finite(cfg, model_cfg, schedule, state, probe)  # every rank alike: no exploded save
                if comm.rank == 0:
                    save_state(path, cfg, model_cfg, state, x.shape[1:], comm.size, data_bound, data_source)
            if comm.rank == 0 and cfg.sample_every and state.step % cfg.sample_every == 0:
                preview(state)
            rate = cfg.batch_size * (state.step - start_step) / max(time.perf_counter() - start_time, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", img_per_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
    except TrainingError as err:
        last = f"{path}" if path.exists() else "none written yet"
        raise TrainingError(f"{err}; the last good checkpoint is {last}") from None
    finally:
        bar.close()
    return state


def probe_batch(cfg: TrainConfig, x: np.ndarray, y: np.ndarray | None, like: Any, model_cfg: Any = None) -> Batch:
    """A fixed batch on like's backend to check parameters with before they are saved: the first 4
    samples of x and their labels (or None), at 4 steps spread over [0, T), with noise (and an inpainting
    model's masks) from a generator of its own (seed 0: the run's stream is not touched)."""
    n = min(4, x.shape[0])
    x0 = asarray(x[:n].astype(cfg.dtype), like=like)                                      # (n, ...)
    labels = None if y is None else asarray(np.asarray(y[:n], dtype=np.int64), like=like)
    t = asarray(np.linspace(0, cfg.T - 1, n).astype(np.int64), like=like)                 # (n,)
    g = Generator(0)
    eps = g.normal(tuple(x0.shape), like=x0)
    return Batch(x0, labels, t, None, eps, _conditioning(model_cfg, x0, g))


def check_state_finite(cfg: TrainConfig, model_cfg: Any, schedule: schedules.Schedule, state: TrainState,
                       probe: Batch) -> None:
    """Raise TrainingError naming the step unless the parameters and the EMA give a finite training loss
    on the probe batch (probe_batch): finite parameters can still have exploded (|w| ~ 1e30 after
    lr = 1e30), and a state whose loss overflows at once is no good to resume or sample."""
    family = registry.family(model_cfg, "denoiser")
    xt = q_sample(schedule, probe.x0, probe.t, probe.eps)                                  # Ho et al. 2020, eq. 4
    for name, weights in (("parameters", state.params), ("EMA", state.ema)):
        out = family.model(weights, model_cfg)(model_input(xt, probe.cond), probe.t, probe.y)
        losses = batch_loss(cfg, schedule, out, probe)[1]
        xp = namespace(losses)
        if not bool(to_numpy(xp.all(xp.isfinite(losses)))):
            raise TrainingError(f"the {name} at step {state.step} give a non-finite loss (they exploded): "
                                "training stopped before saving them")


def _progress(start: int, end: int, enabled: bool):
    """The training progress bar; shown on a terminal only (tqdm's disable=None), never written to a log."""
    from tqdm.auto import tqdm

    return tqdm(total=end, initial=start, disable=None if enabled else True, desc="train", unit="step")
