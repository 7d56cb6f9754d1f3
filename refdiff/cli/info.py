"""``refdiff info``: versions, usable backends and BLAS threads (what a bug report needs), or a preset's
config, parameter count and FLOPs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import subprocess
import sys

from refdiff import __version__

NOT_INSTALLED = "not installed"


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
    """One ("BLAS", description) row per BLAS library loaded in this process (refdiff.parallel), each with
    its file, which says whose it is (NumPy's and SciPy's wheels each bring one); where the environment
    chose an OpenBLAS's kernel, a row with the kernel OpenBLAS picks here on its own."""
    import numpy  # noqa: F401  -- load NumPy's and SciPy's BLAS so threadpoolctl can see them
    import scipy.linalg  # noqa: F401

    from refdiff import parallel

    blas = parallel.blas_libraries()
    if not blas:
        return [("BLAS", "none found")]
    rows = [("BLAS", f"{parallel.describe_blas(lib)} ({lib.get('filepath')})") for lib in blas]
    if any(lib["overrides"] for lib in blas):
        rows.append(("BLAS alone", f"kernel {_own_openblas_kernel()} (without {', '.join(parallel.OPENBLAS_OVERRIDES)}; "
                                   "see docs/performance.md, \"The BLAS kernel\")"))
    return rows


def _own_openblas_kernel() -> str:
    """The kernel NumPy's OpenBLAS loads here without the environment's overrides, asked of a fresh
    interpreter (a loaded OpenBLAS keeps the kernel it chose)."""
    from refdiff import parallel

    env = {k: v for k, v in os.environ.items() if k not in parallel.OPENBLAS_OVERRIDES}
    code = ("import numpy; from threadpoolctl import threadpool_info; "
            "print(next(lib.get('architecture') for lib in threadpool_info() if lib.get('internal_api') == 'openblas'))")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({type(err).__name__})"
    return done.stdout.strip() or f"unknown (exit code {done.returncode})"


def _parts_row() -> list[tuple[str, str]]:
    """How a host batch is split (refdiff.parallel): over how many cores, in worker processes or threads."""
    from refdiff import parallel, workers

    cores = parallel.get_num_threads()
    how = ("one part at a time" if cores == 1 else
           "worker processes" if parallel.get_processes() and workers.startable() else "threads")
    return [("batch parts", f"{cores} cores, {how} (REFDIFF_NUM_THREADS, REFDIFF_PROCESSES)")]


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
    rows = _versions() + [("backends", ", ".join(available_backends()))] + _blas_rows() + _parts_row()
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
