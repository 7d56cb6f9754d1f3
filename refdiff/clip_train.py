"""Training the noised CLIP (refdiff.models.clip) on x_t at uniform t, measuring it, and guiding with it
(GLIDE, Nichol et al. 2021, Sec. 2.4; CLIP, Radford et al. 2021).

One step (``clip_step``, like refdiff.classifier_train's): x0, tokens, mask <- batch (indices drawn by
the generator); t ~ U{0, ..., T - 1}, eps ~ N(0, I); x_t = q_sample(x0, t, eps);
f = f(x_t, t), g = g(c); loss = symmetric InfoNCE(f, g, tau) (refdiff.layers.contrastive);
grads by the backward of each; params <- AdamW(clip(grads)); tau <- min(tau, log 100) (CLIP's cap on
the inverse temperature). The image side runs in batch parts on the host's cores (refdiff.parallel).
All randomness comes from one Generator(seed).

``retrieval_accuracy`` is the zero-shot check: each caption picks the image of highest f . g among N,
at a given noise level t. ``clip_gradient`` / ``clip_guidance`` give GLIDE's CLIP guidance as the
``cond_fn`` every sampler takes. ``save_clip`` / ``load_clip`` keep a trained CLIP in a refdiff checkpoint
(.npz; registry task "contrastive"); ``check_clip_fits`` checks that a CLIP can guide a text model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from refdiff import schedules
from refdiff.backend import Generator, asarray, get_backend, namespace, to_numpy
from refdiff.checkpoint import interpreting, load_checkpoint, save_checkpoint
from refdiff.diffusion import q_sample
from refdiff.layers.contrastive import contrastive_backward, contrastive_forward
from refdiff.models import clip as M
from refdiff.models import registry
from refdiff.optim import adamw_init
from refdiff.parallel import in_parts
from refdiff.run_config import (TrainedRun, check_count, check_lr_schedule, check_run, check_weight_decay,
                                clipped_adamw_step, init_on_backend, run_steps)
from refdiff.samplers.guidance import classifier_guidance

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips exp(tau) at 100


@dataclass(frozen=True)
class ClipTrainConfig:
    """Everything that decides a CLIP training run besides its architecture and the data."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 0
    lr_decay: str = "cosine"     # "constant" | "cosine" | "linear" after the warm-up
    weight_decay: float = 0.0    # AdamW's decay reaches every key, tau included (CLIP exempts tau): 0 by default
    grad_clip: float = 1.0       # max global gradient norm
    max_seconds: float | None = None  # stop after this much wall time (steps stays the schedule's length)
    schedule: str = "cosine"     # the diffusion's schedule (a name in refdiff.schedules.SCHEDULES)
    T: int = 1000
    seed: int = 0
    backend: str = "numpy"
    dtype: str = "float32"

    def __post_init__(self):
        for name, low in (("steps", 1), ("batch_size", 2), ("T", 1)):
            check_count(name, getattr(self, name), low)
        check_lr_schedule(self)
        check_weight_decay(self.weight_decay)
        if self.schedule not in schedules.SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(sorted(schedules.SCHEDULES))}, got {self.schedule!r}")
        check_run(self)


@dataclass
class TrainedClip(TrainedRun):
    """A CLIP's parameters (on the run's backend and dtype), its configs (ClipConfig, ClipTrainConfig), its loss
    log and info (e.g. train_seconds)."""

    @property
    def like(self) -> Any:
        """An array of the parameters' library, device and dtype (to move inputs there)."""
        return self.params["logit_scale"]


_IMAGE_IN_PARTS = in_parts(M.clip_image_forward, M.clip_image_backward)


def clip_loss(params: dict, cfg: M.ClipConfig, xt: Any, t: Any, tokens: Any, mask: Any, train: bool = False,
              generator: Generator | None = None, need_grads: bool = False):
    """The symmetric InfoNCE loss of a batch of matched (x_t, caption) pairs, and with need_grads its
    gradient with respect to every parameter.

    Math: loss = contrastive(f(x_t, t), g(c), tau); grads: contrastive_backward(1) -> (df, dg, dtau),
          then clip_image_backward(df) and clip_text_backward(dg)      (each parameter is on one side)

    xt: (N, C, H, W), t: (N,), tokens: (N, L), mask: (N, L) bool, all of the parameters' library and
    device. Returns loss (0-d like xt), or (loss, grads in param_shapes' order).
    """
    image_forward, image_backward = _IMAGE_IN_PARTS
    f, image = image_forward(params, cfg, xt, t, train=train, generator=generator)  # (N, E)
    g, text = M.clip_text_forward(params, cfg, tokens, mask)  # (N, E)
    loss, head = contrastive_forward(f, g, params["logit_scale"])
    if not need_grads:
        return loss
    df, dg, dlogit_scale = contrastive_backward(1.0, head)
    grads = {**image_backward(df, image), **M.clip_text_backward(dg, text), "logit_scale": dlogit_scale}
    return loss, {k: grads[k] for k in M.param_shapes(cfg)}


def clip_step(trained: TrainedClip, opt: dict, schedule: schedules.Schedule, x: np.ndarray, tokens: np.ndarray,
              mask: np.ndarray, g: Generator, step: int) -> tuple[dict, float]:
    """One AdamW step on a fresh batch at uniform t; updates trained.params in place, returns (opt, loss)."""
    cfg, like = trained.train_cfg, trained.like
    idx = g.integers(0, x.shape[0], (cfg.batch_size,))  # host (B,)
    x0 = asarray(x[idx], like=like, dtype=like.dtype)  # (B, C, H, W)
    tok, keep = asarray(tokens[idx], like=like), asarray(mask[idx], like=like)  # (B, L) each
    t = g.integers(0, schedule.T, (cfg.batch_size,), like=like)
    xt = q_sample(schedule, x0, t, g.normal(tuple(x0.shape), like=x0))  # Ho et al. 2020, eq. 4
    loss, grads = clip_loss(trained.params, trained.cfg, xt, t, tok, keep, train=True, generator=g, need_grads=True)
    loss = float(to_numpy(loss))
    if not math.isfinite(loss):
        raise RuntimeError(f"CLIP loss is {loss} at step {step}: training stopped")
    trained.params, opt = clipped_adamw_step(trained.params, grads, opt, step, cfg)
    tau = trained.params["logit_scale"]
    trained.params["logit_scale"] = namespace(tau).minimum(tau, namespace(tau).full_like(tau, MAX_LOGIT_SCALE))
    return opt, loss


def train_clip(train_cfg: ClipTrainConfig, cfg: M.ClipConfig, x: np.ndarray, tokens: np.ndarray, mask: np.ndarray,
               progress: bool = False) -> TrainedClip:
    """Train a CLIP from scratch for train_cfg.steps AdamW steps; a function of train_cfg.seed.

    x: (N, C, H, W) host images in [-1, 1]; tokens: (N, L) host token ids, mask: (N, L) bool (as
    refdiff.data.captions.tokenize gives them). Returns a TrainedClip, info["train_seconds"] the loop's time.
    """
    x, tokens, mask = _check_data(train_cfg, cfg, x, tokens, mask)
    g = Generator(train_cfg.seed)
    params = init_on_backend(train_cfg, M.init_params, cfg, g)
    trained = TrainedClip(params, cfg, train_cfg, [])
    opt, schedule = adamw_init(params), schedules.by_name(train_cfg.schedule, train_cfg.T)
    for step, bar in run_steps(train_cfg, "clip", progress, trained.info):
        opt, loss = clip_step(trained, opt, schedule, x, tokens, mask, g, step)
        trained.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    return trained


def _check_data(train_cfg: Any, cfg: Any, x: Any, tokens: Any, mask: Any):
    if not isinstance(train_cfg, ClipTrainConfig):
        raise ValueError(f"train_cfg must be a ClipTrainConfig, got {type(train_cfg).__name__}")
    if not isinstance(cfg, M.ClipConfig):
        raise ValueError(f"cfg must be a ClipConfig, got {type(cfg).__name__}")
    x, tokens, mask = np.asarray(x), np.asarray(tokens), np.asarray(mask)
    if x.ndim != 4 or x.shape[0] < 1 or x.shape[1] != cfg.in_channels or x.dtype.kind != "f":
        raise ValueError(f"x must be a floating (N, {cfg.in_channels}, H, W) host array, got shape {x.shape}, "
                         f"dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {int(np.sum(~np.isfinite(x)))} NaN or inf values")
    N = x.shape[0]
    if tokens.ndim != 2 or tokens.shape[0] != N or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be an ({N}, L) integer host array, got shape {tokens.shape}, "
                         f"dtype {tokens.dtype}")
    if mask.shape != tokens.shape or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool host array of tokens' shape {tokens.shape}, got shape {mask.shape}, "
                         f"dtype {mask.dtype}")
    return x, tokens, mask


# --------------------------------------------------------------------------------- using a CLIP

def embed_captions(trained: TrainedClip, tokens: np.ndarray, mask: np.ndarray) -> Any:
    """g(c) (M, E) of host tokens (M, L) and mask (M, L) bool, on the parameters' library and device."""
    like = trained.like
    return M.clip_text_forward(trained.params, trained.cfg, asarray(np.asarray(tokens), like=like),
                               asarray(np.asarray(mask), like=like))[0]


def retrieval_accuracy(trained: TrainedClip, x: np.ndarray, tokens: np.ndarray, mask: np.ndarray, t: int,
                       n: int = 32, labels: np.ndarray | None = None, seed: int = 0) -> float:
    """Zero-shot retrieval, caption -> image among n: the fraction of captions whose best image is theirs.

    Math: x_t = q_sample(x0, t, eps) for every image (eps from Generator(seed)); for each group of n
          images and their n captions, caption j retrieves argmax_i f(x_t, t)_i . g(c_j)     (CLIP, Sec. 3.1)
    A retrieval counts when labels[retrieved] == labels[j]: images with equal labels are interchangeable
    (e.g. the same four attributes under a full caption); labels=None counts only image j itself.

    x: (N, C, H, W) host images, tokens, mask: (N, L) their captions' tokens; t: the step in [0, T);
    n: images per group (N // n groups, the rest left out). Returns the fraction in [0, 1].
    """
    N = x.shape[0] // n * n
    if n < 1 or N == 0:
        raise ValueError(f"n must be an integer in [1, {x.shape[0]}] (the number of images), got {n!r}")
    if not 0 <= t < trained.train_cfg.T:
        raise ValueError(f"t must be an integer in [0, {trained.train_cfg.T}), got {t!r}")
    labels = np.arange(N) if labels is None else np.asarray(labels)[:N]
    schedule, like = schedules.by_name(trained.train_cfg.schedule, trained.train_cfg.T), trained.like
    eps = Generator(seed).normal((N, *x.shape[1:]))
    correct = 0
    for start in range(0, N, n):
        rows = slice(start, start + n)
        x0 = asarray(x[rows], like=like, dtype=like.dtype)
        steps = asarray(np.full(n, t, dtype=np.int64), like=like)
        xt = q_sample(schedule, x0, steps, asarray(eps[rows], like=x0, dtype=x0.dtype))
        f = M.clip_image_forward(trained.params, trained.cfg, xt, steps)[0]  # (n, E)
        g = embed_captions(trained, tokens[rows], mask[rows])  # (n, E)
        scores = to_numpy(namespace(f).matmul(g, namespace(f).matrix_transpose(f)))  # (n captions, n images)
        best = start + np.argmax(scores, axis=1)
        correct += int(np.sum(labels[best] == labels[rows]))
    return correct / N


def clip_gradient(trained: TrainedClip, tokens: np.ndarray, mask: np.ndarray) -> Callable:
    """grad(xt, t, y=None) = grad_{x_t} (f(x_t, t) . g(c)) for a fixed caption c: GLIDE's CLIP guidance
    gradient, the argument refdiff.samplers.guidance.classifier_guidance takes.

    Math: d(f . g) / df = g, so the gradient is clip_image_backward(df = g, need_dx=True)'s dx
          (GLIDE, eq. 3: mu_hat = mu + s Sigma grad_x (f(x_t, t) . g(c)))
    Each sample's gradient is its own (the image encoder never mixes samples).

    tokens, mask: host (M, L) arrays of M = 1 caption (for every sample) or one caption per sample; g(c)
    is computed once, here. The returned grad takes xt (N, C, H, W) of the parameters' library, device
    and dtype and t (N,), ignores y (the caption is fixed), and returns (N, C, H, W) like xt.
    """
    g = embed_captions(trained, tokens, mask)  # (M, E)
    forward, backward = _IMAGE_IN_PARTS

    def grad(xt: Any, t: Any, y: Any = None):
        N, xp = xt.shape[0], namespace(xt)
        if g.shape[0] not in (1, N):
            raise ValueError(f"tokens must hold 1 caption or one per sample ({N}), got {g.shape[0]}")
        f, cache = forward(trained.params, trained.cfg, xt, t)
        df = xp.broadcast_to(g, tuple(f.shape)) if g.shape[0] == 1 else g  # (N, E)
        return backward(df, cache, need_dx=True)[1]

    return grad


def clip_guidance(trained: TrainedClip, tokens: np.ndarray, mask: np.ndarray, scale: float) -> Callable | None:
    """The samplers' ``cond_fn`` for CLIP guidance with scale s: cond_fn(xt, t, y) = s * clip_gradient.

    The DDPM loop shifts its mean by Sigma * s * grad (GLIDE, eq. 3), DDIM its eps by
    -sqrt(1 - alpha_bar) * s * grad (as for classifier guidance). Returns None at s = 0 (no guidance).
    """
    return classifier_guidance(clip_gradient(trained, tokens, mask), scale)


# ----------------------------------------------------------------------------------- save, load

def save_clip(path: str | Path, trained: TrainedClip) -> Path:
    """Write a trained CLIP atomically as a refdiff checkpoint: params/<key>, log/loss, and the JSON config
    {"model": registry.config_to_dict(cfg) (kind "ClipConfig"), "train": {...}, "info": trained.info}.
    The step stored is the steps done; the optimizer state is not kept (a CLIP is trained once, not resumed)."""
    config = {"model": registry.config_to_dict(trained.cfg), "train": dataclasses.asdict(trained.train_cfg),
              "info": dict(trained.info)}
    groups = {"params": {k: to_numpy(v) for k, v in trained.params.items()},
              "log": {"loss": np.asarray(trained.losses, dtype=np.float64)}}
    step = int(trained.info.get("steps_done", len(trained.losses)))
    return save_checkpoint(path, config, step, Generator(trained.train_cfg.seed).get_state(), groups)


def load_clip(path: str | Path, backend: str = "numpy", dtype: str = "float32") -> TrainedClip:
    """A CLIP written by save_clip, its parameters on ``backend`` in ``dtype``; a ValueError naming the file
    for a checkpoint of another model (a text model's, a classifier's)."""
    ckpt = load_checkpoint(path)
    with interpreting(ckpt):  # a malformed config is an error naming the file
        model = ckpt["config"].get("model", {})
        if model.get("kind") not in [family.name for family in registry.families("contrastive")]:
            raise ValueError(f"checkpoint {path} does not hold a CLIP (model kind {model.get('kind')!r}; "
                             "refdiff train-clip writes one)")
        cfg = registry.config_from_dict(model, "contrastive")
        train_cfg = ClipTrainConfig(**dict(ckpt["config"]["train"], backend=backend, dtype=dtype))
        missing = set(M.param_shapes(cfg)) - set(ckpt["params"])
        if missing:
            raise KeyError(f"params/{sorted(missing)[0]}")
    b = get_backend(backend)
    like = b.asarray(np.zeros(1), dtype=b.dtype(dtype))
    params = {k: asarray(ckpt["params"][k], like=like, dtype=like.dtype) for k in M.param_shapes(cfg)}
    losses = [float(v) for v in ckpt["log"].get("loss", np.zeros(0))]
    return TrainedClip(params, cfg, train_cfg, losses, dict(ckpt["config"].get("info", {})))


def check_clip_fits(trained: TrainedClip, data_shape: tuple[int, ...], vocab_size: int, context_length: int,
                    schedule: str, T: int, what: str = "the text model") -> None:
    """Raise a ValueError unless the CLIP reads what a text model makes and is told: images of data_shape
    (C, H, W), captions of its vocabulary and context length, and x_t of its diffusion (schedule name, T):
    the CLIP learnt what noise level each t means."""
    cfg = trained.cfg
    pairs = (("image shape", (cfg.in_channels, cfg.image_size, cfg.image_size), tuple(data_shape)),
             ("vocabulary size", cfg.vocab_size, vocab_size), ("context length", cfg.context_length, context_length),
             ("noise schedule", trained.train_cfg.schedule, schedule), ("diffusion steps T", trained.train_cfg.T, T))
    for name, theirs, ours in pairs:
        if theirs != ours:
            raise ValueError(f"the CLIP's {name} is {theirs}, {what}'s is {ours}: train the CLIP on the text "
                             "model's data (refdiff train-clip --data captions --image-size ...)")
