"""``refdiff sample``: samples of a checkpoint's model into a .png grid or a .npz of images and labels
(or, for a text model, prompts)."""

from __future__ import annotations

import argparse

from refdiff.cli.clip import guidance_from_flags
from refdiff.cli.common import MAX_COUNT, _add_mpi_timeout, _check_output_file, _check_sampling_flags


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
        cond_fn = guidance_from_flags(args.clip, args.clip_scale, loaded, args.sampler,
                                      labels if rows is None or labels is None else labels[rows[0]:rows[1]],
                                      args.backend)
        images = generate(loaded, shape, labels, args.sampler, args.steps, args.eta, args.guidance, args.seed,
                          rows=rows, cond_fn=cond_fn)
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
    parser.add_argument("--clip", default=None, metavar="CLIP_CKPT",
                        help="a CLIP checkpoint (refdiff train-clip) to guide a text model towards --prompt "
                             "(GLIDE's CLIP guidance; ddim, ddpm; with --guidance 0 CLIP alone) (default: none)")
    parser.add_argument("--clip-scale", type=float, default=None, metavar="S",
                        help="CLIP guidance scale s >= 0, the step along grad (f(x_t, t) . g(c)); past about 1 the "
                             "samples turn to adversarial noise (docs/clip.md) (default: 0.3)")
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
