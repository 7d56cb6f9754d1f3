"""``refdiff demo``: the command line of refdiff.demo (train the digits U-Net, sample every class; or with
``--task text`` the text U-Net, sampling and scoring its prompts)."""

from __future__ import annotations

import argparse

from refdiff.cli.common import MAX_COUNT, _check_output_folder, _check_sampling_flags

TASK_DEFAULTS = {"digits": ("out/demo", 50), "text": ("out/text_demo", 100)}  # --out and --sample-steps per --task


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the digits U-Net and sample every class, or with --task text the text U-Net and sample its
    prompts (refdiff.demo); print the files written."""
    from refdiff.demo import run_demo, run_text_demo

    _check_demo_args(args)
    out, sample_steps = _out_and_sample_steps(args)
    _check_output_folder("--out", out)
    if args.task == "text":
        paths = run_text_demo(out, steps=args.steps, per_prompt=args.per_prompt, guidance=args.guidance,
                              sample_steps=sample_steps, seed=args.seed, backend=args.backend, force=args.force)
    else:
        paths = run_demo(out, steps=args.steps, samples_per_class=args.per_class, guidance=args.guidance,
                         sample_steps=sample_steps, seed=args.seed, backend=args.backend, force=args.force)
    for name, path in paths.items():
        print(f"{name + ':':<15} {path}")
    return 0


def _check_demo_args(args: argparse.Namespace) -> None:
    """refdiff demo's sizes and sampling settings, checked before anything runs, with the flags' names."""
    from refdiff.demo import DEMO_TRAIN, TEXT_DEMO_SAMPLER
    from refdiff.train import LIMITS

    if args.steps is not None and not 1 <= args.steps <= LIMITS["steps"]:
        raise ValueError(f"--steps must be an integer in [1, {LIMITS['steps']}], got {args.steps}")
    for flag, value in (("--per-class", args.per_class), ("--per-prompt", args.per_prompt)):
        if not 1 <= value <= MAX_COUNT:
            raise ValueError(f"{flag} must be an integer in [1, {MAX_COUNT}], got {value}")
    sampler = TEXT_DEMO_SAMPLER if args.task == "text" else "ddim"
    _check_sampling_flags(sampler, _out_and_sample_steps(args)[1], args.guidance, DEMO_TRAIN.T, "--sample-steps")


def _out_and_sample_steps(args: argparse.Namespace) -> tuple[str, int]:
    """--out and --sample-steps as given, or the --task's defaults (TASK_DEFAULTS) where not given."""
    return tuple(default if given is None else given
                 for given, default in zip((args.out, args.sample_steps), TASK_DEFAULTS[args.task]))


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff demo``."""
    from refdiff.demo import DEMO_TRAIN, TEXT_DEMO_TRAIN

    parser = subparsers.add_parser(
        "demo", help="train a class-conditional U-Net on the embedded digits and sample every class",
        description="The main job: train the digits8 U-Net on the embedded 8x8 digits (about a minute on "
                    "a 2-core CPU), then sample every class with DDIM and classifier-free guidance, and score "
                    "the samples with the digit classifier refdiff ships. Writes forward_chain.png, "
                    "checkpoint.npz, loss_curve.png, samples.png, samples.npz and metrics.json into OUT (and "
                    "holds OUT's lock file, .refdiff.lock, while it runs). With --task text: train the text16 "
                    "U-Net on captioned shapes (about 10 minutes), sample prompts of seen and held-out (colour, "
                    "shape) pairs and score each sample against its prompt; the same files but the forward chain.")
    parser.add_argument("--task", default="digits", choices=("digits", "text"),
                        help="digits, or text: GLIDE's text-conditional model on captioned shapes (docs/glide.md) "
                             "(default: digits)")
    parser.add_argument("--out", default=None,
                        help="output folder: new, empty or an earlier demo's, whose files are replaced "
                             "(default: out/demo, out/text_demo for --task text)")
    parser.add_argument("--force", action="store_true", help="write into an --out that holds other files")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default: {DEMO_TRAIN.steps}, "
                                                                    f"{TEXT_DEMO_TRAIN.steps} for --task text)")
    parser.add_argument("--per-class", type=int, default=10, help="samples per class of the digits (default: 10)")
    parser.add_argument("--per-prompt", type=int, default=8, help="--task text: samples per prompt (default: 8)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: 3)")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="sampling steps: DDIM's (default: 50), DDPM's for --task text (default: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.set_defaults(func=cmd_demo)
