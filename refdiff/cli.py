"""The ``refdiff`` command line: one argparse parser with a subcommand per task.

``refdiff --version`` prints the version; ``refdiff info`` reports the Python, library and BLAS
versions and the array backends usable here (what a bug report needs). Later subcommands
(``demo``, ``train``, ``sample``, ``eval``, ``bench``; DESIGN.md) plug in the same way:

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
import platform
import sys

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
    """One ("BLAS", description) row per BLAS library loaded in this process (threadpoolctl)."""
    import numpy  # noqa: F401  -- load NumPy's and SciPy's BLAS so threadpoolctl can see them
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if not blas:
        return [("BLAS", "none found")]
    return [("BLAS", f"{lib.get('internal_api')} {lib.get('version')}, "
                     f"{lib.get('num_threads')} threads ({lib.get('prefix')})") for lib in blas]


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, usable backends and BLAS threads, one ``label: value`` per line."""
    from refdiff.backend import available_backends

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
    parser.set_defaults(func=cmd_info)


# ---------------------------------------------------------------- parser and entry point

# Each entry registers one subcommand on the subparsers object; add new ones here.
SUBCOMMANDS = (_add_info,)


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
    return args.func(args)
