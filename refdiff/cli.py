"""The ``refdiff`` command line: one argparse parser with a subcommand per task.

``refdiff --version`` prints the version; ``refdiff info`` reports the Python, library and BLAS
versions and the array backends usable here (what a bug report needs). Later subcommands
(``demo``, ``train``, ``sample``, ``eval``; docs/design.md) plug in the same way:

1. write ``cmd_<name>(args) -> int`` (the exit status), importing heavy modules inside it;
2. write ``_add_<name>(subparsers)``, which declares its arguments and sets ``func=cmd_<name>``;
3. list ``_add_<name>`` in ``SUBCOMMANDS``.

``main(argv)`` parses, dispatches and returns the exit status; ``python -m refdiff`` and the
``refdiff`` console script both call it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
from typing import Callable

from refdiff import __version__

NOT_INSTALLED = "not installed"


# ---------------------------------------------------------------- refdiff info


def _module_version(module_name: str) -> str:
    """``module.__version__`` of an optional module, or why there is none."""
    if importlib.util.find_spec(module_name) is None:
        return NOT_INSTALLED
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # installed but unusable, e.g. CuPy without the CUDA libraries
        return f"installed, import failed: {type(err).__name__}: {err}"
    return str(getattr(module, "__version__", "unknown"))


def _versions() -> list[tuple[str, str]]:
    """(label, version) of Python and every library refdiff uses or can use."""
    modules = [("NumPy", "numpy"), ("SciPy", "scipy"), ("array-api-compat", "array_api_compat"),
               ("array-api-strict", "array_api_strict"), ("CuPy", "cupy")]
    rows = [("refdiff", __version__), ("Python", platform.python_version())]
    return rows + [(label, _module_version(name)) for label, name in modules]


def _blas_rows() -> list[tuple[str, str]]:
    """One ("BLAS", description) row per BLAS library loaded in this process (threadpoolctl), each with
    its file, which says whose it is (NumPy's and SciPy's wheels each bring one)."""
    import numpy  # noqa: F401  -- load NumPy's and SciPy's BLAS so threadpoolctl can see them
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if not blas:
        return [("BLAS", "none found")]
    return [("BLAS", f"{lib.get('internal_api')} {lib.get('version')}, {lib.get('num_threads')} threads "
                     f"({lib.get('filepath')})") for lib in blas]


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, usable backends and BLAS threads, one ``label: value`` per line."""
    from refdiff.backend import available_backends

    if args.model is not None:
        from refdiff.models import registry
        from refdiff.models.presets import CLASSIFIER_PRESETS, PRESETS, TEXT_PRESETS

        presets = {**PRESETS, **TEXT_PRESETS, **CLASSIFIER_PRESETS}
        if args.model not in presets:
            raise ValueError(f"--model must be one of {', '.join(presets)}, got {args.model!r}")
        cfg = presets[args.model]()
        print(registry.family(cfg).summary(cfg))
        return 0
    rows = _versions() + [("backends", ", ".join(available_backends()))] + _blas_rows()
    for label, value in rows:
        print(f"{label + ':':<18} {value}")
    return 0


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff info`` (no arguments)."""
    parser = subparsers.add_parser(
        "info", help="show versions, backends and BLAS threads",
        description="Show refdiff, Python and library versions, the usable array backends "
                    "and the BLAS libraries with their thread counts.")
    parser.add_argument("--model", default=None, metavar="PRESET",
                        help="instead, print a preset's config, parameter count and per-layer FLOPs "
                             "(digits8, mnist28, shapes32, text16, and NAME_classifier for their noisy "
                             "classifiers)")
    parser.set_defaults(func=cmd_info)


# ---------------------------------------------------------------- refdiff demo / train / sample


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the digits U-Net and sample every class (refdiff.demo); print the files written."""
    from refdiff.demo import run_demo

    _check_demo_args(args)
    _check_output_folder("--out", args.out)
    paths = run_demo(args.out, steps=args.steps, samples_per_class=args.per_class, guidance=args.guidance,
                     sample_steps=args.sample_steps, seed=args.seed, backend=args.backend, force=args.force)
    for name, path in paths.items():
        print(f"{name + ':':<15} {path}")
    return 0


def _check_demo_args(args: argparse.Namespace) -> None:
    """refdiff demo's sizes and sampling settings, checked before anything runs, with the flags' names."""
    from refdiff.demo import DEMO_TRAIN
    from refdiff.train import LIMITS

    if args.steps is not None and not 1 <= args.steps <= LIMITS["steps"]:
        raise ValueError(f"--steps must be an integer in [1, {LIMITS['steps']}], got {args.steps}")
    if not 1 <= args.per_class <= MAX_COUNT:
        raise ValueError(f"--per-class must be an integer in [1, {MAX_COUNT}], got {args.per_class}")
    _check_sampling_flags("ddim", args.sample_steps, args.guidance, DEMO_TRAIN.T, "--sample-steps")


def _check_sampling_flags(sampler: str, steps: int, guidance: float, T: int, steps_flag: str = "--steps") -> None:
    """refdiff.generate.check_sampling, its errors naming the flags ("steps must ..." -> "--steps must ...")."""
    from refdiff.generate import check_sampling

    try:
        check_sampling(sampler, steps, guidance, T)
    except ValueError as err:
        name = str(err).split(" ", 1)[0]
        flags = {"steps": steps_flag, "guidance": "--guidance", "sampler": "--sampler"}
        raise ValueError(flags.get(name, name) + str(err)[len(name):]) from None


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff demo``."""
    parser = subparsers.add_parser(
        "demo", help="train a class-conditional U-Net on the embedded digits and sample every class",
        description="The main job: train the digits8 U-Net on the embedded 8x8 digits (a few minutes on a "
                    "2-core CPU), then sample every class with DDIM and classifier-free guidance, and score "
                    "the samples with the digit classifier refdiff ships. Writes forward_chain.png, "
                    "checkpoint.npz, loss_curve.png, samples.png, samples.npz and metrics.json into OUT (and "
                    "holds OUT's lock file, .refdiff.lock, while it runs).")
    parser.add_argument("--out", default="out/demo",
                        help="output folder: new, empty or an earlier demo's, whose files are replaced "
                             "(default: out/demo)")
    parser.add_argument("--force", action="store_true", help="write into an --out that holds other files")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 2000)")
    parser.add_argument("--per-class", type=int, default=10, help="samples per class (default: 10)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: 3)")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps (default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.set_defaults(func=cmd_demo)


# refdiff train's TrainConfig flags: dest -> (TrainConfig field, default, argparse options). A flag left
# out takes its default, or with --resume the checkpoint's value (refdiff.train.check_resume says which
# of the given ones may differ from it).
TRAIN_FLAGS = {
    "schedule": ("schedule", "cosine", {}),
    "T": ("T", 1000, {"type": int}),
    "prediction": ("prediction", "eps", {"choices": ("eps", "x0", "v")}),
    "loss": ("loss", "mse", {"choices": ("mse", "hybrid", "kl")}),
    "steps": ("steps", 3000, {"type": int}),
    "batch_size": ("batch_size", 64, {"type": int}),
    "lr": ("lr", 2e-3, {"type": float}),
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
MAX_COUNT = 100_000  # sample --count (per class): memory is estimated too (refdiff.generate.generate)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a preset on a dataset (refdiff.train), resuming when asked; data-parallel under mpirun."""
    from pathlib import Path

    from refdiff.checkpoint import interpreting, load_checkpoint
    from refdiff.distributed import get_communicator
    from refdiff.generate import previewer
    from refdiff.models import registry
    from refdiff.train import train

    _check_output_folder("--out", args.out)
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
        if saved is not None and args.preset is None:
            with interpreting(saved):
                model_cfg = registry.config_from_dict(saved["config"]["model"], "denoiser")
        else:
            captions = source["data"] == "captions"
            model_cfg = _model_config(args.preset or ("text16" if captions else "digits8"), x, num_classes, cfg.loss,
                                      captions)
        preview = previewer(cfg, model_cfg, x, args.out) if cfg.sample_every else None
        train(cfg, model_cfg, x, y, args.out, resume=args.resume, comm=comm, preview=preview, data_source=source)
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


def _check_output_folder(flag: str, path: str) -> None:
    """Before any work: ``path`` names a folder that exists or can be made, and can be written to."""
    from pathlib import Path

    if not path:
        raise ValueError(f"{flag} must name a folder, got ''")
    folder = Path(path)
    existing = next(a for a in (folder, *folder.absolute().parents) if a.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable")


def _check_output_file(flag: str, path: str, inputs: tuple = (), force: bool = False) -> None:
    """Before any work: ``path`` is a new file (or an existing one and ``force``) in a writable folder,
    and none of the command's ``inputs``."""
    from pathlib import Path

    out = Path(path)
    if not path or out.is_dir():
        raise ValueError(f"{flag} must name a file, got {path!r}" + (" (a folder)" if path else ""))
    if any(out.exists() and out.resolve() == Path(i).resolve() for i in inputs):
        raise ValueError(f"{flag} {path} is an input of this command: give another file name")
    if out.exists() and not force:
        raise ValueError(f"{flag} {path} exists: give --force to replace it, or another file name")
    if not out.absolute().parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {out.absolute().parent} does not exist")
    if not os.access(out.absolute().parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {out.absolute().parent} is not writable")


def _load_dataset(spec: str, seed: int, image_size: int | None = None):
    """(x, y, num_classes) for --data: digits, shapes, captions (y: the captions' tokens (N, L), no
    classes), toy2d:NAME, a .npz path or a folder of images (resized to image_size when given); the
    digits' training split only."""
    from pathlib import Path

    import numpy as np

    from refdiff import data

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
        x, y = data.load_npz(spec)
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


def _model_config(preset: str, x, num_classes, loss: str, captions: bool = False):
    """The model config for --preset: a U-Net preset fitted to the images' channels and size, a text
    U-Net preset for captions (its U-Net fitted likewise), or the MLP for points."""
    import dataclasses

    from refdiff.models.presets import PRESETS, TEXT_PRESETS, fit_data

    learn_sigma = loss != "mse"
    if captions != (preset in TEXT_PRESETS):
        raise ValueError(f"--data captions trains a text preset ({', '.join(TEXT_PRESETS)}) and a text preset "
                         f"trains on --data captions, got --preset {preset}" + (" with captions" if captions else ""))
    if captions:
        cfg = TEXT_PRESETS[preset]()
        return dataclasses.replace(cfg, unet=fit_data(dataclasses.replace(cfg.unet, learn_sigma=learn_sigma),
                                                      x.shape[1:]))
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
    _add_mpi_timeout(parser)
    parser.set_defaults(func=cmd_train)


def _add_image_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help="resize the images of a --data folder to S x S (default: keep their size, which "
                             "must then be one size)")


def _add_mpi_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mpi-timeout", type=float, default=None, metavar="S",
                        help="under mpirun: seconds a rank waits for the others before it aborts the job "
                             "(default: $REFDIFF_MPI_TIMEOUT or 900)")


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample from a checkpoint into a .png grid or a .npz of images and labels.

    Under mpirun each rank generates its rows of the samples (the same numbers one process would give
    them) and rank 0 gathers and writes them.
    """
    from refdiff.checkpoint import load_checkpoint
    from refdiff.distributed import get_communicator, shard
    from refdiff.generate import generate, model_from_checkpoint
    from refdiff.models import registry

    if not 1 <= args.count <= MAX_COUNT:
        raise ValueError(f"--count must be an integer in [1, {MAX_COUNT}], got {args.count}")
    if not 0 <= args.eta <= 1:  # DDIM's sigma exceeds sqrt(1 - alpha_bar_prev) past 1 (Song et al. 2021, eq. 16)
        raise ValueError(f"--eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {args.eta}")
    if not args.out.endswith((".png", ".npz")):
        raise ValueError(f"--out must end in .png (a grid) or .npz (images and labels), got {args.out!r}")
    _check_output_file("--out", args.out, (args.checkpoint,), args.force)
    comm = get_communicator(args.mpi_timeout)
    with comm.abort_on_error():
        if args.backend == "cupy":
            comm.use_local_gpu()
        ckpt = comm.bcast(load_checkpoint(args.checkpoint) if comm.rank == 0 else None)
        loaded = model_from_checkpoint(ckpt, use_ema=not args.raw, backend=args.backend)
        _check_sampling_flags(args.sampler, args.steps, args.guidance, loaded.schedule.T)
        prompts = None
        if registry.family(loaded.model_cfg).condition == "tokens":
            labels, prompts = _sample_prompts(args.prompt, args.cls, args.count, loaded.model_cfg)
        elif args.prompt:
            raise ValueError("--prompt needs a text-conditional model (trained with --data captions); this "
                             "checkpoint's is not: use --class")
        else:
            labels = _sample_labels(args.cls, args.count, getattr(loaded.model_cfg, "num_classes", None))
        n = args.count if labels is None else labels.shape[0]
        shape, rows = (n, *loaded.data_shape), None if comm.size == 1 else shard(n, comm.rank, comm.size)
        images = generate(loaded, shape, labels, args.sampler, args.steps, args.eta, args.guidance, args.seed,
                          rows=rows)
        images = comm.gather_rows(images, what="gathering the samples")
        if comm.rank == 0:
            _write_samples(args.out, images, labels, args.count, prompts)
            print(f"samples: {args.out}" + (f" ({comm.size} ranks)" if comm.size > 1 else ""))
    return 0


def _sample_labels(cls: int | None, count: int, num_classes: int | None):
    """The labels to sample: ``count`` of every class, or of class ``cls`` alone; None for an
    unconditional model (which takes no --class)."""
    import numpy as np

    if num_classes is None:
        if cls is not None:
            raise ValueError(f"--class {cls} needs a class-conditional model; this checkpoint's is unconditional")
        return None
    if cls is not None and not 0 <= cls < num_classes:
        raise ValueError(f"--class must be in [0, {num_classes - 1}] (the model's {num_classes} classes), got {cls}")
    classes = np.arange(num_classes) if cls is None else np.array([cls])
    return np.repeat(classes, count)


def _sample_prompts(given: list[str] | None, cls: int | None, count: int, model_cfg):
    """(tokens, prompts) to sample a text model: ``count`` of every prompt of --prompt (a prompt, or a text
    file of one prompt a line), tokens (n, L) and the (n,) str prompts; (None, None) without --prompt
    (the empty caption: unconditional samples)."""
    from pathlib import Path

    import numpy as np

    from refdiff.data import tokenize

    if cls is not None:
        raise ValueError(f"--class {cls} needs a class-conditional model; this checkpoint's is text-conditional: "
                         "use --prompt")
    if not given:
        return None, None
    prompts = []
    for prompt in given:
        lines = Path(prompt).read_text().splitlines() if Path(prompt).is_file() else [prompt]
        prompts += [line.strip() for line in lines if line.strip()]
    tokens, _ = tokenize(prompts, context=model_cfg.text.context_length)
    return np.repeat(tokens, count, axis=0), np.repeat(np.asarray(prompts, dtype=str), count)


def _write_samples(out: str, images, labels, per_row: int, prompts=None) -> None:
    """A .npz of images and labels (or prompts: a str array, no pickle), or a .png grid: per_row samples a
    row (one row per prompt, labelled with it), or a scatter of points."""
    import numpy as np

    if out.endswith(".npz") and prompts is not None:
        np.savez(out, images=images.astype(np.float32), prompts=np.asarray(prompts, dtype=str))
    elif out.endswith(".npz"):
        np.savez(out, images=images.astype(np.float32), labels=np.asarray([] if labels is None else labels))
    elif images.ndim == 4:
        from refdiff.plot import image_grid

        rows = None if prompts is None else [str(p) for p in prompts[::per_row]]
        image_grid(images, nrow=per_row, path=out, row_labels=rows)
    else:
        from refdiff.plot import scatter_2d

        scatter_2d({"samples": images}, out)


def _add_sample(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff sample``."""
    parser = subparsers.add_parser("sample", help="sample from a checkpoint",
                                   description="Sample from a checkpoint (EMA weights unless --raw). Under "
                                               "`mpirun -n N` the ranks split the samples; rank 0 writes them.")
    parser.add_argument("checkpoint", help="path to checkpoint.npz")
    parser.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm", "euler", "heun", "dpmpp_2m"),
                        help="the sampler (default: ddim)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default: 0)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
    parser.add_argument("--class", dest="cls", type=int, default=None, help="one class (default: every class)")
    parser.add_argument("--count", type=int, default=10,
                        help="samples, per class or per prompt for conditional models (default: 10)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="a text model's caption (repeat for more), or a text file of one caption a line "
                             "(default: none, the empty caption)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"), help="(default: numpy)")
    parser.add_argument("--out", default="samples.png",
                        help="a .png grid or a .npz (images, and labels or prompts); never the checkpoint "
                             "(default: samples.png)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")
    _add_mpi_timeout(parser)
    parser.set_defaults(func=cmd_sample)


def cmd_eval(args: argparse.Namespace) -> int:
    """Bits/dim of held-out data under a checkpoint's model, and/or the Frechet distance and class fraction
    of a samples .npz (--samples) against the held-out digits."""
    from pathlib import Path

    if args.checkpoint is None and args.samples is None:
        raise ValueError("give a checkpoint (bits/dim of held-out data), --samples FILE (Frechet distance and "
                         "class fraction of samples), or both")
    if args.classifier is not None and not Path(args.classifier).is_file():  # trained, then written there
        _check_output_file("--classifier", args.classifier)
    if args.checkpoint is not None:
        _eval_bits_per_dim(args)
    if args.samples is not None:
        _eval_samples(args)
    return 0


def _eval_samples(args: argparse.Namespace) -> None:
    """Print digit_sample_report for the samples .npz of ``refdiff sample`` (images, labels)."""
    from refdiff.checkpoint import read_arrays
    from refdiff.digits_eval import (check_digit_samples, digit_classifier, digit_sample_report, digit_split,
                                     format_sample_report)

    if args.data != "digits" and not args.data.startswith("toy2d:"):
        raise ValueError(f"--samples needs --data digits (the digit classifier knows the 8x8 digits) or "
                         f"toy2d:NAME (2-D points), got {args.data!r}")
    npz = read_arrays(args.samples, "--samples")
    if "images" not in npz:
        raise ValueError(f"--samples {args.samples} must hold an 'images' array (refdiff sample --out FILE.npz), "
                         f"got {sorted(npz)}")
    images = npz["images"]
    labels = npz["labels"] if "labels" in npz and npz["labels"].size else None
    try:  # the samples' shape, dtype and labels, checked before a classifier is loaded or trained
        if args.data.startswith("toy2d:"):
            print(_toy2d_report(args.data[len("toy2d:"):], images, args.seed))
            return
        check_digit_samples(images, labels)
    except ValueError as err:
        raise ValueError(f"--samples {args.samples}: {err}") from None
    classifier = digit_classifier(args.classifier, progress=True)
    x_train, x_test, y_train, y_test = digit_split()
    report = digit_sample_report(classifier, images, labels, (x_test, y_test), reference=(x_train, y_train),
                                 seed=args.seed)
    print(format_sample_report(report))


def _toy2d_report(name: str, samples, seed: int) -> str:
    """Sliced W2 and MMD^2 of 2-D samples (n, 2) to n fresh points of toy2d NAME, next to the floor: the same
    distances between two fresh draws of n points (finite samples are never at distance 0).

    The fresh points come from seeds 10^6 + seed and 10^6 + seed + 1, which no ``refdiff train --data
    toy2d:NAME --seed S`` (training draws seed S) with a small S shares.
    """
    import numpy as np

    from refdiff.data import load_toy2d
    from refdiff.metrics import mmd_rbf, sliced_wasserstein

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] < 2:
        raise ValueError(f"the samples must hold (n, 2) points with n >= 2 for toy2d data, got {samples.shape}")
    n = samples.shape[0]
    held_out, other = (load_toy2d(name, n, seed=10**6 + seed + k, dtype=np.float64)[0] for k in (0, 1))
    rows = [("sliced W2", sliced_wasserstein(samples, held_out), sliced_wasserstein(other, held_out)),
            ("MMD^2 (RBF, median bandwidth)", mmd_rbf(samples, held_out), mmd_rbf(other, held_out))]
    return "\n".join([f"{n} samples vs {n} fresh {name} points (floor: {n} other fresh points vs the same):"] +
                     [f"  {label}: {value:.4f} (floor {floor:.4f})" for label, value, floor in rows])


def _eval_bits_per_dim(args: argparse.Namespace) -> None:
    """Print the bits/dim of held-out data under a checkpoint's model: the full variational bound over all t."""
    import numpy as np

    from refdiff.backend import Generator, asarray
    from refdiff.generate import load_model
    from refdiff.likelihood import bits_per_dim
    from refdiff.train import TrainConfig

    for name in ("count", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
    loaded = load_model(args.checkpoint, use_ema=not args.raw, backend=args.backend, dtype="float64")
    param = TrainConfig(**loaded.train_cfg).parameterization(args.variance)
    x, levels = _held_out(args.data, args.image_size)
    x = x[: args.count]
    generator, totals = Generator(args.seed), []
    for start in range(0, x.shape[0], args.batch_size):
        x0 = asarray(x[start : start + args.batch_size].astype(np.float64), like=loaded.like)
        result = bits_per_dim(loaded.model, loaded.schedule, x0, generator, param=param, levels=levels, progress=True)
        totals.append(np.asarray(result.total, dtype=np.float64))
    total = np.concatenate(totals)
    se = total.std(ddof=1) / np.sqrt(total.size) if total.size > 1 else float("nan")
    print(f"bits/dim on {total.size} held-out samples ({levels} levels, {param.variance} variance): "
          f"{total.mean():.4f} +- {se:.4f} (standard error)")


def _held_out(spec: str, image_size: int | None = None):
    """(x, levels) of the held-out data for --data: the digits' test split (17 grey levels), an .npz or a
    folder of images (256 levels; the folder resized to image_size when given)."""
    from pathlib import Path

    from refdiff import data

    if spec == "digits":
        from refdiff.data.digits import LEVELS

        x, y = data.load_digits()
        return data.train_test_split(x, y, test_fraction=0.1, seed=0)[1], LEVELS
    if spec.endswith(".npz"):
        return data.load_npz(spec)[0], 256
    if Path(spec).is_dir():
        return data.load_image_folder(spec, size=image_size)[0], 256
    if "/" in spec or os.sep in spec:
        raise FileNotFoundError(f"--data {spec}: no such folder")
    raise ValueError(f"--data must be digits, a .npz file or a folder of images, got {spec!r}")


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff eval``."""
    parser = subparsers.add_parser("eval", help="bits/dim of held-out data, Frechet distance of samples",
                                   description="With a checkpoint: bits/dim of held-out data, the full variational "
                                               "bound (prior, every KL term, the discretized decoder), with the null "
                                               "label for class-conditional models. With --samples: the Frechet "
                                               "distance of the samples vs the held-out digits on a digit "
                                               "classifier's features (next to its floor) and the fraction of "
                                               "samples classified as their label, on the digit classifier refdiff "
                                               "ships (or --classifier FILE).")
    parser.add_argument("checkpoint", nargs="?", default=None, help="path to checkpoint.npz (bits/dim)")
    parser.add_argument("--samples", default=None, metavar="FILE",
                        help="a samples .npz of `refdiff sample --out FILE.npz` (images, labels) to score")
    parser.add_argument("--classifier", default=None, metavar="FILE",
                        help="another digit classifier: loaded when FILE exists, else trained (the shipped "
                             "one's recipe) and saved there (default: the shipped one)")
    parser.add_argument("--data", default="digits",
                        help="digits (its held-out split), a .npz file or a folder of images (bits/dim), or "
                             "toy2d:NAME (--samples of 2-D points: sliced W2 and MMD to fresh points, next to "
                             "their floor)")
    _add_image_size(parser)
    parser.add_argument("--count", type=int, default=180, help="held-out samples to evaluate (default: 180)")
    parser.add_argument("--batch-size", type=int, default=180)
    parser.add_argument("--variance", default="fixed_large", choices=("fixed_small", "fixed_large"),
                        help="reverse variance of a model without learned variances (default: fixed_large)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------- parser and entry point

# Each entry registers one subcommand on the subparsers object; add new ones here.
SUBCOMMANDS = (_add_info, _add_demo, _add_train, _add_sample, _add_eval)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with ``--version`` and every subcommand in ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="refdiff",
        description="refdiff: diffusion models at the array level (NumPy, optional CuPy).")
    parser.add_argument("--version", action="version", version=f"refdiff {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return the exit status.

    No subcommand prints the help to stderr and returns 2 (argparse's usage-error status);
    ``--help`` and ``--version`` return 0, usage errors 2, without raising SystemExit.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors end parsing this way
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # bad input, missing file, failed training
        print(f"refdiff {args.command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `refdiff info | head`: the reader left; say nothing more to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe (docs: signal)
        return 1
