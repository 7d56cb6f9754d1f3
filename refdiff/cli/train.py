"""``refdiff train``: a TrainConfig from its flags (over a checkpoint's settings with --resume), the data
that --data names and the model that --preset names, trained by refdiff.train.train."""

from __future__ import annotations

import argparse
import os
from typing import Callable

from refdiff.cli.common import _add_image_size, _add_mpi_timeout, _check_image_size, _check_output_folder

# refdiff train's TrainConfig flags: dest -> (TrainConfig field, default, argparse options). A flag left
# out takes its default, or with --resume the checkpoint's value (refdiff.train_state.check_resume says which
# of the given ones may differ from it).
TRAIN_FLAGS = {
    "schedule": ("schedule", "cosine", {}),
    "T": ("T", 1000, {"type": int}),
    "prediction": ("prediction", "eps", {"choices": ("eps", "x0", "v")}),
    "loss": ("loss", "mse", {"choices": ("mse", "hybrid", "kl")}),
    "weighting": ("weighting", "none", {"choices": ("none", "min_snr"),
                                        "help": "loss weight per t: none, or min-SNR-5 (refdiff.losses)"}),
    "steps": ("steps", 3000, {"type": int}),
    "batch_size": ("batch_size", 64, {"type": int}),
    "lr": ("lr", 2e-3, {"type": float}),
    "text_lr_scale": ("text_lr_scale", 0.03, {"type": float, "metavar": "S",
                                             "help": "a text model's encoder trains at S times --lr (1: one rate "
                                                     "for all; docs/glide.md, \"The encoder's learning rate\")"}),
    "ema": ("ema_decay", 0.999, {"type": float, "help": "EMA decay"}),
    "checkpoint_every": ("checkpoint_every", 500, {"type": int}),
    "backend": ("backend", "numpy", {"choices": ("numpy", "cupy")}),
    "dtype": ("dtype", "float32", {"choices": ("float32", "float64")}),
    "seed": ("seed", 0, {"type": int}),
    "timesteps": ("timesteps", "uniform", {"choices": ("uniform", "importance"),
                                           "help": "t uniform, or importance-sampled by the loss's second moment "
                                                   "once every t has 10 losses (improved DDPM; meant for --loss kl)"}),
    "sample_every": ("sample_every", 0, {"type": int, "metavar": "N",
                                         "help": "every N steps write OUT/samples_stepN.png (DDIM 20 steps, EMA "
                                                 "weights) and OUT/loss_curve.png; 0: never"}),
}


MAX_CLASSES = 10_000  # a label embedding row per class: a stray label of 10^9 is a typo, not a dataset


def cmd_train(args: argparse.Namespace) -> int:
    """Train a preset on a dataset (refdiff.train), resuming when asked; data-parallel under mpirun."""
    from pathlib import Path

    from refdiff.checkpoint import interpreting, load_checkpoint
    from refdiff.distributed import get_communicator
    from refdiff.generate import previewer
    from refdiff.models import registry
    from refdiff.train import train

    _check_output_folder("--out", args.out)
    _check_init_flags(args)
    comm = get_communicator(args.mpi_timeout)
    say = print if comm.rank == 0 else (lambda *_: None)  # what resume does, said once
    try:
        saved = None
        if args.resume:
            with comm.abort_on_error():  # rank 0 reads it; a missing file ends every rank
                saved = comm.bcast(load_checkpoint(Path(args.out) / "checkpoint.npz", arrays=False)
                                   if comm.rank == 0 else None)
            with interpreting(saved):
                cfg = _resume_config(args, saved, say)
        else:
            cfg = _train_config(args, None)
        source = _data_source(args, saved, say)
        x, y, num_classes = _load_dataset(source["data"], cfg.seed, source["image_size"])
        init = None
        if saved is not None and args.preset is None:
            with interpreting(saved):
                model_cfg = registry.config_from_dict(saved["config"]["model"], "denoiser")
        elif args.init is not None:
            model_cfg, init = _init_model(args.init, args.inpaint, x.shape[1:])
        else:
            captions = source["data"] == "captions"
            model_cfg = _model_config(args.preset or ("text16" if captions else "digits8"), x, num_classes, cfg.loss,
                                      captions, args.inpaint)
        preview = previewer(cfg, model_cfg, x, args.out) if cfg.sample_every else None
        train(cfg, model_cfg, x, y, args.out, resume=args.resume, comm=comm, preview=preview, data_source=source,
              init=init)
    except (ValueError, FileNotFoundError, RuntimeError):
        if comm.rank == 0:  # every rank raises these alike: rank 0 alone reports (main's one line)
            raise
        return 1
    if comm.rank == 0:
        print(f"checkpoint: {Path(args.out) / 'checkpoint.npz'}" + (f" ({comm.size} ranks)" if comm.size > 1 else ""))
    return 0


def _data_source(args: argparse.Namespace, saved: dict | None, say: Callable = print) -> dict:
    """{"data": spec, "image_size": S or None}: --data and --image-size as given (a file or folder by its
    absolute path, so that a resume from elsewhere finds it), or with --resume and no --data what the
    checkpoint recorded (said out loud), else the embedded digits."""
    from pathlib import Path

    recorded = (saved or {}).get("config", {}).get("data_source")
    if args.data is None and recorded:
        say(f"resuming on --data {recorded['data']}" +
              (f" --image-size {recorded['image_size']}" if recorded.get("image_size") else "") +
              " (recorded in the checkpoint)")
        return {"data": recorded["data"], "image_size": recorded.get("image_size")}
    spec = args.data or "digits"
    if spec.endswith(".npz") or Path(spec).is_dir():
        spec = str(Path(spec).resolve())
    return {"data": spec, "image_size": args.image_size}


def _resume_config(args: argparse.Namespace, saved: dict, say: Callable = print):
    """The TrainConfig of ``train --resume`` from the checkpoint ``saved`` (load_checkpoint(arrays=False)):
    --steps must go past its step and its warm-up; a new --steps is said out loud, as it changes the
    learning-rate decay from here on."""
    train_cfg, step = saved["config"]["train"], saved["step"]
    steps = train_cfg["steps"] if args.steps is None else args.steps
    if steps <= step:
        raise ValueError(f"--steps {steps}: {saved['path']} is at step {step} already; give --steps greater "
                         f"than {step} to train on")
    if steps <= train_cfg["warmup_steps"]:
        raise ValueError(f"--steps {steps} ends inside the run's learning-rate warm-up of {train_cfg['warmup_steps']} "
                         f"steps (set when it started); give --steps greater than {train_cfg['warmup_steps']}")
    cfg = _train_config(args, train_cfg)
    if cfg.steps != train_cfg["steps"]:
        say(f"resuming {saved['path']} at step {step}: training to step {cfg.steps} (it was started for "
              f"{train_cfg['steps']}); the warm-up stays {cfg.warmup_steps} steps and the learning rate now decays "
              f"({cfg.lr_decay}) to step {cfg.steps}, so this differs from a run started with --steps {cfg.steps}")
    return cfg


def _train_config(args: argparse.Namespace, saved: dict | None):
    """refdiff train's TrainConfig: the TRAIN_FLAGS given, over the checkpoint's settings ``saved`` (with
    --resume) or over the defaults (warm-up: 100 steps, or all but the last of fewer)."""
    import dataclasses

    from refdiff.train import TrainConfig

    given = {field: getattr(args, dest) for dest, (field, _, _) in TRAIN_FLAGS.items()
             if getattr(args, dest) is not None}
    try:
        if saved is not None:
            return dataclasses.replace(TrainConfig(**saved), **given)
        settings = {**{field: default for field, default, _ in TRAIN_FLAGS.values()}, **given}
        return TrainConfig(warmup_steps=min(100, max(settings["steps"] - 1, 0)), **settings)
    except ValueError as err:  # "batch_size must be ..." -> "--batch-size must be ..." for a flag given
        flags = {field: "--" + dest.replace("_", "-") for dest, (field, _, _) in TRAIN_FLAGS.items() if field in given}
        field = str(err).split(" ", 1)[0]
        raise ValueError(f"{flags[field]}{str(err)[len(field):]}" if field in flags else str(err)) from None


def _load_dataset(spec: str, seed: int, image_size: int | None = None):
    """(x, y, num_classes) for --data: digits, shapes, captions (y: the captions' tokens (N, L), no
    classes), toy2d:NAME, a .npz path or a folder of images (the last two resized to image_size when
    given); the digits' training split only."""
    from pathlib import Path

    import numpy as np

    from refdiff import data

    _check_image_size(spec, image_size)
    if spec == "digits":
        x, y = data.load_digits()
        x, _, y, _ = data.train_test_split(x, y, test_fraction=0.1, seed=0)
    elif spec == "shapes":
        x, y = data.load_shapes(5000, seed=seed)
    elif spec == "captions":
        x, captions, _ = data.load_captions(5000, resolution=image_size or 16, seed=seed)
        return x, data.tokenize(captions)[0], None
    elif spec.startswith("toy2d:"):
        x, y = data.load_toy2d(spec[len("toy2d:"):], 20000, seed=seed)
    elif spec.endswith(".npz"):
        x, y = data.load_npz(spec, size=image_size)
    elif Path(spec).is_dir():
        x, y = data.load_image_folder(spec, size=image_size)
    elif "/" in spec or os.sep in spec:
        raise FileNotFoundError(f"--data {spec}: no such folder")
    else:
        raise ValueError(f"--data must be digits, shapes, toy2d:NAME, a .npz file or a folder of images, or captions "
                         f"(for a text preset), got {spec!r}")
    num_classes = None if y is None else int(np.max(y)) + 1
    if num_classes is not None and num_classes > MAX_CLASSES:
        raise ValueError(f"--data {spec}: its labels reach {num_classes - 1}, but a model takes at most {MAX_CLASSES} "
                         f"classes (labels in [0, {MAX_CLASSES - 1}])")
    return x, y, num_classes


def _check_init_flags(args: argparse.Namespace) -> None:
    """Before any work: --init and --inpaint start a run, so not with --resume; --init's model is its own,
    so not with --preset; --inpaint trains a text model's inpainting form, so --data captions."""
    if args.resume and (args.init or args.inpaint):
        raise ValueError("--init and --inpaint start a new run; --resume continues OUT/checkpoint.npz with its own "
                         "model and weights: leave them out")
    if args.init and args.preset:
        raise ValueError(f"--init {args.init} trains the checkpoint's model: leave out --preset {args.preset}")
    if args.inpaint and args.data != "captions":
        raise ValueError(f"--inpaint trains GLIDE's inpainting model of a text model: it needs --data captions, got "
                         f"--data {args.data or 'digits'}")


def _init_model(path: str, inpaint: bool, data_shape: tuple):
    """(model config, host parameters) to fine-tune from --init's checkpoint: its EMA weights, as they are or,
    with --inpaint and a text model, widened to its inpainting model (refdiff.models.text_inpaint: the new
    input channels' weights zero, so training starts from the text model's output exactly)."""
    from refdiff.checkpoint import interpreting, load_checkpoint
    from refdiff.models import registry
    from refdiff.models.text_inpaint import inpaint_config, inpaint_params

    ckpt = load_checkpoint(path)
    with interpreting(ckpt):
        cfg = registry.config_from_dict(ckpt["config"]["model"], "denoiser")
        shape = tuple(ckpt["config"]["data_shape"])
    if shape != tuple(data_shape):
        raise ValueError(f"--init {path} was trained on samples of shape {shape}, but --data gives {tuple(data_shape)}")
    if not inpaint or getattr(cfg, "inpaint", False):
        return cfg, ckpt["ema"]
    if registry.family(cfg).condition != "tokens":
        raise ValueError(f"--inpaint --init {path}: the checkpoint must hold a text model (trained with --data "
                         f"captions), got a {type(cfg).__name__}")
    return inpaint_config(cfg), inpaint_params(ckpt["ema"], cfg)


def _model_config(preset: str, x, num_classes, loss: str, captions: bool = False, inpaint: bool = False):
    """The model config for --preset: a U-Net preset fitted to the images' channels and size, a text
    U-Net preset for captions (its U-Net fitted likewise; with ``inpaint`` its inpainting model), or the
    MLP for points."""
    import dataclasses

    from refdiff.models.presets import PRESETS, TEXT_PRESETS, fit_data
    from refdiff.models.text_inpaint import inpaint_config

    learn_sigma = loss != "mse"
    if captions != (preset in TEXT_PRESETS):
        raise ValueError(f"--data captions trains a text preset ({', '.join(TEXT_PRESETS)}) and a text preset "
                         f"trains on --data captions, got --preset {preset}" + (" with captions" if captions else ""))
    if captions:
        cfg = TEXT_PRESETS[preset]()
        cfg = dataclasses.replace(cfg, unet=fit_data(dataclasses.replace(cfg.unet, learn_sigma=learn_sigma),
                                                     x.shape[1:]))
        return inpaint_config(cfg) if inpaint else cfg
    if preset == "mlp":
        from refdiff.models.mlp import MLPConfig

        if x.ndim != 2:
            raise ValueError(f"--preset mlp takes points (N, D), but --data gives samples of shape {x.shape[1:]}: "
                             "use a U-Net preset (digits8, mnist28, shapes32) for images")
        return MLPConfig(data_dim=x.shape[1], num_classes=num_classes, learn_sigma=learn_sigma)
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, {', '.join(TEXT_PRESETS)}, mlp; "
                         f"got {preset!r}")
    if x.ndim != 4:
        raise ValueError(f"--preset {preset} is a U-Net for images (N, C, H, W), but --data gives samples of "
                         f"shape {x.shape[1:]}: use --preset mlp for points")
    return fit_data(PRESETS[preset](num_classes=num_classes, learn_sigma=learn_sigma), x.shape[1:])


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff train``."""
    parser = subparsers.add_parser("train", help="train a denoiser", description="Train a denoiser; "
                                   "checkpoints go to OUT/checkpoint.npz and --resume continues from there. "
                                   "Under `mpirun -n N` the ranks split every batch (--batch-size is the "
                                   "global batch); see docs/scaling.md.")
    parser.add_argument("--data", default=None,
                        help="digits, shapes, captions (captioned shapes, for a text preset), toy2d:NAME "
                             "(swiss_roll, two_moons, 8gaussians, checkerboard, "
                             "rings), a .npz file (x or images, optional y or labels), or a folder of images "
                             "(one subfolder per class gives labels) (default: digits, or with --resume the data "
                             "the checkpoint recorded)")
    _add_image_size(parser)
    parser.add_argument("--preset", default=None,
                        help="digits8, mnist28, shapes32 (U-Nets, fitted to the images' channels and size: "
                             "refdiff.models.presets.fit_data), text16 (text-conditional, for --data captions) "
                             "or mlp (points) (default: digits8, text16 for captions, or the checkpoint's "
                             "model with --resume)")
    for dest, (_, default, options) in TRAIN_FLAGS.items():
        about = "; ".join(filter(None, [options.get("help"), f"default: {default}, or the checkpoint's with --resume"]))
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, **{**options, "help": about})
    parser.add_argument("--out", default="out/train")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT/checkpoint.npz with its settings, model and data (flags given override "
                             "settings that may change: steps, lr, batch size, ...); resumed to the same --steps it "
                             "repeats the uninterrupted run exactly; to more --steps it keeps the run's warm-up and "
                             "decays the learning rate to the new end from where it is, so it differs from a run "
                             "started with those steps (it says so). Without --resume an existing checkpoint in OUT "
                             "is an error, never overwritten")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="fine-tune: start from CKPT's EMA weights (its model, a fresh optimizer and step 0) "
                             "instead of fresh ones")
    parser.add_argument("--inpaint", action="store_true",
                        help="train GLIDE's text-guided inpainting model (--data captions): the text U-Net reading "
                             "the known image and the mask beside x_t, on random masks (a quadrant or a box); with "
                             "--init a text model's checkpoint, its weights with zeros for the new input channels "
                             "(docs/glide.md, 'Text-guided inpainting')")
    _add_mpi_timeout(parser)
    parser.set_defaults(func=cmd_train)
