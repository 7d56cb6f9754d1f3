"""``refdiff compare``: the command line of refdiff.compare (diffusion, GAN, VAE and flow trained on the embedded
digits at matched parameter counts and time, scored in one table)."""

from __future__ import annotations

import argparse

from refdiff.cli.common import _check_output_folder

# The flag of each CompareSettings field, for its errors ("seconds must ..." -> "--seconds must ...").
FLAGS = {"seconds": "--seconds", "per_class": "--per-class", "steps": "--sample-steps",
         "vlb_steps": "--vlb-steps", "iwae_k": "--iwae-k", "seed": "--seed"}


def cmd_compare(args: argparse.Namespace) -> int:
    """Train and score the four families (refdiff.compare.run_compare); print the table and the files written."""
    from refdiff.compare import run_compare

    settings = _settings(args)
    _check_output_folder("--out", args.out)
    report = run_compare(args.out, settings)
    for name, path in report["files"].items():
        print(f"{name + ':':<8} {path}")
    return 0


def _settings(args: argparse.Namespace):
    """The flags as a CompareSettings, checked before any work; an error names the flag."""
    from refdiff.compare import CompareSettings

    try:
        return CompareSettings(seconds=args.seconds, per_class=args.per_class, sample_steps=args.sample_steps,
                               vlb_steps=args.vlb_steps, iwae_k=args.iwae_k, seed=args.seed)
    except ValueError as err:
        name = str(err).split(" ", 1)[0]
        raise ValueError(FLAGS.get(name, name) + str(err)[len(name):]) from None


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    """Register ``refdiff compare``."""
    from refdiff.compare import CompareSettings

    d = CompareSettings()
    parser = subparsers.add_parser(
        "compare", help="train diffusion, a GAN, a VAE and a flow on the digits and score them in one table",
        description="The four families of generative models (docs/families.md) on the embedded 8x8 digits, each "
                    "class-conditional, at about 40k parameters and the same training budget of CPU time: a "
                    "diffusion U-Net, a GAN, a VAE and a RealNVP flow. Prints one table (Frechet distance, precision, "
                    "recall, class fraction, Inception-Score analogue, held-out bits/dim where defined, sampling "
                    "time, training steps, stability) and writes compare.json and compare_samples.png into OUT. "
                    "The defaults take a few minutes on a 2-core CPU.")
    parser.add_argument("--out", default="out/compare", help="output folder (default: out/compare); its "
                                                             "compare.json and compare_samples.png are replaced")
    parser.add_argument("--seconds", type=float, default=d.seconds,
                        help=f"training budget of each family, in CPU seconds of this process (default: {d.seconds:g})")
    parser.add_argument("--per-class", type=int, default=d.per_class,
                        help=f"samples of each class per row, at least 4 (default: {d.per_class})")
    parser.add_argument("--sample-steps", type=int, default=d.sample_steps,
                        help=f"diffusion's DDIM steps (default: {d.sample_steps})")
    parser.add_argument("--vlb-steps", type=int, default=d.vlb_steps,
                        help=f"steps of diffusion's bits/dim bound, the schedule respaced (default: {d.vlb_steps}, "
                             "all of them; 0: not computed, n/a in the table)")
    parser.add_argument("--iwae-k", type=int, default=d.iwae_k,
                        help=f"importance samples of the VAE's bits/dim bound (default: {d.iwae_k})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seeds every training run and the samples")
    parser.set_defaults(func=cmd_compare)
