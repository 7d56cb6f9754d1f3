"""``refdiff demo``: the command line of refdiff.demo (train the digits U-Net, sample every class)."""

from __future__ import annotations

import argparse

from refdiff.cli.common import MAX_COUNT, _check_output_folder, _check_sampling_flags


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


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff demo``."""
    from refdiff.demo import DEMO_TRAIN

    parser = subparsers.add_parser(
        "demo", help="train a class-conditional U-Net on the embedded digits and sample every class",
        description="The main job: train the digits8 U-Net on the embedded 8x8 digits (about a minute on "
                    "a 2-core CPU), then sample every class with DDIM and classifier-free guidance, and score "
                    "the samples with the digit classifier refdiff ships. Writes forward_chain.png, "
                    "checkpoint.npz, loss_curve.png, samples.png, samples.npz and metrics.json into OUT (and "
                    "holds OUT's lock file, .refdiff.lock, while it runs).")
    parser.add_argument("--out", default="out/demo",
                        help="output folder: new, empty or an earlier demo's, whose files are replaced "
                             "(default: out/demo)")
    parser.add_argument("--force", action="store_true", help="write into an --out that holds other files")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default: {DEMO_TRAIN.steps})")
    parser.add_argument("--per-class", type=int, default=10, help="samples per class (default: 10)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: 3)")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps (default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.set_defaults(func=cmd_demo)
