"""The ``refdiff`` command line: one argparse parser with a subcommand per task.

``refdiff --version`` prints the version; ``refdiff info`` reports the Python, library and BLAS
versions and the array backends usable here (what a bug report needs). Each subcommand (``info``,
``demo``, ``train``, ``sample``, ``inpaint``, ``eval``, ``compare``, ``train-clip`` in ``clip.py``; docs/design.md) is a module of this package, and a new one
plugs in the same way:

1. in its module (``refdiff/cli/<name>.py``; ``evaluate.py`` for ``eval``), write
   ``cmd_<name>(args) -> int`` (the exit status), importing heavy modules inside it;
2. beside it, write ``_add_<name>(subparsers)``, which declares its arguments and sets ``func=cmd_<name>``;
3. list ``_add_<name>`` in ``SUBCOMMANDS``.

What more than one subcommand uses (the output-path and sampling-flag checks, shared flags) is in
``common.py``. ``main(argv)`` parses, dispatches and returns the exit status; ``python -m refdiff``
and the ``refdiff`` console script both call it.
"""

from __future__ import annotations

import argparse
import os
import sys

from refdiff import __version__
from refdiff.cli.clip import _add_train_clip
from refdiff.cli.compare import _add_compare
from refdiff.cli.demo import _add_demo
from refdiff.cli.evaluate import _add_eval
from refdiff.cli.info import _add_info
from refdiff.cli.inpaint import _add_inpaint
from refdiff.cli.sample import _add_sample
from refdiff.cli.train import _add_train

# Each entry registers one subcommand on the subparsers object; add new ones here.
SUBCOMMANDS = (_add_info, _add_demo, _add_train, _add_sample, _add_inpaint, _add_eval, _add_compare, _add_train_clip)


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
