"""``refdiff train-clip``: a noised CLIP (refdiff.models.clip) trained on the captioned shapes by
refdiff.clip_train.train_clip into OUT/checkpoint.npz; and ``guidance_from_flags``, what ``refdiff sample
--clip CKPT --clip-scale S`` guides a text model with (GLIDE, Sec. 2.4).

A command of its own rather than ``refdiff train --model clip``: train's flags are a denoiser's (prediction,
loss, EMA, resume, MPI), none of which a CLIP has, and a CLIP's run is refdiff.clip_train's, not refdiff.train's.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from refdiff.cli.common import _add_image_size, _check_image_size, _check_output_folder

CKPT_NAME = "checkpoint.npz"
DEFAULT_CLIP_SCALE = 0.3  # the best all-four fidelity of docs/clip.md's sweep on the conditional text16 model


def cmd_train_clip(args: argparse.Namespace) -> int:
    """Train a CLIP preset on --train-size captioned shapes (x_t at uniform t) and write OUT/checkpoint.npz."""
    from pathlib import Path

    import numpy as np

    from refdiff import data
    from refdiff.checkpoint import folder_lock
    from refdiff.clip_train import save_clip, train_clip

    if args.data != "captions":
        raise ValueError(f"--data must be captions (a CLIP learns images with their captions), got {args.data!r}")
    _check_image_size(args.data, args.image_size)
    if not 2 <= args.train_size <= 10**6:
        raise ValueError(f"--train-size must be an integer in [2, 1000000], got {args.train_size}")
    _check_output_folder("--out", args.out)
    train_cfg, cfg = _clip_configs(args)
    path = Path(args.out) / CKPT_NAME
    with folder_lock(args.out):
        if path.exists():
            raise ValueError(f"--out {args.out} holds a checkpoint already ({path}): give another folder, or remove it")
        x, captions, _ = data.load_captions(args.train_size, resolution=cfg.image_size, seed=train_cfg.seed)
        tokens, mask = data.tokenize(captions, context=cfg.context_length)
        trained = train_clip(train_cfg, cfg, x, tokens, mask, progress=True)
        save_clip(path, trained)
    losses, info = np.asarray(trained.losses), trained.info
    k = max(1, min(50, losses.size // 2))
    print(f"trained {info['steps_done']} steps in {info['train_seconds']:.0f} s; loss (mean of {k} steps) "
          f"{losses[:k].mean():.3f} -> {losses[-k:].mean():.3f} (log batch = {math.log(train_cfg.batch_size):.3f}); "
          f"exp(tau) = {math.exp(float(np.asarray(trained.params['logit_scale']))):.1f}")
    print(f"checkpoint: {path}")
    return 0


def _clip_configs(args: argparse.Namespace):
    """(ClipTrainConfig, ClipConfig) from the flags, their errors naming the flags."""
    from refdiff.clip_train import ClipTrainConfig
    from refdiff.models.presets import CLIP_PRESETS

    if args.preset not in CLIP_PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(CLIP_PRESETS)}, got {args.preset!r}")
    warmup = min(50, args.steps // 5) if args.warmup_steps is None else args.warmup_steps
    fields = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": warmup,
              "max_seconds": args.max_seconds, "schedule": args.schedule, "T": args.T, "seed": args.seed, "backend": args.backend, "dtype": args.dtype}
    try:
        train_cfg = ClipTrainConfig(**fields)
    except ValueError as err:  # "batch_size must be ..." -> "--batch-size must be ..."
        field = str(err).split(" ", 1)[0]
        flag = "--" + field.replace("_", "-") if field in fields else field
        raise ValueError(flag + str(err)[len(field):]) from None
    return train_cfg, CLIP_PRESETS[args.preset](image_size=args.image_size or 16)


def guidance_from_flags(clip: str | None, scale: float | None, loaded, sampler: str, labels,
                        backend: str) -> Callable | None:
    """The cond_fn of ``refdiff sample --clip CLIP --clip-scale S`` for the text model ``loaded`` and its rows'
    prompt tokens ``labels`` (n, L) (one caption per sample), or None without --clip; the flags checked first:
    a CLIP checkpoint that fits the model (image shape, vocabulary, context, schedule), S a finite number >= 0,
    a sampler that takes gradient guidance (ddim, ddpm), prompts to guide towards."""
    from refdiff.clip_train import check_clip_fits, clip_guidance, load_clip
    from refdiff.models import registry

    if clip is None:
        if scale is not None:
            raise ValueError(f"--clip-scale {scale} needs --clip CLIP_CHECKPOINT (a CLIP from refdiff train-clip)")
        return None
    scale = DEFAULT_CLIP_SCALE if scale is None else scale
    if not (isinstance(scale, (int, float)) and 0 <= scale < math.inf):
        raise ValueError(f"--clip-scale must be a finite number >= 0 (0: no CLIP guidance), got {scale}")
    if registry.family(loaded.model_cfg).condition != "tokens":
        raise ValueError("--clip guides a text-conditional model (trained with --data captions); this checkpoint's "
                         "is not")
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"--clip needs --sampler ddim or ddpm (they take gradient guidance), got {sampler}")
    if labels is None:
        raise ValueError("--clip needs --prompt: CLIP guidance pulls the samples towards a caption")
    trained = load_clip(clip, backend=backend)
    text = loaded.model_cfg.text
    check_clip_fits(trained, loaded.data_shape, text.vocab_size, text.context_length, loaded.train_cfg["schedule"],
                    loaded.schedule.T)
    return clip_guidance(trained, labels, labels != loaded.model_cfg.pad_token, scale)


def _add_train_clip(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff train-clip``."""
    parser = subparsers.add_parser("train-clip", help="train a noised CLIP (for refdiff sample --clip)",
                                   description="Train a noised CLIP (GLIDE, Sec. 2.4) on captioned shapes, x_t at "
                                               "uniform t, with the symmetric contrastive loss; writes "
                                               "OUT/checkpoint.npz (never over an existing one).")
    parser.add_argument("--data", default="captions", help="captions, the captioned shapes (default: captions)")
    _add_image_size(parser)
    parser.add_argument("--train-size", type=int, default=5000, metavar="N",
                        help="captioned images drawn to train on (default: 5000, as refdiff train --data captions)")
    parser.add_argument("--preset", default="shapes16_clip", help="the CLIP (default: shapes16_clip)")
    parser.add_argument("--steps", type=int, default=1000, help="(default: 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: 64; the contrastive loss's N)")
    parser.add_argument("--lr", type=float, default=2e-3, help="(default: 2e-3)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="(default: min(50, steps / 5))")
    parser.add_argument("--max-seconds", type=float, default=None, metavar="S",
                        help="stop after S seconds of training, wherever it is (default: run every step)")
    parser.add_argument("--schedule", default="cosine",
                        help="the noise schedule of x_t: the text model's it will guide (default: cosine)")
    parser.add_argument("--T", type=int, default=1000, help="diffusion steps: the text model's (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"), help="(default: numpy)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="(default: float32)")
    parser.add_argument("--out", default="out/clip", help="the output folder (default: out/clip)")
    parser.set_defaults(func=cmd_train_clip)
